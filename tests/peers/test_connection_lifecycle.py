"""Connections that end early, stall or misbehave: every socket is closed, every descriptor returns,
and the proxy keeps serving. Waiting is on conditions (descriptor counts, records, bytes), never on time."""
import os
import socket
import time

from conftest import DEADLINE


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
