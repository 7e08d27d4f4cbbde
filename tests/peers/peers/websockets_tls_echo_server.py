"""TLS echo server on Python `websockets`, certificate from certs/test (signed by the test-only CA),
or the CERT and KEY files given as arguments. Prints 'ready PORT'."""
import asyncio
import ssl
import sys
from pathlib import Path

from websockets.asyncio.server import serve

CERTS = Path(__file__).resolve().parents[3] / "certs" / "test"


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def main():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert, key = (sys.argv[1], sys.argv[2]) if len(sys.argv) > 2 else (CERTS / "upstream.pem", CERTS / "upstream-key.pem")
    context.load_cert_chain(cert, key)
    async with serve(echo, "127.0.0.1", 0, ssl=context, max_size=None) as server:
        print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
        await asyncio.get_running_loop().create_future()


asyncio.run(main())
