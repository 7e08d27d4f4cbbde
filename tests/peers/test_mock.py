"""wstap mock: the server side of a recording served to real clients (Python websockets, Node ws,
headless Chromium), with JSON matching, every unmatched policy, TLS and the journal."""
import asyncio
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import NODE_ENV, PEERS, PYTHON, WSTAP, Proc, messages, read_records, wait_records

CHROMIUM = shutil.which("chromium")
SCRIPT = ['{"op":"login","user":"ada"}', '{"op":"get","id":1}', "plain text"]


def app_server(peer, *flags):
    return peer(PYTHON, str(PEERS / "websockets_app_server.py"), *flags)


async def one_by_one(url, texts):
    """Each text, then its answer: a recording in which every reply follows its request."""
    async with connect(url, compression="deflate") as ws:
        replies = []
        for text in texts:
            await ws.send(text)
            replies.append(await ws.recv())
        return replies


async def send_all(url, texts, count, ssl_context=None):
    """Sends every text at once (compression on), returns the first `count` messages back."""
    async with connect(url, compression="deflate", ssl=ssl_context) as ws:
        for text in texts:
            await ws.send(text)
        return [await ws.recv() for _ in range(count)]


def record(wstap, peer):
    """SCRIPT against the app server through the proxy; the recording and the server's replies."""
    proxy = wstap(f"ws://127.0.0.1:{app_server(peer)}", ["--max-payload", "unlimited"])
    replies = asyncio.run(one_by_one(proxy.url + "/chat", SCRIPT))
    proxy.wait_ended()
    return proxy.jsonl, replies


def mock(procs, source, *extra):
    proc = Proc([WSTAP, "mock", "--from", str(source), "--listen", "127.0.0.1:0", *map(str, extra)], stream="stderr")
    procs.append(proc)
    port = int(proc.wait_for(r"mock listening on 127\.0\.0\.1:(\d+)").group(1))
    return proc, f"ws://127.0.0.1:{port}"


def test_python_node_and_chromium_get_the_recorded_replies(wstap, peer, procs, tmp_path):
    recording, replies = record(wstap, peer)
    assert json.loads(replies[0])["op"] == "welcome" and replies[2] == "plain text"
    journal = tmp_path / "journal.jsonl"
    out = tmp_path / "mock.jsonl"
    server, url = mock(procs, recording, "--journal", journal, "--jsonl", out)

    assert asyncio.run(send_all(url + "/chat", SCRIPT, 3)) == replies

    node = subprocess.run(["node", str(PEERS / "node_ws_script_client.js"), url + "/chat", "3", *SCRIPT],
                          capture_output=True, text=True, timeout=60, env=NODE_ENV)
    assert node.returncode == 0, node.stderr
    lines = [json.loads(line) for line in node.stdout.splitlines()]
    assert [l["data"] for l in lines if "data" in l] == replies and lines[-1] == {"closed": 1000}

    if CHROMIUM:
        page = Proc([PYTHON, str(PEERS / "mock_page_server.py"), url + "/chat", "3", *SCRIPT])
        procs.append(page)
        page_port = int(page.wait_for(r"^ready (\d+)").group(1))
        browser = Proc([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
                        f"--user-data-dir={tmp_path / 'profile'}", f"http://127.0.0.1:{page_port}/page"],
                       env={**os.environ, "HOME": str(tmp_path)})
        procs.append(browser)
        result = json.loads(page.wait_for(r"^result (.*)").group(1))
        assert result == {"got": replies, "code": 1000}
    sessions = 3 if CHROMIUM else 2
    server.wait_for(rf"conn {sessions} from .* /chat \(recorded conn 1\): 3 messages received, 3 matched")

    # The mock's records are the proxy's kind; the journal holds what the clients sent, nothing else.
    records = wait_records(out, lambda r: sum(1 for x in r if x["type"] == "end") >= sessions, "the mock's sessions")
    assert [m["text"] for m in messages(records, conn=1, sender="server") if m["opcode"] == 1] == replies
    assert any(m["compressed"] for m in messages(records, conn=1, sender="server"))
    kept = wait_records(journal, lambda r: sum(1 for x in r if x["type"] == "end") >= sessions, "the journal")
    assert {r["type"] for r in kept} <= {"open", "frame", "message", "end"}
    assert all(r["from"] == "client" for r in kept if r["type"] in ("frame", "message"))
    assert [m["text"] for m in messages(kept, conn=1) if m["opcode"] == 1] == SCRIPT


def test_many_clients_at_once_each_in_its_own_place(wstap, peer, procs):
    recording, replies = record(wstap, peer)
    _, url = mock(procs, recording)

    async def one(n):
        # Every other client starts in the middle of the script: its place is its own.
        texts = SCRIPT if n % 2 == 0 else SCRIPT[1:] + SCRIPT[:1]
        return n, await send_all(url + "/chat", texts, 3)

    async def everyone():
        return await asyncio.gather(*(one(n) for n in range(24)))
    for n, got in asyncio.run(everyone()):
        assert got == (replies if n % 2 == 0 else replies[1:] + replies[:1]), n


