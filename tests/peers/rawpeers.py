"""Raw-socket WebSocket peers for sending bytes no library would send (protocol violations)."""
import base64
import hashlib
import os
import socket
import struct
import threading

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(opcode, payload=b"", fin=True, rsv1=False, rsv2=False, mask=None, length=None, length_bits=None):
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | (0x20 if rsv2 else 0) | opcode
    n = len(payload) if length is None else length
    bits = length_bits or (7 if n < 126 else 16 if n < 65536 else 64)
    mask_bit = 0x80 if mask is not None else 0
    if bits == 7:
        head = bytes([first, mask_bit | n])
    elif bits == 16:
        head = bytes([first, mask_bit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([first, mask_bit | 127]) + struct.pack("!Q", n)
    if mask is not None:
        head += mask
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + payload


def read_head(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed during handshake after {data!r}")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    return head.decode("latin-1"), rest


class RawServer:
    """Accepts one connection, answers the upgrade correctly, then records every byte it receives and
    sends whatever the test queues. `received` is complete once `done` is set (client closed)."""

    def __init__(self, extensions=None, reading=True):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.extensions = extensions
        self.received = b""
        self.request = None
        self.done = threading.Event()
        self.connected = threading.Event()
        self.sock = None
        self.may_read = threading.Event()
        if reading:
            self.may_read.set()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        sock, _ = self.listener.accept()
        self.sock = sock
        head, rest = read_head(sock)
        self.request = head
        key = [l.split(":", 1)[1].strip() for l in head.split("\r\n") if l.lower().startswith("sec-websocket-key:")][0]
        accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
        response = f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
        if self.extensions:
            response += f"Sec-WebSocket-Extensions: {self.extensions}\r\n"
        sock.sendall((response + "\r\n").encode())
        self.received = rest
        self.connected.set()
        self.may_read.wait()
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            self.received += chunk
        self.done.set()

    def send(self, data):
        self.sock.sendall(data)

    def wait_received(self, count, timeout=30):
        """Waits until at least `count` bytes arrived after the handshake (the server has seen them)."""
        import time
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"server got {len(self.received)} of {count} bytes"
            time.sleep(0.005)  # polling a condition; the assertion is on content

    def shutdown_write(self):
        self.sock.shutdown(socket.SHUT_WR)


def raw_client(port, extensions=None, path="/raw"):
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    if extensions:
        request += f"Sec-WebSocket-Extensions: {extensions}\r\n"
    sock.sendall((request + "\r\n").encode())
    head, rest = read_head(sock)
    assert head.startswith("HTTP/1.1 101"), head
    return sock, rest


def recv_until_closed(sock):
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def abort(sock):
    """Closes with RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def recv_until_end(sock):
    """Bytes received, and how the stream ended: 'fin' or 'reset'."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data, "reset"
        if not chunk:
            return data, "fin"
        data += chunk
