"""Raw peers send protocol violations through wstap: the server gets exactly the bytes the client sent,
and the JSONL carries the matching diagnostic. Also half-close, backpressure and refused upgrades."""
import socket

import pytest

from conftest import messages
from rawpeers import RawServer, frame, raw_client, recv_until_closed

M = b"\x11\x22\x33\x44"

# The violations listed in issue 2 and shared/captures/gen-ws-violations.pcap, as client bytes.
CLIENT_VIOLATIONS = [
    ("rsv-without-extension", frame(1, b"rsv2 set", rsv2=True, mask=M)),
    ("rsv-without-extension", frame(1, b"rsv1 set", rsv1=True, mask=M)),
    ("reserved-opcode", frame(3, b"op3", mask=M)),
    ("reserved-opcode", frame(0xB, b"opB", mask=M)),
    ("unmasked-client-frame", frame(1, b"unmasked")),
    ("fragmented-control-frame", frame(9, b"frag ping", fin=False, mask=M)),
    ("control-frame-too-long", frame(9, b"x" * 126, mask=M)),
    ("invalid-utf8-text", frame(1, b"\xc3\x28 bad \xff", mask=M)),
    ("invalid-utf8-close-reason", frame(8, b"\x03\xe8\xff\xfe", mask=M)),
    ("continuation-without-message", frame(0, b"orphan", mask=M)),
    ("data-frame-inside-fragmented-message", frame(1, b"start,", fin=False, mask=M) + frame(1, b"new", mask=M) + frame(0, b"end", mask=M)),
    ("non-minimal-length", frame(1, b"short", mask=M, length_bits=64)),
    ("close-body-one-byte", frame(8, b"\x03", mask=M)),
    ("close-code-not-allowed", frame(8, b"\x03\xed" + b"1005 on the wire", mask=M)),
]


@pytest.mark.parametrize("code,data", CLIENT_VIOLATIONS, ids=[f"{c}-{i}" for i, (c, _) in enumerate(CLIENT_VIOLATIONS)])
def test_client_violation_is_relayed_exactly_and_flagged(wstap, code, data):
    server = RawServer()
    proxy = wstap(f"ws://127.0.0.1:{server.port}")
    sock, _ = raw_client(proxy.port)
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
    assert server.done.wait(30)
    assert server.received == data
    records = proxy.wait_records(lambda r: any(x["type"] == "diagnostic" for x in r), "a diagnostic")
    codes = {r["code"] for r in records if r["type"] == "diagnostic"}
    assert code in codes
    sock.close()


SERVER_VIOLATIONS = [
    ("masked-server-frame", frame(1, b"masked from server", mask=M)),
    ("length-msb-set", frame(2, b"", length=1 << 63)),
    ("close-code-not-allowed", frame(8, b"\x03\xee")),
]


@pytest.mark.parametrize("code,data", SERVER_VIOLATIONS, ids=[c for c, _ in SERVER_VIOLATIONS])
def test_server_violation_is_relayed_exactly_and_flagged(wstap, code, data):
    server = RawServer()
    proxy = wstap(f"ws://127.0.0.1:{server.port}")
    sock, early = raw_client(proxy.port)
    assert server.connected.wait(30)
    server.send(data)
    server.shutdown_write()
    received = early + recv_until_closed_or_half(sock)
    assert received == data
    records = proxy.wait_records(lambda r: any(x["type"] == "diagnostic" and x["code"] == code for x in r), code)
    assert any(r["type"] == "diagnostic" and r["code"] == code and r["from"] == "server" for r in records)


def recv_until_closed_or_half(sock):
    return recv_until_closed(sock)


def test_bad_accept_and_unoffered_extension_are_flagged(wstap):
    server = RawServer(extensions="permessage-deflate")
    proxy = wstap(f"ws://127.0.0.1:{server.port}")
    sock, _ = raw_client(proxy.port)  # offers no extension
    records = proxy.wait_records(lambda r: any(x["type"] == "diagnostic" for x in r), "a diagnostic")
    assert "extension-not-offered" in {r["code"] for r in records if r["type"] == "diagnostic"}
    sock.close()


