"""A single 1 GiB message passes through wstap while its RSS stays under 64 MiB."""
import socket

import pytest

from conftest import messages
from rawpeers import RawServer, frame, raw_client, recv_until_closed

GIB = 1024 * 1024 * 1024


def peak_rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


class CountingServer(RawServer):
    """Counts received bytes instead of keeping them."""

    def _run(self):
        sock, _ = self.listener.accept()
        self.sock = sock
        from rawpeers import read_head
        import base64, hashlib
        head, rest = read_head(sock)
        key = [l.split(":", 1)[1].strip() for l in head.split("\r\n") if l.lower().startswith("sec-websocket-key:")][0]
        accept = base64.b64encode(hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()).decode()
        sock.sendall(f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n".encode())
        self.count = len(rest)
        self.connected.set()
        buf = bytearray(1 << 20)
        while True:
            n = sock.recv_into(buf)
            if n == 0:
                break
            self.count += n
        sock.close()
        self.done.set()


@pytest.mark.parametrize("opcode", [2, 1], ids=["binary", "text"])
def test_one_gib_message_with_bounded_memory(wstap, opcode):
    server = CountingServer()
    proxy = wstap(f"ws://127.0.0.1:{server.port}")
    sock, _ = raw_client(proxy.port)
    # A zero masking key keeps the payload bytes plain, so the test need not XOR a gigabyte.
    header = frame(opcode, b"", length=GIB, mask=b"\0\0\0\0")
    sock.sendall(header)
    chunk = b"a" * (4 * 1024 * 1024)
    for _ in range(GIB // len(chunk)):
        sock.sendall(chunk)
    sock.shutdown(socket.SHUT_WR)
    assert server.done.wait(600)
    assert server.count == len(header) + GIB
    recv_until_closed(sock)
    rss = peak_rss_bytes(proxy.popen.pid)
    records = proxy.wait_ended()
    big = messages(records, sender="client")
    assert big[0]["length"] == GIB and big[0]["truncated"] is True and big[0]["opcode"] == opcode
    assert not [r for r in records if r["type"] == "diagnostic"]  # 1 GiB of 'a' is valid UTF-8
    print(f"peak RSS {rss / 2**20:.1f} MiB")
    assert rss < 64 * 1024 * 1024, f"peak RSS {rss / 2**20:.1f} MiB"
    sock.close()


def test_max_payload_unlimited_keeps_whole_payloads_up_to_max_inflate(wstap, peer):
    """Recordings for replay need whole payloads: `--max-payload unlimited` keeps a 200 KB message
    whole (the default cuts it at 64 KiB), and is still bounded per message by --max-inflate."""
    import asyncio
    import base64
    from websockets.asyncio.client import connect
    from conftest import PEERS, PYTHON

    port = peer(PYTHON, str(PEERS / "websockets_echo_server.py"))
    big = bytes(range(256)) * 800  # 204,800 bytes
    results = {}
    for name, extra in {"default": [], "unlimited": ["--max-payload", "unlimited"],
                        "bounded": ["--max-payload", "unlimited", "--max-inflate", "100000"]}.items():
        proxy = wstap(f"ws://127.0.0.1:{port}", extra)

        async def run():
            async with connect(proxy.url, compression="deflate", max_size=None) as ws:
                await ws.send(big)
                assert await ws.recv() == big

        asyncio.run(run())
        results[name] = [m for m in messages(proxy.wait_ended()) if m["opcode"] == 2]
    assert all(m["truncated"] and m["length"] == len(big) for m in results["default"])
    assert all(not m.get("truncated") and base64.b64decode(m["base64"]) == big for m in results["unlimited"])
    assert all(m["truncated"] and len(base64.b64decode(m["base64"])) == 100000 for m in results["bounded"])
