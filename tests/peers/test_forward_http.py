"""Plain HTTP through the forward proxy on one kept-alive client connection, to two different servers
(Python's http.server, HTTP/1.1): each request reaches its own host in origin form, bodies intact."""
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def _reply(self, body):
        data = f"{self.server.name} {self.command} {self.path} {body}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.server.seen.append((self.command, self.path, self.headers.get("Proxy-Connection")))
        self._reply("")

    def do_POST(self):
        body = b""
        if self.headers.get("Transfer-Encoding") == "chunked":
            while True:
                size = int(self.rfile.readline().strip(), 16)
                chunk = self.rfile.read(size + 2)[:-2]  # data and its CRLF; for size 0, the final CRLF
                if size == 0:
                    break
                body += chunk
        self.server.seen.append((self.command, self.path, None))
        self._reply(body.decode())

    def log_message(self, *args):
        pass


def server(name):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    httpd.name, httpd.seen = name, []
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def read_response(sock, buffer):
    while b"\r\n\r\n" not in buffer:
        buffer += sock.recv(65536)
    head, rest = buffer.split(b"\r\n\r\n", 1)
    length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
    while len(rest) < length:
        rest += sock.recv(65536)
    return head, rest[:length], rest[length:]


def test_one_client_connection_many_hosts(wstap, tmp_path):
    a, b = server("A"), server("B")
    proxy = wstap(None, ["--ca-dir", str(tmp_path / "ca")])
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    pa, pb = a.server_address[1], b.server_address[1]
    requests = [
        f"GET http://127.0.0.1:{pa}/one HTTP/1.1\r\nHost: 127.0.0.1:{pa}\r\nProxy-Connection: keep-alive\r\n\r\n",
        f"POST http://127.0.0.1:{pa}/upload HTTP/1.1\r\nHost: 127.0.0.1:{pa}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        f"GET http://127.0.0.1:{pb}/two HTTP/1.1\r\nHost: 127.0.0.1:{pb}\r\n\r\n",
        f"GET http://127.0.0.1:{pa}/three HTTP/1.1\r\nHost: 127.0.0.1:{pa}\r\n\r\n",
    ]
    bodies, buffer = [], b""
    for request in requests:  # sequential on one connection, as a browser reuses a proxy connection
        sock.sendall(request.encode())
        head, body, buffer = read_response(sock, buffer)
        assert head.startswith(b"HTTP/1.1 200")
        bodies.append(body.decode())
    assert bodies == ["A GET /one ", "A POST /upload hello world", "B GET /two ", "A GET /three "]
    assert a.seen == [("GET", "/one", None), ("POST", "/upload", None), ("GET", "/three", None)]  # origin form, no Proxy-Connection
    assert b.seen == [("GET", "/two", None)]
    sock.close()
    records = proxy.wait_ended()
    http = [(r["request"]["method"], r["url"], r["response_body_bytes"]) for r in records if r["type"] == "http"]
    sizes = [len(body.encode()) for body in bodies]
    assert http == [("GET", f"http://127.0.0.1:{pa}/one", sizes[0]), ("POST", f"http://127.0.0.1:{pa}/upload", sizes[1]),
                    ("GET", f"http://127.0.0.1:{pb}/two", sizes[2]), ("GET", f"http://127.0.0.1:{pa}/three", sizes[3])]
    a.shutdown()
    b.shutdown()
