"""Request and response heads leave with the bytes they arrived with, except the changes wstap makes on
purpose (Host, absolute to origin form, Proxy-* fields, Content-Length beside chunking). A raw server and
a raw client see the exact bytes."""
import socket
import threading

from rawpeers import read_head, recv_until_closed

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


class HeadServer:
    """Accepts one connection, keeps every byte of the request head and answers with `response`."""

    def __init__(self, response):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.response = response
        self.head = None
        self.received = b""
        self.done = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        conn, _ = self.listener.accept()
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        self.head, _, self.received = data.partition(b"\r\n\r\n")
        self.head += b"\r\n\r\n"
        conn.sendall(self.response)
        conn.shutdown(socket.SHUT_WR)
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            self.received += chunk
        conn.close()
        self.done.set()


def upgrade_request(host, extra=b""):
    return (b"GET /chat?room=1 HTTP/1.1\r\nHost: " + host + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + KEY.encode() + b"\r\nSec-WebSocket-Version: 13\r\n" + extra + b"\r\n")


AWKWARD = (b"X-U: caf\xc3\xa9\r\n"               # UTF-8 in a value
           b"Cookie: a=\xff\xfe; b=2\r\n"         # bytes that are not UTF-8
           b"x-spaces:   padded value  \r\n"       # whitespace kept
           b"X-Folded: one\r\n\ttwo\r\n")           # obsolete line folding kept as sent


def test_reverse_mode_changes_only_the_host_value(wstap):
    server = HeadServer(f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\nX-Server: \xe9t\xe9\r\n\r\n".encode("latin-1"))
    proxy = wstap(f"ws://127.0.0.1:{server.port}")
    client = socket.create_connection(("127.0.0.1", proxy.port))
    client.sendall(upgrade_request(b"localhost:8080", AWKWARD))
    head, _ = read_head(client)
    client.shutdown(socket.SHUT_WR)
    assert server.done.wait(30)
    assert server.head == upgrade_request(f"127.0.0.1:{server.port}".encode(), AWKWARD)
    # The response head reaches the client byte for byte too (0xE9 is not UTF-8 on its own).
    assert head.encode("latin-1") + b"\r\n\r\n" == server.response
    recv_until_closed(client)
    records = proxy.wait_ended()
    request = next(r for r in records if r["type"] == "open")["request"]
    # Records show each byte as one character (ISO-8859-1): lossless, and the bytes can be had back.
    values = {name: value for name, value in request["headers"]}
    assert values["X-U"].encode("latin-1") == b"caf\xc3\xa9"
    assert values["Cookie"].encode("latin-1") == b"a=\xff\xfe; b=2"


def test_forward_mode_makes_origin_form_and_drops_only_proxy_fields(wstap):
    server = HeadServer(f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n".encode())
    proxy = wstap(None)
    host = f"127.0.0.1:{server.port}".encode()
    client = socket.create_connection(("127.0.0.1", proxy.port))
    request = upgrade_request(host, b"Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic eDp5\r\n" + AWKWARD)
    client.sendall(request.replace(b"GET /chat", b"GET ws://" + host + b"/chat", 1))
    head, _ = read_head(client)
    assert head.startswith("HTTP/1.1 101")
    client.shutdown(socket.SHUT_WR)
    assert server.done.wait(30)
    assert server.head == upgrade_request(host, AWKWARD)
    recv_until_closed(client)


def test_content_length_beside_chunking_is_removed_before_forwarding(wstap):
    """A request smuggling shape: the body is framed by the chunking, so Content-Length must go."""
    server = HeadServer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 50\r\nConnection: close\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    proxy = wstap(f"ws://127.0.0.1:{server.port}")
    client = socket.create_connection(("127.0.0.1", proxy.port))
    body = b"3\r\nabc\r\n0\r\n\r\n"
    client.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    client.shutdown(socket.SHUT_WR)
    response = recv_until_closed(client)
    assert server.done.wait(30)
    assert server.head == f"POST /up HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    assert server.received == body
    assert response == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    http = next(r for r in proxy.wait_ended() if r["type"] == "http")
    assert ["Content-Length", "50"] in http["response"]["headers"]  # the record shows what the server sent


def test_odd_upgrade_answers_are_relayed_as_sent_and_each_diagnosed(wstap):
    answer = f"HTTP/1.0 101 Switching Protocols\nSec-WebSocket-Accept: {ACCEPT}\n\n".encode()
    server = HeadServer(answer + b"\x81\x02hi")
    proxy = wstap(f"ws://127.0.0.1:{server.port}")
    client = socket.create_connection(("127.0.0.1", proxy.port))
    client.sendall(upgrade_request(b"x"))
    client.shutdown(socket.SHUT_WR)
    assert recv_until_closed(client) == answer + b"\x81\x02hi"
    records = proxy.wait_ended()
    codes = {r["code"] for r in records if r["type"] == "diagnostic" and r["from"] == "server"}
    assert {"missing-upgrade-header", "missing-connection-upgrade", "bad-http-version", "bare-line-feed"} <= codes


def test_an_upstream_that_does_not_speak_http_is_relayed_and_diagnosed(wstap):
    banner = b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n\x00\x00\x01\x14binary"
    server = HeadServer(banner)
    proxy = wstap(f"ws://127.0.0.1:{server.port}")
    client = socket.create_connection(("127.0.0.1", proxy.port))
    client.sendall(upgrade_request(b"x"))
    client.shutdown(socket.SHUT_WR)
    assert recv_until_closed(client) == banner
    diagnostic = next(r for r in proxy.wait_ended() if r["type"] == "diagnostic")
    assert diagnostic["code"] == "malformed-http" and diagnostic["from"] == "server"
    assert diagnostic["detail"].startswith("not HTTP: the bytes start 53")
