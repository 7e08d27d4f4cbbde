"""The control API over real HTTP (`wstap proxy --ui`): the token, Host and Origin checks, connections
and records of a live session between real peers, the push stream resuming after a disconnect, and a
reader that stops reading getting a gap notice while the relay goes on at full speed."""
import http.client
import json
import re
import socket
import subprocess
import urllib.parse

from websockets.sync.client import connect

from conftest import DEADLINE, PEERS, PYTHON


def start_ui(wstap, upstream, extra=()):
    proxy = wstap(upstream, extra=["--ui", "0", *extra])
    m = proxy.wait_for(r"control API and web UI at (http://127\.0\.0\.1:(\d+)/\?token=([0-9a-f]{32}))")
    proxy.ui_port = int(m.group(2))
    proxy.token = m.group(3)
    return proxy


def request(proxy, path, headers=None, method="GET", token=True):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.ui_port, timeout=DEADLINE)
    sent = {"Authorization": f"Bearer {proxy.token}"} if token else {}
    sent.update(headers or {})
    conn.request(method, path, headers=sent)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), body


def api(proxy, path):
    status, _, body = request(proxy, path)
    assert status == 200, body
    return json.loads(body)


def records(proxy, **query):
    return api(proxy, "/api/records?" + urllib.parse.urlencode(query))["records"]


def wait_api(proxy, path, condition, what):
    """Polls the API until condition(answer) holds (records are stored as they happen)."""
    import time
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        answer = api(proxy, path)
        if condition(answer):
            return answer
        time.sleep(0.02)  # polling for a condition, not waiting for time to pass
    raise AssertionError(f"timed out waiting for {what}: {api(proxy, path)}")


def echo_server(peer):
    return peer(PYTHON, str(PEERS / "websockets_echo_server.py"))


def test_every_call_needs_the_token_and_the_servers_own_host_and_origin(wstap, peer):
    proxy = start_ui(wstap, f"ws://127.0.0.1:{echo_server(peer)}")
    assert request(proxy, "/api/status")[0] == 200
    assert request(proxy, "/api/status", token=False)[0] == 401
    assert request(proxy, "/api/status", {"Authorization": "Bearer " + "0" * 32})[0] == 401
    # DNS rebinding: a page under another name reaching the loopback port.
    status, _, body = request(proxy, "/api/status", {"Host": f"rebind.example:{proxy.ui_port}"})
    assert status == 403 and b"Host" in body
    # A page elsewhere, even with the token.
    assert request(proxy, "/api/status", {"Origin": "http://evil.example"})[0] == 403
    assert request(proxy, "/api/status", {"Origin": f"http://127.0.0.1:{proxy.ui_port}"})[0] == 200
    # The printed URL trades its token for a cookie and a redirect without it.
    status, headers, _ = request(proxy, f"/?token={proxy.token}", token=False)
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"].split(";")[0]
    assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
    assert request(proxy, "/api/status", {"Cookie": cookie}, token=False)[0] == 200
    assert request(proxy, f"/?token={'1' * 32}", token=False)[0] == 401


