"""Python `websockets` client and server through wstap: messages arrive intact both ways, and the JSONL
records match what was sent, frame by frame and message by message."""
import asyncio
import random
import string

import pytest
import websockets
from websockets.asyncio.client import connect

from conftest import PEERS, PYTHON, messages, payload_bytes

CAP = 64 * 1024
SIZES = [("text", 0), ("text", 125), ("text", 126), ("text", 70000), ("binary", 0), ("binary", 125),
         ("binary", 126), ("binary", 65536), ("binary", 5 * 1024 * 1024)]


def make_payload(kind, size):
    rng = random.Random(size)
    if kind == "text":
        return "".join(rng.choices(string.ascii_letters + "é€ ", k=size))[:size]
    return rng.randbytes(size)


async def conversation(url, compression):
    sent = []
    async with connect(url, compression=compression, max_size=None) as ws:
        for kind, size in SIZES:
            payload = make_payload(kind, size)
            await ws.send(payload)
            echo = await ws.recv()
            assert echo == payload, f"{kind} {size} echo differs"
            sent.append(payload)
        await ws.send(["frag-a ", "frag-b ", "frag-c"])
        assert await ws.recv() == "frag-a frag-b frag-c"
        pong = await ws.ping(b"ping-data")
        await pong
        await ws.close(code=4001, reason="bye now")
    return sent


@pytest.mark.parametrize("compression", ["deflate", None], ids=["deflate", "plain"])
def test_messages_both_ways_and_records(wstap, peer, compression):
    server_args = [PYTHON, str(PEERS / "websockets_echo_server.py")]
    if compression is None:
        server_args.append("--no-compression")
    port = peer(*server_args)
    proxy = wstap(f"ws://127.0.0.1:{port}")

    sent = asyncio.run(conversation(proxy.url + "/echo?room=1", compression))
    records = proxy.wait_ended()

    opens = [r for r in records if r["type"] == "open"]
    assert len(opens) == 1
    assert opens[0]["url"] == f"ws://127.0.0.1:{port}/echo?room=1"
    assert opens[0]["response"]["status"] == 101
    assert (opens[0]["extensions"] is not None) == (compression is not None)
    errors = [r for r in records if r["type"] == "diagnostic" and r["severity"] == "error"]
    assert errors == []

    for sender in ("client", "server"):
        data = [m for m in messages(records, sender=sender) if m["opcode"] in (1, 2)]
        assert len(data) == len(SIZES) + 1
        for record, (kind, size), payload in zip(data, SIZES, sent):
            assert record["opcode"] == (1 if kind == "text" else 2)
            raw = payload.encode() if kind == "text" else payload
            assert record["length"] == len(raw)
            assert record.get("truncated", False) == (len(raw) > CAP)
            assert payload_bytes(record) == raw[: len(payload_bytes(record))]
            assert len(payload_bytes(record)) >= min(len(raw), CAP) - 3  # text cut at a character boundary
        fragmented = data[-1]
        assert fragmented["text"] == "frag-a frag-b frag-c"
        if sender == "client":
            # websockets ends a fragmented message with a separate final frame (empty when uncompressed).
            assert fragmented["frames"] == 4
        compressed = [m["compressed"] for m in data]
        assert any(compressed) == (compression is not None)

    pings = [m for m in messages(records) if m["opcode"] == 9]
    pongs = [m for m in messages(records) if m["opcode"] == 10]
    assert [(p["from"], payload_bytes(p)) for p in pings] == [("client", b"ping-data")]
    assert [(p["from"], payload_bytes(p)) for p in pongs] == [("server", b"ping-data")]

    closes = [m for m in messages(records) if m["opcode"] == 8]
    assert [(c["from"], c["code"], c["reason"]) for c in closes] == [("client", 4001, "bye now"), ("server", 4001, "bye now")]

    frames = [r for r in records if r["type"] == "frame"]
    assert all(f["masked"] == (f["from"] == "client") for f in frames)
    client_frames = [f for f in frames if f["from"] == "client"][len(SIZES):len(SIZES) + 4]
    assert [(f["fin"], f["opcode"]) for f in client_frames] == [(False, 1), (False, 0), (False, 0), (True, 0)]
    if compression is None:
        assert client_frames[-1]["length"] == 0  # the empty final fragment tshark 4.0 ignores
    big = [f for f in frames if f["length"] == 5 * 1024 * 1024 or (compression and f["length"] > 4 * 1024 * 1024)]
    assert all(f["length_bits"] == 64 for f in big)

    end = [r for r in records if r["type"] == "end"][0]
    assert end["closed_by"] == "client"
    assert end["client_bytes"] > 0 and end["server_bytes"] > 0


def test_many_connections_get_their_own_ids(wstap, peer):
    port = peer(PYTHON, str(PEERS / "websockets_echo_server.py"))
    proxy = wstap(f"ws://127.0.0.1:{port}")

    async def one(i):
        async with connect(proxy.url + f"/c{i}") as ws:
            await ws.send(f"hello {i}")
            assert await ws.recv() == f"hello {i}"

    async def all_of_them():
        await asyncio.gather(*(one(i) for i in range(20)))

    asyncio.run(all_of_them())
    records = proxy.wait_ended(20)
    by_conn = {}
    for m in messages(records, sender="client"):
        if m["opcode"] != 1:
            continue
        by_conn.setdefault(m["conn"], []).append(m["text"])
    assert len(by_conn) == 20
    opens = {r["conn"]: r["url"] for r in records if r["type"] == "open"}
    for conn, texts in by_conn.items():
        i = opens[conn].rsplit("/c", 1)[1]
        assert texts == [f"hello {i}"]
