"""--har: a HAR 1.2 log in Chrome's WebSocket format, valid JSON even when wstap is stopped mid-session."""
import asyncio
import json
import signal
import socket
import subprocess
import time

from websockets.asyncio.client import connect

from conftest import DEADLINE, PEERS, PYTHON, WSTAP, messages
from rawpeers import RawServer, frame, raw_client

REQUIRED_ENTRY = {"startedDateTime", "time", "request", "response", "cache", "timings"}


def check_har(path):
    har = json.loads(path.read_text())
    assert har["log"]["version"] == "1.2" and har["log"]["creator"]["name"] == "wstap"
    for entry in har["log"]["entries"]:
        assert REQUIRED_ENTRY <= set(entry)
        assert {"method", "url", "httpVersion", "headers", "queryString", "cookies", "headersSize", "bodySize"} <= set(entry["request"])
        assert {"status", "statusText", "httpVersion", "headers", "cookies", "content", "redirectURL", "headersSize", "bodySize"} <= set(entry["response"])
    return har["log"]["entries"]


def wait_har_entries(path, count):
    """The HAR is written on the sink thread after the JSON Lines of the same record, so seeing `end`
    in the JSONL does not mean the HAR entry is there yet: wait for the entry itself."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        entries = check_har(path)  # valid JSON at every moment, also while being written
        if len(entries) >= count:
            return entries
        time.sleep(0.02)  # polling a file for a condition; the assertion is on content, not time
    raise AssertionError(f"timed out waiting for {count} HAR entries; have {check_har(path)}")


def test_har_has_websocket_entries_matching_the_records(wstap, peer, tmp_path):
    port = peer(PYTHON, str(PEERS / "websockets_echo_server.py"))
    har = tmp_path / "session.har"
    proxy = wstap(f"ws://127.0.0.1:{port}", ["--har", str(har)])

    async def run():
        async with connect(proxy.url + "/h?x=1") as ws:
            await ws.send("har text ✓")
            await ws.recv()
            await ws.send(b"\x00\xffbin")
            await ws.recv()

    asyncio.run(run())
    records = proxy.wait_ended()
    entries = wait_har_entries(har, 1)
    assert len(entries) == 1
    entry = entries[0]
    assert entry["_resourceType"] == "websocket"
    assert entry["request"]["url"] == f"ws://127.0.0.1:{port}/h?x=1" and entry["response"]["status"] == 101
    got = [(m["type"], m["opcode"], m["data"]) for m in entry["_webSocketMessages"]]
    recorded = [("send" if m["from"] == "client" else "receive", m["opcode"], m.get("text", m.get("base64", "")))
                for m in messages(records) if m["opcode"] != 8] + [("send", 8, ""), ("receive", 8, "")]
    assert got[:4] == recorded[:4] == [("send", 1, "har text ✓"), ("receive", 1, "har text ✓"), ("send", 2, "AP9iaW4="), ("receive", 2, "AP9iaW4=")]
    assert all(isinstance(m["time"], float) for m in entry["_webSocketMessages"])


def test_har_is_valid_after_ctrl_c_with_a_connection_still_open(wstap, tmp_path):
    server = RawServer()
    har = tmp_path / "interrupted.har"
    proxy = wstap(f"ws://127.0.0.1:{server.port}", ["--har", str(har)])
    sock, _ = raw_client(proxy.port)
    sock.sendall(frame(1, b"before ctrl-c", mask=b"\1\2\3\4"))
    proxy.wait_records(lambda r: any(x["type"] == "message" for x in r), "the message")
    proxy.popen.send_signal(signal.SIGINT)
    assert proxy.popen.wait(timeout=30) == 0
    entries = check_har(har)  # valid JSON, with the open connection's messages so far
    assert [m["data"] for m in entries[0]["_webSocketMessages"]] == ["before ctrl-c"]
    sock.close()


def test_plain_http_exchanges_are_entries_too(wstap, tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    har = tmp_path / "http.har"
    proxy = wstap(f"ws://127.0.0.1:{port}", ["--har", str(har)])
    client = socket.create_connection(("127.0.0.1", proxy.port))
    client.sendall(b"GET /plain?q=2 HTTP/1.1\r\nHost: a\r\n\r\n")
    conn, _ = listener.accept()
    conn.recv(4096)
    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\nContent-Type: text/plain\r\n\r\nnope")
    response = b""
    while not response.endswith(b"nope"):
        chunk = client.recv(4096)
        assert chunk, response
        response += chunk
    proxy.wait_records(lambda r: any(x["type"] == "http" for x in r), "the http record")
    entries = wait_har_entries(har, 1)
    assert entries[0]["request"]["url"] == f"http://127.0.0.1:{port}/plain?q=2"
    assert entries[0]["response"]["status"] == 404 and "_resourceType" not in entries[0]
    client.close()
    conn.close()


def run_read(*args):
    return subprocess.run([WSTAP, "read", *map(str, args)], capture_output=True, text=True, timeout=60)


def test_read_converts_a_live_sessions_har_and_jsonl_both_ways(wstap, peer, tmp_path):
    """A websockets session through the proxy (compression on), recorded as JSONL and HAR at once:
    `wstap read` turns the HAR into JSONL with the same messages, and the JSONL into a HAR with the
    same entries; reading the proxy's JSONL back writes it again line for line."""
    port = peer(PYTHON, str(PEERS / "websockets_echo_server.py"))
    har = tmp_path / "live.har"
    proxy = wstap(f"ws://127.0.0.1:{port}", ["--har", str(har)])

    async def run():
        async with connect(proxy.url + "/convert", compression="deflate") as ws:
            for text in ["one ✓", "two " * 50]:
                await ws.send(text)
                await ws.recv()
            await ws.send(b"\x00\x01\xfe\xff")
            await ws.recv()

    asyncio.run(run())
    records = proxy.wait_ended()
    assert any(m["compressed"] for m in messages(records))
    wait_har_entries(har, 1)

    from_har = tmp_path / "from-har.jsonl"
    done = run_read(har, "--jsonl", from_har, "-q")
    assert done.returncode == 0, done.stderr
    converted = [json.loads(line) for line in from_har.read_text().splitlines()]
    assert [r["type"] for r in converted][0] == "open" and converted[-1]["type"] == "end"
    assert converted[0]["discovery"] == "har" and converted[0]["url"] == f"ws://127.0.0.1:{port}/convert"
    assert converted[0]["request"]["headers"] == [h for h in records[0]["request"]["headers"]]
    same = lambda m: (m["from"], m["opcode"], m.get("text", m.get("base64")))
    assert [same(m) for m in messages(converted)] == [same(m) for m in messages(records)]

    # Back again, the proxy's own JSONL: line for line the same.
    again = tmp_path / "again.jsonl"
    done = run_read(proxy.jsonl, "--jsonl", again, "-q")
    assert done.returncode == 0, done.stderr
    assert again.read_text() == proxy.jsonl.read_text()

    to_har = tmp_path / "from-jsonl.har"
    done = run_read(proxy.jsonl, "--har", to_har, "-q")
    assert done.returncode == 0, done.stderr
    assert [e["_webSocketMessages"] for e in check_har(to_har)] == [e["_webSocketMessages"] for e in check_har(har)]


def test_read_stops_at_damage_with_one_line_and_keeps_what_came_before(wstap, peer, tmp_path):
    port = peer(PYTHON, str(PEERS / "websockets_echo_server.py"))
    proxy = wstap(f"ws://127.0.0.1:{port}")

    async def run():
        async with connect(proxy.url) as ws:
            await ws.send("before the damage")
            await ws.recv()

    asyncio.run(run())
    proxy.wait_ended()
    lines = proxy.jsonl.read_text().splitlines()
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2] + "\n")
    out = tmp_path / "out.jsonl"
    done = run_read(damaged, "--jsonl", out, "-q")
    assert done.returncode == 1
    assert done.stderr.strip() == f"wstap: {damaged}: line 4: not a JSON object; the 3 records before it were written"
    assert out.read_text().splitlines() == lines[:3]

    not_har = tmp_path / "not.har"
    not_har.write_text('{"log": {"version": "1.2"}}')
    done = run_read(not_har)
    assert done.returncode == 1 and done.stderr.strip() == f"wstap: {not_har}: not a HAR file: no log.entries array"
