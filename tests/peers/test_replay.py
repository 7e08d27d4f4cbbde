"""wstap replay: a recorded client side against real servers (Python websockets), with --diff for CI."""
import asyncio
import json
import re
import struct
import subprocess
from pathlib import Path

from websockets.asyncio.client import connect

from conftest import PEERS, PYTHON, WSTAP, messages

ROOT = Path(__file__).resolve().parents[2]
TEST_CA = ROOT / "certs" / "test" / "test-ca.pem"
CAPTURES = ROOT.parent / "shared" / "captures"
FIXTURES = ROOT / "Tests" / "WSTapRecordingTests" / "Fixtures"


def replay(*args, timeout=120):
    return subprocess.run([WSTAP, "replay", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def app_server(peer, *flags):
    return peer(PYTHON, str(PEERS / "websockets_app_server.py"), *flags)


async def app_session(url, pipelined=False):
    """Log in, ask for two prices with the session's token, echo a text and a binary message."""
    async with connect(url, compression="deflate", max_size=None) as ws:
        await ws.send(json.dumps({"op": "login", "user": "ada"}))
        token = json.loads(await ws.recv())["session"]["token"]
        if pipelined:
            for n in (1, 2):
                await ws.send(json.dumps({"op": "get", "id": n, "token": token}))
            replies = [json.loads(await ws.recv()) for _ in range(2)]
        else:
            replies = []
            for n in (1, 2):
                await ws.send(json.dumps({"op": "get", "id": n, "token": token}))
                replies.append(json.loads(await ws.recv()))
        assert all(r["ok"] for r in replies)
        await ws.send("plain text " * 20)
        await ws.recv()
        await ws.send(bytes(range(256)) * 4)
        await ws.recv()


def record(wstap, port, extra=(), pipelined=False):
    proxy = wstap(f"ws://127.0.0.1:{port}", ["--max-payload", "unlimited", *extra])
    asyncio.run(app_session(proxy.url + "/app?v=2", pipelined))
    records = proxy.wait_ended()
    assert any(m["compressed"] for m in messages(records))
    return proxy


def test_a_recorded_session_replays_clean_against_a_fresh_server(wstap, peer, tmp_path):
    proxy = record(wstap, app_server(peer))
    fresh = app_server(peer)
    out = tmp_path / "replayed.jsonl"
    done = replay(proxy.jsonl, "--to", f"ws://127.0.0.1:{fresh}", "--diff", "--capture", "token=json.session.token",
                  "--ignore", "json.ts", "--ignore", "json.session.token", "--jsonl", out, "-q")
    assert done.returncode == 0, done.stderr
    assert "sent 5 of 5 client messages, received 5 server messages (5 recorded)" in done.stderr
    assert "the server answered as recorded" in done.stderr
    # The new session is recorded like the proxy's: open, frames, messages, end; the login reply's new
    # token went into the later requests, so the server said ok.
    replayed = [json.loads(line) for line in out.read_text().splitlines()]
    assert replayed[0]["type"] == "open" and replayed[-1]["type"] == "end"
    assert replayed[0]["request"]["target"] == "/app?v=2"
    prices = [json.loads(m["text"]) for m in messages(replayed, sender="server") if m["opcode"] == 1 and "price" in m.get("text", "")]
    assert [p["ok"] for p in prices] == [True, True]
    assert any(m["compressed"] for m in messages(replayed, sender="client"))


def test_without_the_capture_the_stale_token_shows_in_the_diff(wstap, peer):
    proxy = record(wstap, app_server(peer))
    done = replay(proxy.jsonl, "--to", f"ws://127.0.0.1:{app_server(peer)}", "--diff", "--ignore", "json.ts", "--ignore", "json.session.token", "-q")
    assert done.returncode == 1
    assert "server message 2: json.ok: recorded true, replayed false" in done.stderr
    assert "server message 3: json.ok: recorded true, replayed false" in done.stderr


def test_a_changed_server_fails_the_diff_and_names_the_messages(wstap, peer):
    proxy = record(wstap, app_server(peer))
    done = replay(proxy.jsonl, "--to", f"ws://127.0.0.1:{app_server(peer, '--shout')}", "--diff",
                  "--capture", "token=json.session.token", "--ignore", "json.ts", "--ignore", "json.session.token", "-q")
    assert done.returncode == 1
    assert 'server message 1: json.op: recorded "welcome", replayed "WELCOME"' in done.stderr
    assert 'server message 2: json.op: recorded "price", replayed "PRICE"' in done.stderr
    assert "wstap: diff: 3 differences from the recording" in done.stderr


def test_answers_out_of_order_match_with_correlate(wstap, peer):
    proxy = record(wstap, app_server(peer), pipelined=True)
    swapped = app_server(peer, "--swap")
    common = ["--capture", "token=json.session.token", "--ignore", "json.ts", "--ignore", "json.session.token", "--diff", "-q"]
    in_order = replay(proxy.jsonl, "--to", f"ws://127.0.0.1:{swapped}", *common)
    assert in_order.returncode == 1 and "json.id: recorded 1, replayed 2" in in_order.stderr
    matched = replay(proxy.jsonl, "--to", f"ws://127.0.0.1:{swapped}", "--correlate", "json.id", *common)
    assert matched.returncode == 0, matched.stderr


def test_replay_from_a_har_that_wstap_wrote(wstap, peer, tmp_path):
    har = tmp_path / "session.har"
    record(wstap, app_server(peer), ["--har", str(har)])
    done = replay(har, "--to", f"ws://127.0.0.1:{app_server(peer)}", "--diff", "--capture", "token=json.session.token",
                  "--ignore", "json.ts", "--ignore", "json.session.token", "-q")
    assert done.returncode == 0, done.stderr
    assert "sent 5 of 5 client messages" in done.stderr


def test_replay_from_the_har_fixtures_of_other_tools(peer, tmp_path):
    echo = peer(PYTHON, str(PEERS / "websockets_echo_server.py"))
    for fixture in ["chrome-devtools.har", "mitmproxy.har", "http-toolkit.har"]:
        out = tmp_path / f"{fixture}.jsonl"
        done = replay(FIXTURES / fixture, "--to", f"ws://127.0.0.1:{echo}", "--jsonl", out, "-q", "--step-timeout", "2")
        assert done.returncode == 0, f"{fixture}: {done.stderr}"
        replayed = [json.loads(line) for line in out.read_text().splitlines()]
        assert replayed[0]["request"]["target"] == "/chat?room=1"
        sent = [m.get("text", m.get("base64")) for m in messages(replayed, sender="client") if m["opcode"] in (1, 2)]
        echoed = [m.get("text", m.get("base64")) for m in messages(replayed, sender="server") if m["opcode"] in (1, 2)]
        assert sent == echoed == ['{"op":"hello","id":1}', "AAEC/w=="], fixture
        # Against an echo server the recorded welcome cannot come: --diff says so, exit 1.
        differs = replay(FIXTURES / fixture, "--to", f"ws://127.0.0.1:{echo}", "--diff", "-q", "--step-timeout", "2")
        assert differs.returncode == 1 and "server message 1:" in differs.stderr


def connections_of(capture):
    done = subprocess.run([WSTAP, "read", str(capture), "--jsonl", "-", "-q"], capture_output=True, text=True, timeout=60)
    records = [json.loads(line) for line in done.stdout.splitlines()]
    return [r["conn"] for r in records if r["type"] == "open"], records


def test_each_shared_captures_sessions_replay_to_a_local_server(peer):
    """Every WebSocket session of every shared capture replays against a local echo server: each of
    its client data messages is sent (the server's answers are the echo's, not the recording's)."""
    echo = peer(PYTHON, str(PEERS / "websockets_echo_server.py"))
    captures = sorted(p for p in CAPTURES.iterdir() if p.suffix in (".pcap", ".pcapng"))
    assert captures
    replayed = 0
    for capture in captures:
        conns, records = connections_of(capture)
        for conn in conns:
            # Data messages, whatever their opcode: the violations capture's orphan continuation and
            # reserved opcodes are replayed as recorded (a way to test how a server takes them).
            expected = len([m for m in messages(records, conn=conn, sender="client") if m["opcode"] < 8])
            args = [capture, "--conn", conn, "--to", f"ws://127.0.0.1:{echo}", "--pace", "asap", "-q", "--step-timeout", "1", "--allow-truncated"]
            done = replay(*args)
            if "Sec-WebSocket-Version: 6, as recorded" in done.stderr:
                # The hybi-06 draft's handshake, refused by a server of today: ask for RFC 6455's instead.
                done = replay(*args, "--header", "Sec-WebSocket-Version: 13")
            assert done.returncode == 0, f"{capture.name} conn {conn}: {done.stderr}"
            sent, total = map(int, re.search(r"sent (\d+) of (\d+) client messages", done.stderr).groups())
            assert total == expected, f"{capture.name} conn {conn}: {done.stderr}"
            # A server may close on a message it refuses (the violations capture's invalid text): all
            # messages up to that one went.
            assert sent == expected or "the server closed the connection before" in done.stderr, f"{capture.name} conn {conn}: {done.stderr}"
            replayed += 1
    assert replayed >= 15


def test_wss_both_ways_and_certificates_checked(wstap, peer):
    port = app_server(peer, "--tls")
    # Record a wss session through the proxy (plain ws to the proxy, wss to the server).
    proxy = wstap(f"wss://localhost:{port}", ["--max-payload", "unlimited", "--upstream-ca", str(TEST_CA)])
    asyncio.run(app_session(proxy.url + "/secure"))
    proxy.wait_ended()
    common = ["--capture", "token=json.session.token", "--ignore", "json.ts", "--ignore", "json.session.token", "--diff", "-q"]
    done = replay(proxy.jsonl, "--to", f"wss://localhost:{port}", "--upstream-ca", TEST_CA, *common)
    assert done.returncode == 0, done.stderr
    unverified = replay(proxy.jsonl, "--to", f"wss://localhost:{port}", *common)
    assert unverified.returncode == 1 and "failed: cannot connect" in unverified.stderr and "certificate" in unverified.stderr
    insecure = replay(proxy.jsonl, "--to", f"wss://localhost:{port}", "--insecure", *common)
    assert insecure.returncode == 0, insecure.stderr
    # And a captured wss session (decrypted with the pcapng's own secrets) replays over wss.
    done = replay(CAPTURES / "gen-wss-keylog.pcapng", "--to", f"wss://localhost:{port}", "--upstream-ca", TEST_CA, "-q", "--step-timeout", "2")
    assert done.returncode == 0 and "sent 2 of 2 client messages" in done.stderr, done.stderr


def test_bad_input_gets_one_clear_line_and_a_non_zero_exit(wstap, peer, tmp_path):
    echo = peer(PYTHON, str(PEERS / "websockets_echo_server.py"))
    to = f"ws://127.0.0.1:{echo}"
    proxy = record(wstap, app_server(peer))
    lines = proxy.jsonl.read_text().splitlines()
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(lines[:4]) + "\n" + lines[4][:20] + "\n")
    not_har = tmp_path / "not.har"
    not_har.write_text('{"log": {"version": "1.2"}}')
    empty_capture = tmp_path / "nothing.pcap"
    empty_capture.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    cases = {
        (cut, "--to", to): "line 5: not a JSON object",
        (not_har, "--to", to): "not a HAR file: no log.entries array",
        (empty_capture, "--to", to): "has no WebSocket connection to replay",
        (proxy.jsonl, "--conn", "9", "--to", to): "has no WebSocket connection 9; it has 1",
        (proxy.jsonl, "--to", "ws://127.0.0.1:9"): "failed: cannot connect to ws://127.0.0.1:9: connection refused",
        (proxy.jsonl, "--to", "http://127.0.0.1:9"): "--to must be a ws:// or wss:// URL",
        (proxy.jsonl, "--to", to, "--pace", "sometimes"): "--pace must be reply, idle=DURATION",
    }
    for args, message in cases.items():
        done = replay(*args)
        assert done.returncode != 0, args
        assert message in done.stderr, (args, done.stderr)
        assert len([l for l in done.stderr.splitlines() if l.startswith(("wstap:", "Error:"))]) == 1, done.stderr

    # A recording whose payloads were cut refuses, and says how to re-record.
    short_har = tmp_path / "short.har"
    short = wstap(f"ws://127.0.0.1:{echo}", ["--max-payload", "10", "--har", str(short_har)])
    asyncio.run(app_session_echo(short.url))
    short.wait_ended()
    refused = replay(short.jsonl, "--to", to)
    assert refused.returncode == 1 and "Record again with --max-payload unlimited" in refused.stderr
    # The HAR of the same session says so too (wstap's own _truncated member), once it is complete.
    short.stop()
    refused = replay(short_har, "--to", to)
    assert refused.returncode == 1 and "Record again with --max-payload unlimited" in refused.stderr, refused.stderr
    allowed = replay(short.jsonl, "--to", to, "--allow-truncated", "-q")
    assert allowed.returncode == 0, allowed.stderr


async def app_session_echo(url):
    async with connect(url) as ws:
        await ws.send("a message longer than ten bytes")
        await ws.recv()


def test_filter_chooses_the_connection_and_rules_change_what_is_sent(wstap, peer, tmp_path):
    port = app_server(peer)
    proxy = wstap(f"ws://127.0.0.1:{port}", ["--max-payload", "unlimited"])

    async def two_sessions():
        await app_session(proxy.url + "/app?v=2")
        await app_session(proxy.url + "/other")
    asyncio.run(two_sessions())
    proxy.wait_ended(count=2)
    common = ["--to", f"ws://127.0.0.1:{app_server(peer)}", "--capture", "token=json.session.token", "--ignore", "json.ts",
              "--ignore", "json.session.token", "--diff"]
    both = replay(proxy.jsonl, *common, "-q")
    assert both.returncode == 1 and "has 2 WebSocket connections (1, 2): choose one with --conn N" in both.stderr
    out = tmp_path / "other.jsonl"
    chosen = replay(proxy.jsonl, *common, "--filter", "path=/other", "--jsonl", out, "-q",
                    "--rule", "[renumber] json.op=get json.id=2 => set json.id 7")
    # The second request went with id 7: the server's answer differs where the rule said, and only there.
    assert chosen.returncode == 1, chosen.stderr
    assert "rule 'renumber': changed 1 client message" in chosen.stderr
    assert "server message 3: json.id: recorded 2, replayed 7; json.price: recorded 102, replayed 107" in chosen.stderr
    assert "wstap: diff: 1 difference from the recording" in chosen.stderr
    replayed = [json.loads(line) for line in out.read_text().splitlines()]
    assert replayed[0]["request"]["target"] == "/other"
    sent = [json.loads(m["text"]) for m in messages(replayed, sender="client") if m["opcode"] == 1 and m["text"].startswith("{")]
    assert [m.get("id") for m in sent] == [None, 1, 7]
    none = replay(proxy.jsonl, *common, "--filter", "path=/nowhere")
    assert none.returncode == 1 and "no WebSocket connection of" in none.stderr and "matches --filter 'path=/nowhere'" in none.stderr
    dropped = replay(proxy.jsonl, *common, "--conn", "1", "-q", "--rule", "[skip] json.op=get json.id=1 => drop")
    assert "sent 4 of 5 client messages" in dropped.stderr and "rule 'skip': dropped 1 client message" in dropped.stderr
