"""aiohttp, websocket-client and Node ws through wstap, in different pairings."""
import asyncio
import json

import aiohttp
import websocket  # websocket-client

from conftest import NODE_ENV, PEERS, PYTHON, Proc, messages, payload_bytes


def test_aiohttp_client_and_server(wstap, peer):
    port = peer(PYTHON, str(PEERS / "aiohttp_echo_server.py"))
    proxy = wstap(f"ws://127.0.0.1:{port}")

    async def run():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(proxy.url + "/aio", compress=15) as ws:
                await ws.send_str("aiohttp text")
                assert (await ws.receive()).data == "aiohttp text"
                await ws.send_bytes(b"\x00\xff" * 1000)
                assert (await ws.receive()).data == b"\x00\xff" * 1000
                await ws.close(code=1000, message=b"aio bye")

    asyncio.run(run())
    records = proxy.wait_ended()
    client = [m for m in messages(records, sender="client") if m["opcode"] in (1, 2)]
    assert [payload_bytes(m) for m in client] == [b"aiohttp text", b"\x00\xff" * 1000]
    assert all(m["compressed"] for m in client)
    closes = [(m["from"], m["code"], m["reason"]) for m in messages(records) if m["opcode"] == 8]
    assert closes[0] == ("client", 1000, "aio bye")


def test_websocket_client_to_node_ws_server(wstap, peer):
    port = peer("node", str(PEERS / "node_ws_echo_server.js"), env=NODE_ENV)
    proxy = wstap(f"ws://127.0.0.1:{port}")
    ws = websocket.create_connection(proxy.url + "/sync")
    ws.send("from websocket-client")
    assert ws.recv() == "from websocket-client"
    ws.send_binary(bytes(range(256)))
    assert ws.recv() == bytes(range(256))
    ws.ping(b"wc-ping")
    ws.close(status=1001, reason=b"going")
    records = proxy.wait_ended()
    texts = [(m["from"], payload_bytes(m)) for m in messages(records) if m["opcode"] in (1, 2)]
    assert texts == [("client", b"from websocket-client"), ("server", b"from websocket-client"),
                     ("client", bytes(range(256))), ("server", bytes(range(256)))]
    pings = [payload_bytes(m) for m in messages(records, sender="client") if m["opcode"] == 9]
    assert pings == [b"wc-ping"]
    assert [m["code"] for m in messages(records, sender="client") if m["opcode"] == 8] == [1001]


def test_node_ws_client_to_websockets_server_with_deflate(wstap, peer, procs):
    port = peer(PYTHON, str(PEERS / "websockets_echo_server.py"))
    proxy = wstap(f"ws://127.0.0.1:{port}")
    client = Proc(["node", str(PEERS / "node_ws_client.js"), proxy.url + "/node", "node one", "node two"], env=NODE_ENV)
    procs.append(client)
    client.wait_for(r'"closed":1000')
    echoes = [json.loads(line.split(": ", 1)[1]) for line in client.seen if line.startswith("stdout: {\"binary")]
    assert sorted(e["data"] for e in echoes) == ["node one", "node one", "node two", "node two"]
    records = proxy.wait_ended()
    sent = [(m["opcode"], payload_bytes(m), m["compressed"]) for m in messages(records, sender="client") if m["opcode"] in (1, 2)]
    assert sent == [(1, b"node one", True), (2, b"node one", True), (1, b"node two", True), (2, b"node two", True)]
    assert [r for r in records if r["type"] == "diagnostic" and r["severity"] == "error"] == []


def test_websocket_client_through_forward_proxy_with_connect(wstap, peer):
    """websocket-client's own HTTP proxy support (CONNECT tunnel) against Node ws, wstap in forward mode."""
    port = peer("node", str(PEERS / "node_ws_echo_server.js"), env=NODE_ENV)
    proxy = wstap(None)
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/fwd", http_proxy_host="127.0.0.1",
                                     http_proxy_port=proxy.port, proxy_type="http")
    ws.send("through CONNECT")
    assert ws.recv() == "through CONNECT"
    ws.close()
    records = proxy.wait_ended()
    opens = [r for r in records if r["type"] == "open"]
    assert len(opens) == 1 and opens[0]["url"].endswith(f":{port}/fwd")
    assert opens[0]["server"] == f"127.0.0.1:{port}"
    texts = [(m["from"], payload_bytes(m)) for m in messages(records) if m["opcode"] == 1]
    assert texts == [("client", b"through CONNECT"), ("server", b"through CONNECT")]
