"""--filter selects what is recorded and shown, never what is relayed: the proxy with a real client and
server, `read` on the shared captures, and bad filters."""
import asyncio
import json
import subprocess
from pathlib import Path

from websockets.asyncio.client import connect

from conftest import PEERS, PYTHON, WSTAP, messages, wait_records

CAPTURES = Path(__file__).resolve().parents[3] / "shared" / "captures"


async def chat(url, lines):
    """Sends each line, reads its echo; returns the echoes."""
    echoes = []
    async with connect(url) as ws:
        for line in lines:
            await ws.send(line)
            echoes.append(await ws.recv())
    return echoes


def test_the_proxy_records_only_matches_but_relays_everything(wstap, peer):
    port = peer(PYTHON, str(PEERS / "websockets_echo_server.py"))
    proxy = wstap(f"ws://127.0.0.1:{port}", extra=["--filter", "from=server json.type=tick json.price>100"])
    ticks = [json.dumps({"type": "tick", "price": p}) for p in (99, 101.5, 250)]
    other = [json.dumps({"type": "hello"}), "not json", json.dumps({"type": "tick"})]
    # Everything reaches the client, matching or not.
    assert asyncio.run(chat(proxy.url + "/quotes", ticks + other)) == ticks + other
    # A second connection with nothing that matches.
    assert asyncio.run(chat(proxy.url + "/quiet", other)) == other

    records = wait_records(proxy.jsonl, lambda r: any(x["type"] == "end" for x in r), "the end of the matching connection")
    kept = messages(records)
    assert [m["text"] for m in kept] == ticks[1:]
    assert all(m["from"] == "server" for m in kept)
    # The matching connection's open and end frame its messages; the quiet one is not there at all.
    assert [r["type"] for r in records] == ["open", "message", "message", "end"]
    assert records[0]["url"].endswith("/quotes")
    assert {r["conn"] for r in records} == {records[0]["conn"]}


def read_jsonl(*args):
    result = subprocess.run([WSTAP, "read", *args, "--jsonl", "-", "-q"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()], result.stderr


def test_read_keeps_the_matching_messages_of_a_capture_and_their_connections():
    capture = str(CAPTURES / "gen-ws-fragmented.pcap")
    everything, _ = read_jsonl(capture)
    filtered, stderr = read_jsonl(capture, "--filter", "type=message frames>1")
    expected = [r for r in everything if r["type"] == "message" and r["frames"] > 1]
    assert expected, "the capture has fragmented messages"
    assert [r for r in filtered if r["type"] == "message"] == expected
    conns = {r["conn"] for r in expected}
    assert [r for r in filtered if r["type"] == "open"] == [r for r in everything if r["type"] == "open" and r["conn"] in conns]
    assert [r for r in filtered if r["type"] == "end"] == [r for r in everything if r["type"] == "end" and r["conn"] in conns]
    assert {r["type"] for r in filtered} == {"open", "message", "end"}
    assert stderr == ""  # -q: no summary line


def test_read_says_how_much_the_filter_kept():
    result = subprocess.run([WSTAP, "read", str(CAPTURES / "gen-ws-basic.pcap"), "--filter", "op=ping or op=pong", "--jsonl", "/dev/null"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("wstap: --filter kept ") and " of " in result.stderr


def test_a_bad_filter_is_one_line_with_the_column_and_exit_64(tmp_path):
    out = tmp_path / "never.jsonl"
    for command in (["read", str(CAPTURES / "gen-ws-basic.pcap")], ["proxy", "--upstream", "ws://127.0.0.1:9"],
                    ["capture", "-i", "lo"]):
        result = subprocess.run([WSTAP, *command, "--filter", "op=text len>4Q", "--jsonl", str(out)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 64, (command, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0] == "wstap: --filter: expected a number (sizes may end in K or M), got '4Q' at column 13: op=text len>4Q"
        assert not out.exists()  # refused before any output was opened