def test_half_close_is_relayed_and_the_other_direction_keeps_flowing(wstap):
    server = RawServer()
    proxy = wstap(f"ws://127.0.0.1:{server.port}")
    sock, _ = raw_client(proxy.port)
    hello = frame(1, b"last words", mask=M)
    sock.sendall(hello)
    sock.shutdown(socket.SHUT_WR)  # client half-closes
    assert server.done.wait(30)  # the server saw EOF after exactly the client's bytes
    assert server.received == hello
    reply = frame(1, b"still talking after your FIN") + frame(8, b"\x03\xe8")
    server.send(reply)
    server.shutdown_write()
    assert recv_until_closed(sock) == reply
    records = proxy.wait_ended()
    texts = [(m["from"], m.get("text")) for m in messages(records) if m["opcode"] == 1]
    assert texts == [("client", "last words"), ("server", "still talking after your FIN")]
    end = [r for r in records if r["type"] == "end"][0]
    assert end["closed_by"] == "server"  # the server's close frame came first
    assert "close frame from server" in end["reason"]


def test_client_fin_without_close_frame_is_reported(wstap):
    server = RawServer()
    proxy = wstap(f"ws://127.0.0.1:{server.port}")
    sock, _ = raw_client(proxy.port)
    sock.shutdown(socket.SHUT_WR)
    assert server.done.wait(30)
    server.shutdown_write()
    recv_until_closed(sock)
    end = [r for r in proxy.wait_ended() if r["type"] == "end"][0]
    assert end["closed_by"] == "client"
    assert "fin without a close frame" in end["reason"]


def test_slow_reader_slows_the_writer(wstap):
    """The server does not read: the client must be stopped by backpressure long before 256 MiB."""
    server = RawServer(reading=False)
    proxy = wstap(f"ws://127.0.0.1:{server.port}")
    sock, _ = raw_client(proxy.port)
    assert server.connected.wait(30)
    # One binary frame announced as 256 MiB, masked with a zero key so payload bytes are plain zeros.
    total = 256 * 1024 * 1024
    sock.sendall(frame(2, b"", length=total, mask=b"\0\0\0\0"))
    sock.setblocking(False)
    chunk = bytes(1024 * 1024)
    accepted = 0
    import select
    while accepted < total:
        # Stop once the socket stays unwritable: then the pipeline is full end to end.
        _, writable, _ = select.select([], [sock], [], 2.0)
        if not writable:
            break
        try:
            accepted += sock.send(chunk)
        except BlockingIOError:
            continue
    # Kernel buffers on two legs plus wstap's 1 MiB high-water mark: far below what was offered.
    assert accepted < 64 * 1024 * 1024, f"{accepted} bytes accepted without the server reading"
    # Once the server reads again, the stalled bytes flow: the relay was paused, not broken.
    server.may_read.set()
    sock.setblocking(True)
    sock.shutdown(socket.SHUT_WR)
    assert server.done.wait(60)
    assert len(server.received) == 10 + 4 + accepted
    sock.close()


def test_refused_upgrade_is_relayed_and_recorded(wstap):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    proxy = wstap(f"ws://127.0.0.1:{port}")
    client = socket.create_connection(("127.0.0.1", proxy.port))
    client.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    conn, _ = listener.accept()
    conn.recv(4096)
    refusal = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\nConnection: close\r\n\r\nno way"
    conn.sendall(refusal)
    conn.close()
    assert recv_until_closed(client) == refusal
    client.close()
    records = proxy.wait_ended()
    http = [r for r in records if r["type"] == "http"]
    assert http and http[0]["response"]["status"] == 403 and http[0]["upgrade"] is True
    assert "upgrade-refused" in {r["code"] for r in records if r["type"] == "diagnostic"}