def test_a_live_session_is_listed_and_its_records_are_the_jsonl_records_with_a_seq(wstap, peer):
    proxy = start_ui(wstap, f"ws://127.0.0.1:{echo_server(peer)}")
    with connect(proxy.url + "/room?x=1") as ws:
        for text in ("one", "two", "three"):
            ws.send(text)
            assert ws.recv() == text
        listed = api(proxy, "/api/connections?state=open")["connections"]
        assert len(listed) == 1 and listed[0]["url"].endswith("/room?x=1")
        assert listed[0]["state"] == "open" and listed[0]["client_messages"] == 3 and listed[0]["server_messages"] == 3
    conn = listed[0]["conn"]
    one = wait_api(proxy, f"/api/connections/{conn}", lambda c: c["state"] == "ended", "the end of the connection")
    assert one["end"]["closed_by"] == "client"
    stored = records(proxy, limit=10000)
    in_file = proxy.records()
    # The same records as the file, in the same order, each with its seq.
    assert [{k: v for k, v in r.items() if k != "seq"} for r in stored] == in_file
    assert [r["seq"] for r in stored] == list(range(stored[0]["seq"], stored[0]["seq"] + len(stored)))
    texts = records(proxy, filter="type=message from=server op=text")
    assert [r["text"] for r in texts] == ["one", "two", "three"]
    # Paging: after= and limit= walk the same list.
    first = api(proxy, "/api/records?limit=2")
    rest = api(proxy, f"/api/records?after={first['next_after']}&limit=10000")
    assert first["more"] and first["records"] + rest["records"] == stored
    # A filter that does not parse says where.
    status, _, body = request(proxy, "/api/records?filter=" + urllib.parse.quote("(op=text"))
    assert status == 400 and "column" in json.loads(body)
    # Export: what --jsonl wrote, and a HAR log wstap reads back to the same messages.
    status, headers, body = request(proxy, "/api/export?format=jsonl")
    assert status == 200 and "attachment" in headers["Content-Disposition"]
    assert [json.loads(line) for line in body.decode().splitlines()] == in_file
    status, _, body = request(proxy, f"/api/export?format=har&conn={conn}&filter=" + urllib.parse.quote("text:two"))
    har = json.loads(body)
    [entry] = har["log"]["entries"]
    assert entry["_resourceType"] == "websocket" and entry["request"]["url"].endswith("/room?x=1")
    # With a filter, what --filter keeps: the matches (both directions' "two") in their connection's entry.
    assert [(m["type"], m["data"]) for m in entry["_webSocketMessages"]] == [("send", "two"), ("receive", "two")]
    assert request(proxy, "/api/export?format=pdf")[0] == 400
    assert api(proxy, "/api/status")["live"] is True


def test_read_ui_serves_a_recording_to_look_at_and_refuses_to_steer_it(procs, tmp_path, wstap, peer):
    """`wstap read FILE… --ui`: two recordings' connections are numbered on, not merged; steering is refused."""
    proxy = wstap(f"ws://127.0.0.1:{echo_server(peer)}")
    with connect(proxy.url + "/first") as ws:
        ws.send("hello")
        assert ws.recv() == "hello"
    proxy.wait_ended()
    from conftest import WSTAP, Proc
    reader = Proc([WSTAP, "read", str(proxy.jsonl), str(proxy.jsonl), "-q", "--ui", "0"], stream="stderr")
    procs.append(reader)
    m = reader.wait_for(r"web UI on 2 files at http://127\.0\.0\.1:(\d+)/\?token=([0-9a-f]{32})")
    reader.ui_port, reader.token = int(m.group(1)), m.group(2)
    reader.wait_for(r"records served; Ctrl-C ends")
    status = api(reader, "/api/status")
    assert status["live"] is False and status["source"] == f"{proxy.jsonl.name}, {proxy.jsonl.name}"
    listed = api(reader, "/api/connections")["connections"]
    assert [c["conn"] for c in listed] == [1, 2] and all(c["url"].endswith("/first") for c in listed)
    assert [r["text"] for r in records(reader, filter="type=message from=server op=text")] == ["hello", "hello"]
    assert call(reader, "POST", "/api/connections/1/messages", {"to": "server", "text": "x"})[0] == 409
    # A file that cannot be read leaves nothing to serve: one line and exit status 1, not an empty page.
    done = subprocess.run([WSTAP, "read", str(tmp_path / "missing.pcap"), "--ui", "0"], capture_output=True, text=True, timeout=DEADLINE)
    assert done.returncode == 1 and "missing.pcap" in done.stderr and "No such file" in done.stderr, done.stderr


