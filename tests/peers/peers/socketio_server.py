"""python-socketio server on aiohttp: answers 'echo' events. Prints 'ready PORT'."""
import asyncio

import socketio
from aiohttp import web

# Any origin: behind wstap's reverse mode the Host is the server's while the client's Origin names
# the proxy, which python-socketio's same-origin default refuses with a 400.
sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*")


@sio.on("echo")
async def echo(sid, data):
    return {"echoed": data}


async def main():
    app = web.Application()
    sio.attach(app)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"ready {site._server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.get_running_loop().create_future()


asyncio.run(main())