def test_json_matching_leaves_ignored_fields_out(wstap, peer, procs):
    proxy = wstap(f"ws://127.0.0.1:{app_server(peer)}", ["--max-payload", "unlimited"])
    recorded = asyncio.run(one_by_one(proxy.url + "/chat", ['{"op":"get","id":1,"ts":111}', "marker"]))
    proxy.wait_ended()
    reordered = '{ "ts": 999, "op": "get", "id": 1 }'
    _, url = mock(procs, proxy.jsonl, "--match", "json", "--ignore", "json.ts")
    assert asyncio.run(send_all(url, [reordered, "marker"], 2)) == recorded
    # Matched exactly, the changed message is not the recorded one: only the marker is answered.
    _, exact = mock(procs, proxy.jsonl)
    assert asyncio.run(send_all(exact, [reordered, "marker"], 1)) == ["marker"]


def test_each_unmatched_policy(wstap, peer, procs):
    recording, replies = record(wstap, peer)
    _, ignoring = mock(procs, recording)
    assert asyncio.run(send_all(ignoring, ["nobody recorded this", SCRIPT[2]], 1)) == ["plain text"]
    _, echoing = mock(procs, recording, "--unmatched", "echo")
    assert asyncio.run(send_all(echoing, ["nobody recorded this", SCRIPT[2]], 2)) == ["nobody recorded this", "plain text"]

    _, closing = mock(procs, recording, "--unmatched", "close=4001")

    async def closed():
        async with connect(closing) as ws:
            await ws.send("nobody recorded this")
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            return info.value.rcvd.code, info.value.rcvd.reason
    assert asyncio.run(closed()) == (4001, "wstap mock: unmatched message")

    # Hybrid: what the recording has is mocked, the rest goes to a real server and its answers come back.
    echo = peer(PYTHON, str(PEERS / "websockets_echo_server.py"))
    hybrid_proc, hybrid = mock(procs, recording, "--unmatched", f"passthrough=ws://127.0.0.1:{echo}")
    got = asyncio.run(send_all(hybrid + "/chat", [SCRIPT[0], "only the real server knows", SCRIPT[2]], 3))
    assert sorted(got) == sorted([replies[0], "only the real server knows", replies[2]])
    hybrid_proc.wait_for(r"3 messages received, 2 matched, 1 unmatched \(1 passed through to ws://127\.0\.0\.1:\d+\)")
    # A real server that cannot be reached: said once, and the mocked part goes on.
    nowhere_proc, nowhere = mock(procs, recording, "--unmatched", "passthrough=ws://127.0.0.1:9")

    async def unreachable():
        async with connect(nowhere) as ws:
            await ws.send("nobody recorded this")
            await asyncio.to_thread(nowhere_proc.wait_for, r"passthrough to ws://127\.0\.0\.1:9 failed: connection refused; 1 unmatched message")
            await ws.send(SCRIPT[2])
            return await ws.recv()
    assert asyncio.run(unreachable()) == "plain text"


def test_listen_tls_with_wstaps_ca(wstap, peer, procs, tmp_path):
    recording, replies = record(wstap, peer)
    ca = tmp_path / "ca"
    server, url = mock(procs, recording, "--listen-tls", "--ca-dir", ca)
    server.wait_for(r"serving TLS with the CA in")
    context = ssl.create_default_context(cafile=str(ca / "wstap-ca.pem"))
    wss = url.replace("ws://127.0.0.1", "wss://localhost")
    assert asyncio.run(send_all(wss + "/chat", SCRIPT, 3, ssl_context=context)) == replies
    assert oct(os.stat(ca / "wstap-ca-key.pem").st_mode & 0o777) == "0o600"


def test_bad_input_gets_one_clear_line_and_a_non_zero_exit(wstap, peer, tmp_path):
    recording, _ = record(wstap, peer)
    not_har = tmp_path / "not.har"
    not_har.write_text('{"log": {"version": "1.2"}}')
    empty_capture = tmp_path / "nothing.pcap"
    empty_capture.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    cases = {
        ("--from", tmp_path / "missing.jsonl"): "No such file or directory",
        ("--from", not_har): "not a HAR file: no log.entries array",
        ("--from", empty_capture): "has no WebSocket connection to serve",
        ("--from", recording, "--conn", "9"): "has no WebSocket connection 9; it has 1",
        ("--from", recording, "--unmatched", "sometimes"): "--unmatched must be ignore, close=CODE, echo or passthrough",
        ("--from", recording, "--unmatched", "close=1005"): "--unmatched close=CODE takes a close code a peer may send",
        ("--from", recording, "--match", "fuzzy"): "--match must be exact, json or regex",
        ("--from", recording, "--listen", f"127.0.0.1:{busy.getsockname()[1]}"): "the address is already in use",
    }
    for args, message in cases.items():
        done = subprocess.run([WSTAP, "mock", *map(str, args)], capture_output=True, text=True, timeout=60)
        assert done.returncode != 0, args
        assert message in done.stderr, (args, done.stderr)
        assert len([l for l in done.stderr.splitlines() if l.startswith(("wstap:", "Error:"))]) == 1, done.stderr
    busy.close()
