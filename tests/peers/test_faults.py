"""Faults over real sockets: peers that reset, vanish, stop reading or half-close at awkward moments,
and TLS handshakes that fail on either leg. Each is relayed as it happened, recorded as it happened,
and leaves nothing behind. Waiting is on bytes, records or socket states, never on time."""
import select
import socket
import ssl
import struct
import time

from conftest import DEADLINE, messages
from rawpeers import RawServer, abort, frame, raw_client, read_head, recv_until_closed, recv_until_end

M = b"\x0a\x0b\x0c\x0d"
UPGRADE = (b"GET /f HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def upgrade_to_a_raw_listener(wstap, scheme="ws"):
    """A proxy whose upstream is a bare listening socket: the client has sent its upgrade and the
    upstream has accepted; what each does next is up to the test."""
    listener = socket.create_server(("127.0.0.1", 0))
    proxy = wstap(f"{scheme}://{'localhost' if scheme == 'wss' else '127.0.0.1'}:{listener.getsockname()[1]}")
    client = socket.create_connection(("127.0.0.1", proxy.port))
    client.sendall(UPGRADE)
    upstream, _ = listener.accept()
    listener.close()
    return proxy, client, upstream


def the_end(proxy):
    return next(r for r in proxy.wait_ended() if r["type"] == "end")


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_an_upstream_reset_mid_message(wstap):
    server = RawServer(reading=False)
    proxy = wstap(f"ws://127.0.0.1:{server.port}")
    sock, early = raw_client(proxy.port)
    assert server.connected.wait(30)
    partial = frame(2, bytes(1000))[:300]  # a 1000-byte frame, cut after 296 payload bytes
    server.send(partial)
    proxy.wait_records(lambda r: any(x["type"] == "frame" for x in r), "the frame header")
    abort(server.sock)
    received, how = recv_until_end(sock)
    assert (early + received, how) == (partial, "reset")
    records = proxy.wait_ended()
    assert "truncated-frame" in {r["code"] for r in records if r["type"] == "diagnostic" and r["from"] == "server"}
    assert the_end(proxy)["reason"] == "server reset without a close frame; reset passed on to the client"


def test_an_upstream_that_resets_inside_its_handshake_answer(wstap):
    proxy, client, upstream = upgrade_to_a_raw_listener(wstap)
    read_head(upstream)
    upstream.sendall(b"HTTP/1.1 101 Switching Pro")  # half a status line, then RST
    abort(upstream)
    received, how = recv_until_end(client)
    # The half line was held to read the whole head; it still reaches the client before the reset.
    assert (received, how) == (b"HTTP/1.1 101 Switching Pro", "reset")
    assert the_end(proxy)["reason"] == "server reset; reset passed on to the client"


def test_a_client_that_vanishes_mid_handshake(wstap):
    listener = socket.create_server(("127.0.0.1", 0))
    proxy = wstap(f"ws://127.0.0.1:{listener.getsockname()[1]}")
    # Half a request head, then a reset: the upstream is never contacted.
    half = socket.create_connection(("127.0.0.1", proxy.port))
    half.sendall(UPGRADE[:40])
    abort(half)
    assert the_end(proxy)["reason"] == "client reset the connection before sending a request"
    # A whole request forwarded, then a reset before the answer: the upstream gets the reset.
    client = socket.create_connection(("127.0.0.1", proxy.port))
    client.sendall(UPGRADE)
    upstream, _ = listener.accept()
    read_head(upstream)
    abort(client)
    _, how = recv_until_end(upstream)
    assert how == "reset"
    ends = [r for r in proxy.wait_ended(2) if r["type"] == "end"]
    assert ends[1]["reason"] == "client reset; reset passed on to the server"


def test_a_client_that_vanishes_mid_message(wstap):
    server = RawServer()
    proxy = wstap(f"ws://127.0.0.1:{server.port}")
    sock, _ = raw_client(proxy.port)
    partial = frame(1, b"x" * 500, mask=M)[:200]
    sock.sendall(partial)
    sock.close()  # FIN in the middle of a frame
    assert server.done.wait(30)
    assert server.received == partial
    server.shutdown_write()
    records = proxy.wait_ended()
    assert "truncated-frame" in {r["code"] for r in records if r["type"] == "diagnostic" and r["from"] == "client"}
    assert the_end(proxy)["reason"].startswith("client fin")


def test_a_client_that_does_not_read_slows_the_server_and_memory_stays_flat(wstap):
    """The server pushes 256 MiB to a client that reads nothing: backpressure, not buffering."""
    server = RawServer()
    proxy = wstap(f"ws://127.0.0.1:{server.port}")
    sock, early = raw_client(proxy.port)
    assert server.connected.wait(30)
    total = 256 * 1024 * 1024
    server.sock.sendall(frame(2, b"", length=total)[:10])
    server.sock.setblocking(False)
    chunk = bytes(1 << 20)
    sent = 0
    while sent < total:
        _, writable, _ = select.select([], [server.sock], [], 2.0)
        if not writable:
            break  # the pipeline is full end to end
        try:
            sent += server.sock.send(chunk[: total - sent])
        except BlockingIOError:
            continue
    assert sent < 64 * 1024 * 1024, f"{sent} bytes taken while the client read nothing"
    assert rss(proxy.popen.pid) < 128 * 1024 * 1024
    # Reading again, the client gets every byte: the relay was paused, not broken.
    server.sock.setblocking(True)
    received = len(early) - 10
    sock.settimeout(DEADLINE)
    while received < sent:
        received += len(sock.recv(1 << 20))
    assert received == sent
    sock.close()


def test_the_server_half_closes_first_and_the_client_keeps_talking(wstap):
    server = RawServer()
    proxy = wstap(f"ws://127.0.0.1:{server.port}")
    sock, early = raw_client(proxy.port)
    assert server.connected.wait(30)
    last = frame(1, b"the server is done sending")
    server.send(last)
    server.shutdown_write()
    received = early
    while len(received) < len(last):
        received += sock.recv(4096)
    assert sock.recv(4096) == b""  # the server's FIN reached the client
    more = frame(1, b"the client still writes", mask=M) + frame(8, b"\x03\xe8", mask=M)
    sock.sendall(more)
    sock.shutdown(socket.SHUT_WR)
    assert server.done.wait(30)
    assert server.received == more
    texts = [(m["from"], m.get("text")) for m in messages(proxy.wait_ended()) if m["opcode"] == 1]
    assert texts == [("server", "the server is done sending"), ("client", "the client still writes")]
    assert the_end(proxy)["reason"] == "close frame from client, then server fin"


def test_a_client_that_does_not_trust_the_ca_is_recorded_with_what_to_do(wstap, tmp_path):
    proxy = wstap("wss://localhost:9", ["--listen-tls", "--ca-dir", str(tmp_path / "ca")])
    context = ssl.create_default_context()  # system roots only: wstap's CA is not trusted
    raw = socket.create_connection(("127.0.0.1", proxy.port))
    try:
        context.wrap_socket(raw, server_hostname="localhost")
        raise AssertionError("the handshake succeeded without trusting wstap's CA")
    except ssl.SSLCertVerificationError:
        pass
    end = the_end(proxy)
    # TLS 1.3 clients abort without an alert BoringSSL can read; TLS 1.2 ones say UNKNOWN_CA.
    assert end["reason"].startswith("the TLS handshake with the client failed: ")
    assert end["reason"].endswith("most likely the client does not trust wstap's certificate: make it trust wstap's CA (wstap ca, certs/README.md)")
    assert end["closed_by"] == "client"


def test_an_upstream_that_does_not_speak_tls_gets_the_client_a_502(wstap):
    proxy, client, upstream = upgrade_to_a_raw_listener(wstap, "wss")
    hello = upstream.recv(4096)
    assert hello[:1] == b"\x16"  # wstap started TLS
    upstream.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")  # a plain HTTP server answers
    response = recv_until_closed(client)
    assert response.startswith(b"HTTP/1.1 502 Bad Gateway")
    assert b"TLS handshake failed" in response
    upstream.close()


def test_an_error_answer_reaches_a_client_that_is_still_sending(wstap):
    """wstap answers 431 while the client's head keeps coming: the answer must not be lost to a reset
    (closing with unread bytes makes the kernel reset), and a client that never stops is still closed."""
    proxy = wstap("ws://127.0.0.1:9", ["--max-head-size", "1024"])
    client = socket.create_connection(("127.0.0.1", proxy.port))
    client.setblocking(False)
    received, ended = b"", False
    closed_by_proxy = False
    chunk = b"GET / HTTP/1.1\r\nCookie: " + b"a" * 4096
    deadline = time.monotonic() + DEADLINE
    while not closed_by_proxy:
        assert time.monotonic() < deadline, "wstap never closed a client that kept sending"
        readable, writable, _ = select.select([client], [client], [], 1.0)
        if readable and not ended:
            try:
                data = client.recv(65536)
            except ConnectionResetError:
                break
            received += data
            ended = data == b""
        if writable:
            try:
                client.send(chunk)
            except (BrokenPipeError, ConnectionResetError):
                closed_by_proxy = True
            except BlockingIOError:
                pass
    assert received.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert ended, "the answer was cut by a reset before its end"
    client.close()
    assert the_end(proxy)["reason"] == "the request head is larger than 1024 bytes (--max-head-size)"