def test_unreachable_upstream_gives_502_and_a_record(wstap):
    unused = socket.socket()
    unused.bind(("127.0.0.1", 0))
    port = unused.getsockname()[1]  # bound, never listening: connections are refused
    proxy = wstap(f"ws://127.0.0.1:{port}")
    client = socket.create_connection(("127.0.0.1", proxy.port))
    client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    response = recv_until_closed(client)
    assert response.startswith(b"HTTP/1.1 502 Bad Gateway")
    assert b"connection refused" in response
    end = [r for r in proxy.wait_ended() if r["type"] == "end"][0]
    assert "connection refused" in end["reason"]
    unused.close()


def test_forward_proxy_absolute_form_and_connect(wstap):
    server = RawServer()
    proxy = wstap(None)
    # Absolute-form request, as an HTTP proxy client sends it.
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    # Host without the port, as the libwebsockets client sends it: the URL takes the port from the request.
    sock.sendall(f"GET ws://127.0.0.1:{server.port}/abs?q=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    from rawpeers import read_head
    head, _ = read_head(sock)
    assert head.startswith("HTTP/1.1 101")
    assert server.request.startswith("GET /abs?q=1 HTTP/1.1")  # origin form upstream
    sock.sendall(frame(1, b"via forward proxy", mask=M))
    sock.shutdown(socket.SHUT_WR)
    assert server.done.wait(30)
    server.shutdown_write()
    recv_until_closed(sock)

    # CONNECT tunnel with a cleartext WebSocket inside: relayed and dissected.
    server2 = RawServer()
    tunnel = socket.create_connection(("127.0.0.1", proxy.port))
    tunnel.sendall(f"CONNECT 127.0.0.1:{server2.port} HTTP/1.1\r\nHost: 127.0.0.1:{server2.port}\r\n\r\n".encode())
    head, _ = read_head(tunnel)
    assert head.startswith("HTTP/1.1 200")
    tunnel.sendall(b"GET /tunnelled HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head, _ = read_head(tunnel)
    assert head.startswith("HTTP/1.1 101")
    tunnel.sendall(frame(1, b"inside CONNECT", mask=M))
    tunnel.shutdown(socket.SHUT_WR)
    assert server2.done.wait(30)
    server2.shutdown_write()
    recv_until_closed(tunnel)

    records = proxy.wait_ended(2)
    texts = sorted(m["text"] for m in messages(records, sender="client") if m["opcode"] == 1)
    assert texts == ["inside CONNECT", "via forward proxy"]
    urls = {r["url"] for r in records if r["type"] == "open"}
    # URLs name where the client asked the proxy to go (absolute-form URL, CONNECT target), not Host.
    assert urls == {f"ws://127.0.0.1:{server.port}/abs?q=1", f"ws://127.0.0.1:{server2.port}/tunnelled"}


def test_a_continuation_claiming_2_to_the_64_bytes_does_not_stop_the_proxy(wstap):
    """Found by fuzzing: the claimed lengths of a fragmented message were summed with a trapping add,
    so one hostile client could stop the proxy and every connection through it."""
    server = RawServer()
    proxy = wstap(f"ws://127.0.0.1:{server.port}")
    sock, _ = raw_client(proxy.port)
    data = frame(1, b"abc", fin=False, mask=M) + frame(0, b"", length=(1 << 64) - 1, mask=M) + b"some of it"
    sock.sendall(data)
    server.wait_received(len(data))
    assert server.received == data
    records = proxy.wait_records(lambda r: any(x["type"] == "diagnostic" and x["code"] == "length-msb-set" for x in r), "the diagnostic")
    sock.close()
    # The proxy is still there for the next client (which it refuses: bytes that are not HTTP).
    assert proxy.popen.poll() is None
    other = socket.create_connection(("127.0.0.1", proxy.port))
    other.sendall(b"\x00")
    assert recv_until_closed(other).startswith(b"HTTP/1.1 400 Bad Request")
    other.close()
