"""python-socketio through the forward proxy: HTTP long-polling first, then the upgrade to WebSocket.
The client reaches the proxy through aiohttp's own proxy support (HTTP_PROXY/WS_PROXY, trust_env)."""
import asyncio
import os

import aiohttp
import socketio

from conftest import PEERS, PYTHON, messages


def test_socketio_polling_then_websocket_through_the_forward_proxy(wstap, peer, monkeypatch, tmp_path):
    port = peer(PYTHON, str(PEERS / "socketio_server.py"))
    proxy = wstap(None, ["--ca-dir", str(tmp_path / "ca")])
    # aiohttp picks the proxy by URL scheme: http:// for polling, ws:// for the upgrade.
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("WS_PROXY", f"http://127.0.0.1:{proxy.port}")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)

    async def run():
        async with aiohttp.ClientSession(trust_env=True) as session:
            client = socketio.AsyncClient(http_session=session)
            await client.connect(f"http://127.0.0.1:{port}", transports=["polling", "websocket"])
            # Wait until Engine.IO has upgraded from polling to WebSocket.
            for _ in range(200):
                if client.transport() == "websocket":
                    break
                await asyncio.sleep(0.05)
            transport = client.transport()
            reply = await client.call("echo", {"n": 1, "text": "via socket.io"})
            await client.disconnect()
            return transport, reply

    transport, reply = asyncio.run(run())
    assert transport == "websocket"
    assert reply == {"echoed": {"n": 1, "text": "via socket.io"}}

    records = proxy.wait_records(lambda r: any(x["type"] == "end" for x in r if any(o["type"] == "open" and o["conn"] == x["conn"] for o in r)),
                                 "the websocket connection to end")
    polling = [r for r in records if r["type"] == "http" and "transport=polling" in (r["url"] or "")]
    assert polling and all(r["response"]["status"] == 200 for r in polling)
    opens = [r for r in records if r["type"] == "open"]
    assert len(opens) == 1 and "transport=websocket" in opens[0]["url"]
    texts = [m["text"] for m in messages(records, conn=opens[0]["conn"]) if m["opcode"] == 1]
    assert "2probe" in texts and "3probe" in texts  # the Engine.IO upgrade handshake, seen on the WebSocket
    assert any('"via socket.io"' in t for t in texts)