class EventReader:
    """A Server-Sent Events reader on a plain socket, so a test can stop reading and choose its buffer."""

    def __init__(self, proxy, path="/api/events", last_event_id=None, receive_buffer=None):
        self.sock = socket.socket()
        if receive_buffer:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(DEADLINE)
        self.sock.connect(("127.0.0.1", proxy.ui_port))
        head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{proxy.ui_port}\r\nAuthorization: Bearer {proxy.token}\r\n"
        if last_event_id is not None:
            head += f"Last-Event-ID: {last_event_id}\r\n"
        self.sock.sendall((head + "\r\n").encode())
        self.buffer = b""
        status = self._line()
        assert status.startswith("HTTP/1.1 200"), status
        while self._line():
            pass
        self.chunked = True

    def _line(self):
        while b"\r\n" not in self.buffer:
            self._fill()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line.decode()

    def _fill(self):
        data = self.sock.recv(65536)
        assert data, "the stream ended"
        self.buffer += data

    def _chunk(self):
        size = int(self._line(), 16)
        while len(self.buffer) < size + 2:
            self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size + 2:]
        return data

    def events(self):
        """Yields (event, id, data) as they come; comments are skipped."""
        pending = b""
        while True:
            pending += self._chunk()
            while b"\n\n" in pending:
                block, pending = pending.split(b"\n\n", 1)
                fields = {}
                for line in block.decode().split("\n"):
                    if line.startswith(":"):
                        continue
                    name, _, value = line.partition(": ")
                    fields[name] = value
                if "event" in fields:
                    yield fields["event"], int(fields["id"]), json.loads(fields["data"])

    def close(self):
        self.sock.close()


def test_the_push_stream_resumes_after_a_disconnect_with_last_event_id(wstap, peer):
    proxy = start_ui(wstap, f"ws://127.0.0.1:{echo_server(peer)}")
    with connect(proxy.url + "/live") as ws:
        reader = EventReader(proxy, "/api/events?filter=" + urllib.parse.quote("type=message"))
        ws.send("before")
        ws.recv()
        seen = []
        for event, seq, record in reader.events():
            assert event == "record" and record["seq"] == seq
            seen.append(record)
            if record["from"] == "server":
                break
        assert [r["text"] for r in seen] == ["before", "before"]
        reader.close()
        # Missed while disconnected.
        for text in ("while", "away"):
            ws.send(text)
            ws.recv()
        reader = EventReader(proxy, "/api/events?filter=" + urllib.parse.quote("type=message"), last_event_id=seen[-1]["seq"])
        again = []
        for event, seq, record in reader.events():
            again.append(record)
            if len(again) == 4:
                break
        reader.close()
    assert [r["text"] for r in again] == ["while", "while", "away", "away"]
    assert again[0]["seq"] > seen[-1]["seq"]
    assert again == [r for r in records(proxy, filter="type=message", limit=10000) if r["seq"] > seen[-1]["seq"]][:4]


def test_a_reader_that_stops_reading_gets_a_gap_notice_and_never_slows_the_relay(wstap, peer):
    proxy = start_ui(wstap, f"ws://127.0.0.1:{echo_server(peer)}", extra=["--ui-store", str(4 << 20)])
    stalled = EventReader(proxy, receive_buffer=4096)
    count = 6_000
    payload = "x" * 1000
    # The relay carries every message while the reader reads nothing.
    with connect(proxy.url + "/bulk", compression=None, max_size=None) as ws:
        for index in range(count):
            ws.send(f"{index:05d}{payload}")
            assert ws.recv().startswith(f"{index:05d}")
    conn = wait_api(proxy, "/api/connections", lambda a: any(c["state"] == "ended" for c in a["connections"]),
                    "the end of the bulk connection")["connections"][-1]
    assert conn["client_messages"] >= count + 1  # its close, and pings the client sent meanwhile
    status = api(proxy, "/api/status")
    assert status["dropped_records"] > 0 and status["store_bytes"] <= 4 << 20
    # Now it reads: records from where it stood, then a gap naming what it missed, then live again.
    gap = None
    last = 0
    for event, seq, data in stalled.events():
        if event == "gap":
            gap = data
            assert data["from"] == last + 1 and data["to"] == seq and data["first_available"] >= data["from"]
            break
        assert seq == last + 1 or last == 0
        last = seq
    assert gap is not None
    # What the gap says is still held can be fetched (nothing has come since to push it out).
    held = records(proxy, after=gap["first_available"] - 1, limit=5)
    assert held and held[0]["seq"] == gap["first_available"]
    with connect(proxy.url + "/after") as ws:
        ws.send("live again")
        ws.recv()
    for event, seq, data in stalled.events():
        if event == "record" and data["type"] == "message" and data.get("text") == "live again":
            assert seq > gap["to"]
            break
    stalled.close()


