"""HTTPS page server for the browser test (aiohttp, certificate from certs/test).

Serves /page, whose script opens wss:// (this server) and ws:// (a second, plain server) with the
browser's WebSocket API, sends text and binary, checks the echoes, and POSTs a JSON result to /result.
Prints 'ready TLS_PORT PLAIN_PORT', then 'result {json}' when the page reports.
"""
import asyncio
import json
import ssl
from pathlib import Path

from aiohttp import web

from aiohttp_echo_server import handler as ws_echo

CERTS = Path(__file__).resolve().parents[3] / "certs" / "test"

PAGE = """<!doctype html><meta charset="utf-8"><title>wstap browser test</title>
<script>
async function probe(url) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    const got = [];
    ws.onopen = () => { ws.send("text from the browser"); ws.send(new Uint8Array([1, 2, 3, 250]).buffer); };
    ws.onmessage = (e) => {
      got.push(typeof e.data === "string" ? e.data : Array.from(new Uint8Array(e.data)).join(","));
      if (got.length === 2) ws.close(1000, "browser done");
    };
    ws.onclose = (e) => resolve({url, got, code: e.code});
    ws.onerror = () => resolve({url, got, error: true});
  });
}
(async () => {
  const results = [await probe("wss://localhost:TLS_PORT/ws"), await probe("ws://localhost:PLAIN_PORT/ws")];
  await fetch("/result", {method: "POST", body: JSON.stringify(results)});
  document.title = "done";
})();
</script>"""


async def main():
    tls_site_holder = {}

    async def page(request):
        text = PAGE.replace("TLS_PORT", str(tls_site_holder["tls"])).replace("PLAIN_PORT", str(tls_site_holder["plain"]))
        return web.Response(text=text, content_type="text/html")

    async def result(request):
        print("result " + json.dumps(json.loads(await request.text())), flush=True)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/page", page)
    app.router.add_post("/result", result)
    app.router.add_get("/ws", ws_echo)
    plain_app = web.Application()
    plain_app.router.add_get("/ws", ws_echo)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(CERTS / "upstream.pem", CERTS / "upstream-key.pem")
    runners = []
    for application, ssl_context, key in ((app, context, "tls"), (plain_app, None, "plain")):
        runner = web.AppRunner(application)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        tls_site_holder[key] = site._server.sockets[0].getsockname()[1]
        runners.append(runner)
    print(f"ready {tls_site_holder['tls']} {tls_site_holder['plain']}", flush=True)
    await asyncio.get_running_loop().create_future()


asyncio.run(main())
