"""Plain HTTP page server for the mock's browser test (aiohttp). Usage: mock_page_server.py WS_URL COUNT TEXT...

Serves /page, whose script opens WS_URL with the browser's WebSocket API, sends each TEXT, collects
COUNT messages, closes with 1000 and POSTs what it got to /result. Prints 'ready PORT', then
'result {json}' when the page reports.
"""
import asyncio
import json
import sys

from aiohttp import web

PAGE = """<!doctype html><meta charset="utf-8"><title>wstap mock browser test</title>
<script>
const url = URL_JSON, count = COUNT, texts = TEXTS_JSON;
const ws = new WebSocket(url);
const got = [];
ws.onopen = () => { for (const t of texts) ws.send(t); };
ws.onmessage = (e) => { got.push(e.data); if (got.length === count) ws.close(1000, "browser done"); };
ws.onclose = (e) => fetch("/result", {method: "POST", body: JSON.stringify({got, code: e.code})});
ws.onerror = () => fetch("/result", {method: "POST", body: JSON.stringify({got, error: true})});
</script>"""


async def main():
    url, count, texts = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    text = PAGE.replace("URL_JSON", json.dumps(url)).replace("COUNT", str(count)).replace("TEXTS_JSON", json.dumps(texts))

    async def page(request):
        return web.Response(text=text, content_type="text/html")

    async def result(request):
        print("result " + json.dumps(json.loads(await request.text())), flush=True)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/page", page)
    app.router.add_post("/result", result)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"ready {site._server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.get_running_loop().create_future()


asyncio.run(main())