def call(proxy, method, path, body=None):
    """A POST (or other) with a JSON body: (status, parsed answer)."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.ui_port, timeout=DEADLINE)
    data = json.dumps(body).encode() if body is not None else b""
    conn.request(method, path, body=data, headers={"Authorization": f"Bearer {proxy.token}", "Content-Type": "application/json"})
    response = conn.getresponse()
    answer = response.read()
    conn.close()
    return response.status, json.loads(answer)


def test_a_held_message_is_edited_and_forwarded_while_pings_flow_then_sends_and_a_close_reach_the_peers(wstap, peer):
    """Python websockets on both sides, permessage-deflate negotiated (both libraries offer it):
    the server's echo is held, pings keep flowing for longer than ping_timeout, the edit arrives and
    later compressed messages still inflate; a message injected to the server comes back as its echo;
    a compressed message in three frames reaches the client; close 4001 reaches both peers."""
    import asyncio
    from websockets.asyncio.client import connect as connect_async
    from websockets.exceptions import ConnectionClosed

    proxy = start_ui(wstap, f"ws://127.0.0.1:{echo_server(peer)}",
                     ["--rule", "[gate] from=server text=held => hold", "--hold-timeout", "120"])

    async def scenario():
        async with connect_async(proxy.url + "/steer", ping_interval=1, ping_timeout=1) as ws:
            assert "permessage-deflate" in (ws.response.headers.get("Sec-WebSocket-Extensions") or "")
            await ws.send("held")
            holds = await asyncio.to_thread(wait_api, proxy, "/api/holds", lambda a: a["holds"], "the held echo")
            hold = holds["holds"][0]
            assert hold["text"] == "held" and hold["from"] == "server" and hold["rules"] == ["gate"] and hold["compressed"]
            conn = hold["conn"]
            assert api(proxy, f"/api/connections/{conn}/holds")["holds"] == holds["holds"]
            # Pings and pongs overtake the hold: wait for three pongs recorded after it.
            await asyncio.to_thread(
                wait_api, proxy, f"/api/records?conn={conn}&filter=" + urllib.parse.quote("op=pong from=server"),
                lambda a: len(a["records"]) >= 3, "three pongs while the message is held")
            status, answer = await asyncio.to_thread(call, proxy, "POST", f"/api/connections/{conn}/holds/{hold['id']}",
                                                     {"action": "edit", "text": "edited by hand"})
            assert status == 200, answer
            assert await ws.recv() == "edited by hand"
            # The same hold cannot be released twice.
            assert (await asyncio.to_thread(call, proxy, "POST", f"/api/connections/{conn}/holds/{hold['id']}", {"action": "drop"}))[0] == 404
            # Later compressed messages still inflate at both peers.
            await ws.send("after the edit")
            assert await ws.recv() == "after the edit"
            # Injected toward the server: its echo proves the server received it.
            status, answer = await asyncio.to_thread(call, proxy, "POST", f"/api/connections/{conn}/messages", {"to": "server", "text": "injected"})
            assert status == 200, answer
            assert await ws.recv() == "injected"
            status, answer = await asyncio.to_thread(call, proxy, "POST", f"/api/connections/{conn}/messages",
                                                     {"to": "client", "text": "for the client, in pieces", "fragments": 3, "compressed": True})
            assert status == 200, answer
            assert await ws.recv() == "for the client, in pieces"
            # Refusals say why and change nothing.
            assert (await asyncio.to_thread(call, proxy, "POST", f"/api/connections/{conn}/close", {"code": 1005}))[0] == 409
            assert (await asyncio.to_thread(call, proxy, "POST", f"/api/connections/{conn}/messages", {"text": "to whom?"}))[0] == 400
            assert (await asyncio.to_thread(call, proxy, "POST", "/api/connections/999/abort"))[0] == 404
            status, answer = await asyncio.to_thread(call, proxy, "POST", f"/api/connections/{conn}/close", {"code": 4001, "reason": "bye", "to": "both"})
            assert status == 200, answer
            try:
                while True:
                    await ws.recv()
            except ConnectionClosed as closed:
                assert closed.rcvd is not None and closed.rcvd.code == 4001 and closed.rcvd.reason == "bye"
            return conn

    conn = asyncio.run(asyncio.wait_for(scenario(), DEADLINE))
    proxy.wait_ended()
    mine = [r for r in proxy.records() if r.get("conn") == conn]
    # The server received 4001: its answering close carries the code back.
    assert any(r["type"] == "message" and r["from"] == "server" and r.get("code") == 4001 for r in mine)
    changes = [r for r in mine if r["type"] == "change"]
    edited = next(c for c in changes if c["result"] == "edited")
    assert edited["rules"] == ["gate"] and edited["sent"][0]["text"] == "edited by hand" and edited["held_ms"] > 0
    injected = [c for c in changes if c["result"] == "injected"]
    # Two sends, and the close to each peer.
    assert len(injected) == 4 and all(c["rules"] == ["control API"] for c in injected)


def test_rules_put_over_the_api_change_the_next_message_of_an_open_connection(wstap, peer):
    proxy = start_ui(wstap, f"ws://127.0.0.1:{echo_server(peer)}")
    with connect(proxy.url + "/r") as ws:
        ws.send("before")
        assert ws.recv() == "before"
        conn = http.client.HTTPConnection("127.0.0.1", proxy.ui_port, timeout=DEADLINE)
        conn.request("PUT", "/api/rules", body="[shout] from=server => replace /after/ \"AFTER\"\n".encode(),
                     headers={"Authorization": f"Bearer {proxy.token}", "Content-Type": "text/plain"})
        response = conn.getresponse()
        assert response.status == 200, response.read()
        assert json.loads(response.read())["rules"][0]["name"] == "shout"
        ws.send("after")
        assert ws.recv() == "AFTER"
    assert api(proxy, "/api/rules")["rules"][0]["text"].startswith("[shout]")
    # Tried on what the store holds: one server message would change.
    status, answer = call_text(proxy, "POST", "/api/rules/test?filter=" + urllib.parse.quote("from=server op=text"), "[t] text=before => drop")
    assert status == 200 and answer["messages"] == 2 and answer["rules"][0]["changed"] == 1


def call_text(proxy, method, path, text):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.ui_port, timeout=DEADLINE)
    conn.request(method, path, body=text.encode(), headers={"Authorization": f"Bearer {proxy.token}", "Content-Type": "text/plain"})
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    return response.status, answer


def test_wstap_ctl_lists_tails_sends_releases_and_closes_from_the_shell(wstap, peer, procs):
    import os
    import subprocess
    from conftest import WSTAP, Proc

    proxy = start_ui(wstap, f"ws://127.0.0.1:{echo_server(peer)}", ["--rule", "[gate] from=server text=held => hold"])
    env = {**os.environ, "WSTAP_UI": f"http://127.0.0.1:{proxy.ui_port}/?token={proxy.token}"}

    def ctl(*args, code=0):
        done = subprocess.run([WSTAP, "ctl", *args], env=env, capture_output=True, text=True, timeout=DEADLINE)
        assert done.returncode == code, (args, done.stdout, done.stderr)
        return done.stdout if code == 0 else done.stderr

    tail = Proc([WSTAP, "ctl", "tail", "--after", "0", "--jsonl", "--filter", "type=message op=text from=server"], env=env)
    procs.append(tail)
    with connect(proxy.url + "/ctl") as ws:
        ws.send("held")
        hold = wait_api(proxy, "/api/holds", lambda a: a["holds"], "the held echo")["holds"][0]
        assert f"#{hold['conn']}  open  " in ctl("list", "--state", "open")
        assert f"hold {hold['id']}  from server  4 B  held" in ctl("holds")
        assert ctl("release", str(hold["conn"]), str(hold["id"]), "edit", "--text", "from the shell") == "released\n"
        assert ws.recv() == "from the shell"
        assert ctl("send", str(hold["conn"]), "--to", "server", "--text", "echo this") == "sent to the server\n"
        assert ws.recv() == "echo this"
        # The tail saw the server's messages as they happened, each with its seq.
        seen = [json.loads(tail.wait_for(r"^\{.*\}$").group(0)) for _ in range(2)]
        assert [r["text"] for r in seen] == ["held", "echo this"] and seen[0]["seq"] < seen[1]["seq"]
        assert "404" in ctl("close", "999", code=1)
        assert ctl("close", str(hold["conn"]), "--code", "4001", "--reason", "bye") == "close 4001 sent to the client and the server\n"
        try:
            ws.recv()
            raise AssertionError("the connection stayed open")
        except Exception as closed:  # websockets' ConnectionClosed
            assert getattr(closed, "rcvd", None) is not None and closed.rcvd.code == 4001
    bad = subprocess.run([WSTAP, "ctl", "list"], env={**os.environ, "WSTAP_UI": ""}, capture_output=True, text=True, timeout=DEADLINE)
    assert bad.returncode == 1 and "--ui" in bad.stderr and bad.stderr.count("\n") == 1


def test_a_stored_connection_is_replayed_over_the_api_and_compared_with_the_recording(wstap, peer):
    """POST /api/replays: the replay is a new connection in the same records; a server that answers
    as recorded gives no differences, one that changed (--shout) is named message by message."""
    app = peer(PYTHON, str(PEERS / "websockets_app_server.py"))
    shouting = peer(PYTHON, str(PEERS / "websockets_app_server.py"), "--shout")
    proxy = start_ui(wstap, f"ws://127.0.0.1:{app}")
    with connect(proxy.url + "/app") as ws:
        ws.send(json.dumps({"op": "get", "id": 1, "token": None}))
        json.loads(ws.recv())
        ws.send("plain echo")
        assert ws.recv() == "plain echo"
    proxy.wait_ended()
    status, answer = call(proxy, "POST", "/api/replays", {"conn": 1, "ignore": ["json.ts"]})
    assert status == 200, answer
    assert answer["failure"] is None and answer["sent"] == 2 and answer["received"] == 2 and answer["same"], answer
    assert answer["replayed"] == 1 and answer["conn"] == 2 and answer["target"] == f"ws://127.0.0.1:{app}/app"
    # Without --ignore json.ts the time in the price reply differs.
    status, answer = call(proxy, "POST", "/api/replays", {"conn": 1, "to": f"ws://127.0.0.1:{shouting}/app", "ignore": ["json.ts"], "pace": "asap"})
    assert status == 200 and not answer["same"] and answer["conn"] == 3
    assert len(answer["differences"]) == 1 and "PRICE" in answer["differences"][0], answer
    # The replays are connections of the proxy's records like any other.
    listed = {c["conn"]: c for c in api(proxy, "/api/connections")["connections"]}
    assert listed[2]["url"] == f"ws://127.0.0.1:{app}/app" and listed[2]["client_messages"] == 3  # and its close
    assert [r["text"] for r in records(proxy, conn=3, filter="type=message from=client op=text")][1] == "plain echo"
    # Refusals: a connection that does not exist, a body that is not a replay, a server that is not there.
    assert call(proxy, "POST", "/api/replays", {"conn": 99})[0] == 404
    assert call(proxy, "POST", "/api/replays", {"to": "http://x"})[0] == 400
    assert call(proxy, "POST", "/api/replays", {"conn": 1, "pace": "slowly"})[0] == 400
    status, answer = call(proxy, "POST", "/api/replays", {"conn": 1, "to": f"ws://127.0.0.1:{free_port()}/"})
    assert status == 200 and "cannot connect" in answer["failure"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
