#!/usr/bin/env python3
"""Writes the two captures the read benchmark uses (classic pcap, Ethernet, 1,448-byte TCP segments):

    python3 scripts/bench/make_captures.py OUT_DIR [--megabytes 100] [--seed 1]

mixed.pcap   many concurrent connections: upgrades, small JSON-like text, binary of 1–64 KiB, 256 KiB
             messages, fragmented messages, ping/pong, closes; client frames masked.
deflate.pcap the same shape with permessage-deflate (context takeover, both directions compressed),
             binary payloads being JSON-like records (about 4:1) instead of random bytes.

Packets are synthesised rather than recorded because tcpdump drops packets at this rate and the result
must be the same on every machine. Everything is valid: tshark and wstap both dissect all of it.
"""
import argparse
import base64
import hashlib
import os
import random
import struct
import zlib
from pathlib import Path

MSS = 1448
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WORDS = ("price quote order trade symbol bid ask volume user session token update delta snapshot channel "
         "subscribe heartbeat level book market limit status filled cancelled pending account").split()


class PcapWriter:
    def __init__(self, path):
        self.file = open(path, "wb")
        self.file.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        self.time_us = 1_700_000_000 * 1_000_000
        self.bytes = 24

    def packet(self, frame):
        self.time_us += 37
        self.file.write(struct.pack("<IIII", self.time_us // 1_000_000, self.time_us % 1_000_000, len(frame), len(frame)))
        self.file.write(frame)
        self.bytes += 16 + len(frame)

    def close(self):
        self.file.close()


class TCPConnection:
    """Both directions of one connection; `send` cuts data into MSS segments with correct seq/ack."""

    def __init__(self, writer, index):
        self.writer = writer
        self.client = (bytes([10, 1, index // 250, index % 250 + 1]), 40000 + index % 20000)
        self.server = (bytes([10, 2, 0, 1]), 8080)
        self.seq = {"c": random.getrandbits(32), "s": random.getrandbits(32)}
        self.segment("c", b"", 0x02)
        self.seq["c"] += 1
        self.segment("s", b"", 0x12)
        self.seq["s"] += 1
        self.segment("c", b"", 0x10)

    def segment(self, side, payload, flags=0x18):
        src, dst = (self.client, self.server) if side == "c" else (self.server, self.client)
        other = "s" if side == "c" else "c"
        tcp = struct.pack("!HHIIBBHHH", src[1], dst[1], self.seq[side] & 0xFFFFFFFF, self.seq[other] & 0xFFFFFFFF,
                          5 << 4, flags, 65535, 0, 0)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 0, 0x4000, 64, 6, 0, src[0], dst[0])
        ether = b"\x00\x00\x00\x00\x00\x02" + b"\x00\x00\x00\x00\x00\x01" + b"\x08\x00"
        self.writer.packet(ether + ip + tcp + payload)

    def send(self, side, data):
        for start in range(0, len(data), MSS):
            chunk = data[start:start + MSS]
            self.segment(side, chunk)
            self.seq[side] += len(chunk)

    def close(self):
        self.segment("c", b"", 0x11)
        self.seq["c"] += 1
        self.segment("s", b"", 0x11)
        self.seq["s"] += 1
        self.segment("c", b"", 0x10)


def frame(opcode, payload, masked, fin=True, rsv1=False):
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", first, (0x80 if masked else 0) | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, (0x80 if masked else 0) | 126, n)
    else:
        header = struct.pack("!BBQ", first, (0x80 if masked else 0) | 127, n)
    if not masked:
        return header + payload
    key = random.getrandbits(32).to_bytes(4, "big")
    stream = (key * (n // 4 + 1))[:n]
    masked_payload = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big") if n else b""
    return header + key + masked_payload


class Session:
    """One WebSocket session on a TCP connection, optionally with permessage-deflate."""

    def __init__(self, writer, index, deflate):
        self.tcp = TCPConnection(writer, index)
        self.deflate = deflate
        self.compressors = {side: zlib.compressobj(6, zlib.DEFLATED, -15) for side in "cs"}
        key = base64.b64encode(random.getrandbits(128).to_bytes(16, "big"))
        extension = b"Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else b""
        self.tcp.send("c", b"GET /feed/%d HTTP/1.1\r\nHost: 10.2.0.1:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n" % (index, key, extension))
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        self.tcp.send("s", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Accept: %s\r\n%s\r\n" % (accept, extension))

    def message(self, side, opcode, payload, fragments=1):
        masked = side == "c"
        rsv1 = False
        if self.deflate:
            compressor = self.compressors[side]
            payload = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
            payload = payload[:-4]  # RFC 7692 §7.2.1: drop the 00 00 FF FF tail
            rsv1 = True
        step = max(1, len(payload) // fragments)
        pieces = [payload[i:i + step] for i in range(0, len(payload), step)] or [b""]
        wire = b""
        for number, piece in enumerate(pieces):
            wire += frame(opcode if number == 0 else 0, piece, masked, fin=number == len(pieces) - 1, rsv1=rsv1 and number == 0)
        self.tcp.send(side, wire)

    def control(self, side, opcode, payload):
        self.tcp.send(side, frame(opcode, payload, side == "c"))

    def close(self):
        self.control("c", 8, struct.pack("!H", 1000) + b"done")
        self.control("s", 8, struct.pack("!H", 1000) + b"done")
        self.tcp.close()


def json_text(rng):
    items = ", ".join(f'"{rng.choice(WORDS)}": {rng.randint(0, 99999)}' for _ in range(rng.randint(3, 12)))
    return ("{" + items + "}").encode()


def binary(rng, size, deflate, pool):
    # Deflate sessions carry what they carry in practice: serialised records, here JSON snippets drawn
    # from a pool larger than the 32 KiB window (about 4:1 compressed). The mixed capture carries random bytes.
    if deflate:
        out = bytearray()
        while len(out) < size:
            out += rng.choice(pool)
        return bytes(out[:size])
    return rng.randbytes(size)


def write_capture(path, megabytes, deflate, seed):
    rng = random.Random(seed)
    random.seed(seed)
    writer = PcapWriter(path)
    target = megabytes * 1_000_000
    active, next_index = [], 0
    pool = [json_text(rng) for _ in range(5000)]
    while writer.bytes < target:
        while len(active) < 24:
            active.append(Session(writer, next_index, deflate))
            next_index += 1
        session = rng.choice(active)
        roll = rng.random()
        if roll < 0.60:
            session.message("c", 1, json_text(rng))
            session.message("s", 1, json_text(rng))
        elif roll < 0.85:
            size = rng.randint(1024, 65536)
            session.message("s", 2, binary(rng, size, deflate, pool))
        elif roll < 0.90:
            session.message("s", 2, binary(rng, 262144, deflate, pool))
        elif roll < 0.95:
            session.message(rng.choice("cs"), 1, b" ".join(json_text(rng) for _ in range(40)), fragments=4)
        elif roll < 0.99:
            session.control("c", 9, b"ping")
            session.control("s", 10, b"ping")
        else:
            session.close()
            active.remove(session)
    for session in active:
        session.close()
    writer.close()
    return writer.bytes, next_index


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    opts = parser.parse_args()
    opts.out.mkdir(parents=True, exist_ok=True)
    for name, deflate in (("mixed.pcap", False), ("deflate.pcap", True)):
        size, sessions = write_capture(opts.out / name, opts.megabytes, deflate, opts.seed)
        print(f"{opts.out / name}: {size / 1e6:.1f} MB, {sessions} WebSocket sessions")


if __name__ == "__main__":
    main()
