"""Echo server on Python `websockets`. Args: [--no-compression] [--host ADDRESS] (default 127.0.0.1). Prints 'ready PORT'."""
import asyncio
import sys

import websockets
from websockets.asyncio.server import serve


async def echo(ws):
    try:
        async for message in ws:
            await ws.send(message)
    except websockets.ConnectionClosed:
        pass


async def main():
    compression = None if "--no-compression" in sys.argv else "deflate"
    host = sys.argv[sys.argv.index("--host") + 1] if "--host" in sys.argv else "127.0.0.1"
    async with serve(echo, host, 0, compression=compression, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"ready {port}", flush=True)
        await asyncio.get_running_loop().create_future()


asyncio.run(main())
