"""Connections that end early, stall or misbehave: every socket is closed, every descriptor returns,
and the proxy keeps serving. Waiting is on conditions (descriptor counts, records, bytes), never on time."""
import os
import socket
import time

from conftest import DEADLINE
from rawpeers import RawServer, abort, recv_until_end


def open_descriptors(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def close_wait_sockets(port):
    """Sockets on `port` in CLOSE-WAIT: the peer sent FIN and nobody closed our end."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "08":
                    count += 1
    return count


def wait_until(condition, what):
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)  # polling a condition; the assertion is on the state reached


def descriptor_baseline(proxy, probe):
    """Descriptors of an idle proxy after a few connections of the kind under test: the event loops
    open some descriptors lazily on first use, which is not a leak."""
    for _ in range(8):
        probe()
    proxy.wait_records(lambda r: sum(1 for x in r if x["type"] == "end") >= 8, "the warm-up connections to end")
    wait_until(lambda: close_wait_sockets(proxy.port) == 0, "the warm-up sockets to close")
    return open_descriptors(proxy.popen.pid)


def assert_descriptors_return(proxy, baseline):
    pid = proxy.popen.pid
    try:
        wait_until(lambda: open_descriptors(pid) <= baseline and close_wait_sockets(proxy.port) == 0,
                   "descriptors to return to the baseline")
    except AssertionError:
        raise AssertionError(f"{open_descriptors(pid)} descriptors open (baseline {baseline}), "
                             f"{close_wait_sockets(proxy.port)} sockets in CLOSE-WAIT")


def test_probes_that_close_before_a_request_leave_no_socket_behind(wstap):
    """Port probes, health checks and browser pre-connects: connect, maybe send half a head, close."""
    proxy = wstap("ws://127.0.0.1:9")

    def bare():
        socket.create_connection(("127.0.0.1", proxy.port)).close()

    def partial():
        s = socket.create_connection(("127.0.0.1", proxy.port))
        s.sendall(b"GET / HTTP/1.1\r\nHo")
        s.close()

    baseline = descriptor_baseline(proxy, partial)
    for _ in range(1000):
        bare()
    for _ in range(200):
        partial()
    proxy.wait_records(lambda r: sum(1 for x in r if x["type"] == "end") >= 1208, "1208 end records")
    assert_descriptors_return(proxy, baseline)
    ends = [r for r in proxy.records() if r["type"] == "end"]
    assert all(e["reason"] == "client closed before sending a request" for e in ends)


def test_connect_answered_then_abandoned_leaves_no_socket_behind(wstap, tmp_path):
    """Forward mode: CONNECT is answered at once (for interception); the client then leaves."""
    proxy = wstap(None, ["--ca-dir", str(tmp_path / "ca")])

    def abandon():
        s = socket.create_connection(("127.0.0.1", proxy.port))
        s.sendall(b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        s.close()

    baseline = descriptor_baseline(proxy, abandon)
    for _ in range(200):
        abandon()
    proxy.wait_records(lambda r: sum(1 for x in r if x["type"] == "end") >= 208, "208 end records")
    assert_descriptors_return(proxy, baseline)


def read_all(sockets):
    """Reads every socket until the proxy closes it; returns what each received."""
    import select
    received = {s: b"" for s in sockets}
    open_ = set(sockets)
    deadline = time.monotonic() + DEADLINE
    while open_:
        assert time.monotonic() < deadline, f"{len(open_)} connections still open"
        readable, _, _ = select.select(list(open_), [], [], 1.0)
        for s in readable:
            chunk = s.recv(65536)
            if chunk:
                received[s] += chunk
            else:
                open_.discard(s)
    return received


def test_clients_that_never_finish_their_head_get_408_and_are_closed(wstap):
    """Slow-loris: many connections each send part of a head and stall."""
    proxy = wstap("ws://127.0.0.1:9", ["--head-timeout", "1"])
    baseline = descriptor_baseline(proxy, lambda: socket.create_connection(("127.0.0.1", proxy.port)).close())
    stalled = []
    for i in range(600):
        s = socket.create_connection(("127.0.0.1", proxy.port))
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Trickle: " + str(i).encode())
        stalled.append(s)
    received = read_all(stalled)
    assert all(r.startswith(b"HTTP/1.1 408 Request Timeout\r\n") for r in received.values())
    for s in stalled:
        s.close()
    records = proxy.wait_records(lambda r: sum(1 for x in r if x["type"] == "end") >= 608, "608 end records")
    reasons = [r["reason"] for r in records if r["type"] == "end"][8:]
    assert set(reasons) == {"the client did not send a complete request head within 1 s (--head-timeout)"}
    assert_descriptors_return(proxy, baseline)


def test_an_upstream_that_never_answers_the_upgrade_gets_the_client_a_504(wstap):
    listener = socket.create_server(("127.0.0.1", 0))
    proxy = wstap(f"ws://127.0.0.1:{listener.getsockname()[1]}", ["--upstream-timeout", "1"])
    client = socket.create_connection(("127.0.0.1", proxy.port))
    client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    upstream, _ = listener.accept()
    head = b""
    upstream.settimeout(60)
    while b"\r\n\r\n" not in head:
        more = upstream.recv(4096)
        # wstap gone before its request ended: fail, do not spin on recv() returning b"" forever.
        assert more, f"the upstream connection closed before the request head ended: {head!r}"
        head += more
    # The upstream reads the request and says nothing: wstap gives up on it and on the client.
    response = read_all([client])[client]
    assert response.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert b"did not answer the WebSocket handshake within 1 s" in response
    assert upstream.recv(4096) == b""  # wstap closed its side of the upstream connection
    end = next(r for r in proxy.wait_ended() if r["type"] == "end")
    assert end["closed_by"] == "proxy" and "did not answer the WebSocket handshake" in end["reason"]


def test_an_upstream_that_does_not_accept_gets_the_client_a_504(wstap):
    # A listener whose accept queue is full drops further SYNs: connecting to it hangs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))
    proxy = wstap(f"ws://127.0.0.1:{port}", ["--upstream-timeout", "1"])
    client = socket.create_connection(("127.0.0.1", proxy.port))
    client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    response = read_all([client])[client]
    assert response.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert b"did not accept the connection within 1 s" in response
    filler.close()
    listener.close()


def test_a_head_over_the_size_limit_gets_431(wstap):
    proxy = wstap("ws://127.0.0.1:9", ["--max-head-size", "4096"])
    client = socket.create_connection(("127.0.0.1", proxy.port))
    client.sendall(b"GET / HTTP/1.1\r\nCookie: " + b"a" * 8000 + b"\r\n\r\n")
    response = read_all([client])[client]
    assert response.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    end = next(r for r in proxy.wait_ended() if r["type"] == "end")
    assert end["reason"] == "the request head is larger than 4096 bytes (--max-head-size)"


def test_a_tls_client_on_a_plain_listener_is_told_at_once(wstap):
    """A wss:// client pointed at a plain port: recognised from its ClientHello, not left waiting."""
    import ssl
    proxy = wstap("ws://127.0.0.1:9")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", proxy.port))
    raw.settimeout(DEADLINE)
    try:
        context.wrap_socket(raw, server_hostname="localhost")
        raise AssertionError("the TLS handshake with a plain listener succeeded")
    except (ssl.SSLError, ConnectionResetError, OSError) as error:
        assert not isinstance(error, socket.timeout), "wstap kept the TLS client waiting"
    end = next(r for r in proxy.wait_ended() if r["type"] == "end")
    assert end["reason"].startswith("TLS on a plain listener") and "--listen-tls" in end["reason"]
    assert end["closed_by"] == "proxy"


def test_an_upstream_reset_reaches_the_client_as_a_reset(wstap):
    from rawpeers import frame, raw_client
    server = RawServer(reading=False)  # no thread blocked in recv(), so closing really sends the RST
    proxy = wstap(f"ws://127.0.0.1:{server.port}")
    sock, early = raw_client(proxy.port)
    assert server.connected.wait(30)
    data = frame(1, b"last words before the reset")
    server.send(data)
    abort(server.sock)
    received, how = recv_until_end(sock)
    assert early + received == data  # what the server sent before its reset still arrives
    assert how == "reset"
    end = next(r for r in proxy.wait_ended() if r["type"] == "end")
    assert end["reason"] == "server reset without a close frame; reset passed on to the client"
    assert end["closed_by"] == "server"


def test_a_client_reset_reaches_the_upstream_as_a_reset(wstap):
    from rawpeers import frame, raw_client
    server = RawServer(reading=False)
    proxy = wstap(f"ws://127.0.0.1:{server.port}")
    sock, _ = raw_client(proxy.port)
    assert server.connected.wait(30)
    sock.sendall(frame(1, b"then a reset", mask=b"\1\2\3\4"))
    proxy.wait_records(lambda r: any(x["type"] == "message" for x in r), "the message")
    abort(sock)
    received, how = recv_until_end(server.sock)
    assert how == "reset"
    end = next(r for r in proxy.wait_ended() if r["type"] == "end")
    assert end["reason"] == "client reset without a close frame; reset passed on to the server"


def test_at_the_descriptor_limit_the_proxy_backs_off_says_so_once_and_recovers(tmp_path, procs):
    from conftest import WSTAP, Proc
    from rawpeers import frame, raw_client
    server = RawServer()
    jsonl = tmp_path / "limit.jsonl"
    # A small descriptor limit, reached with a few dozen idle connections.
    proxy = Proc(["prlimit", "--nofile=64", WSTAP, "proxy", "--listen", "127.0.0.1:0", "--upstream", f"ws://127.0.0.1:{server.port}",
                  "--head-timeout", "0", "--jsonl", str(jsonl), "-q"], stream="stderr")
    procs.append(proxy)
    port = int(proxy.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(80)]  # the kernel's backlog takes the rest
    for s in held:
        s.sendall(b"GET / HTTP/1.1\r\n")
    proxy.wait_for(r"cannot accept connections: too many open files; the descriptor limit \(ulimit -n is 64\) is reached")
    for s in held:
        s.close()
    recovered = proxy.wait_for(r"accepting connections again, after (\d+) refused attempts? in ([\d.]+) s")
    # Backing off, not spinning: at most one retry per 250 ms by the proxy's own count and clock (a
    # retry loop fails tens of thousands of times a second).
    attempts, seconds = int(recovered.group(1)), float(recovered.group(2))
    assert attempts <= seconds * 4 + 2, recovered.group(0)
    assert sum(1 for line in proxy.seen if "cannot accept connections" in line) == 1
    sock, _ = raw_client(port)
    data = frame(1, b"after the limit", mask=b"\1\2\3\4")
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
    assert server.done.wait(30)
    assert server.received == data
    sock.close()
