"""A small JSON application on Python `websockets`, for replay tests. Prints 'ready PORT'.

  {"op":"login","user":U}          -> {"op":"welcome","user":U,"session":{"token":<fresh each login>}}
  {"op":"get","id":N,"token":T}    -> {"op":"price","id":N,"price":100+N,"ok":<T is the current token>,"ts":<time>}
  anything else                    -> echoed
Flags: --shout (every "op" in replies upper-cased: a server that changed), --swap (answers "get"
requests two at a time, the second first: out of order), --tls (wss with certs/test), --no-compression.
"""
import asyncio
import json
import secrets
import ssl
import sys
import time
from pathlib import Path

from websockets.asyncio.server import serve

CERTS = Path(__file__).resolve().parents[3] / "certs" / "test"


async def app(ws):
    token = None
    held = []
    async for message in ws:
        if isinstance(message, bytes):
            await ws.send(message)
            continue
        try:
            request = json.loads(message)
        except ValueError:
            await ws.send(message)
            continue
        op = request.get("op")
        if op == "login":
            token = secrets.token_hex(8)
            reply = {"op": "welcome", "user": request.get("user"), "session": {"token": token}}
        elif op == "get":
            reply = {"op": "price", "id": request.get("id"), "price": 100 + request.get("id", 0), "ok": request.get("token") == token,
                     "ts": time.time()}
        else:
            await ws.send(message)
            continue
        if "--shout" in sys.argv:
            reply["op"] = reply["op"].upper()
        if "--swap" in sys.argv and op == "get":
            held.append(reply)
            if len(held) == 2:
                for r in reversed(held):
                    await ws.send(json.dumps(r))
                held = []
            continue
        await ws.send(json.dumps(reply))


async def main():
    compression = None if "--no-compression" in sys.argv else "deflate"
    context = None
    if "--tls" in sys.argv:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(CERTS / "upstream.pem", CERTS / "upstream-key.pem")
    async with serve(app, "127.0.0.1", 0, compression=compression, ssl=context, max_size=None) as server:
        print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
        await asyncio.get_running_loop().create_future()


asyncio.run(main())
