"""docs/openapi.json against the running control API, with schemathesis (PyPI): every operation is
called with generated requests, valid and not, and each answer must be one the document declares,
with the declared content type and schema, never a server error; undeclared methods get 405.

Not checked: that every schema-valid request is accepted (`positive_data_acceptance`). The filter
and rule grammars, and which connection numbers are live, cannot be said in JSON Schema, so a
request the schema allows may rightly get a 400 or 404. `/api/events` is left out: it is a stream
that does not end (tests/peers/test_control_api.py tests it). `/api/replays` is left out too: a
generated body may name any ws:// URL, and this test must not open connections beyond loopback
(test_control_api.py replays to local servers)."""
import os
import subprocess
import sys
from pathlib import Path

from websockets.sync.client import connect

from conftest import DEADLINE
from test_control_api import echo_server, request, start_ui, wait_api

ROOT = Path(__file__).resolve().parents[2]


def test_the_openapi_document_is_served_and_the_server_keeps_to_it(wstap, peer):
    proxy = start_ui(wstap, f"ws://127.0.0.1:{echo_server(peer)}", ["--rule", "[gate] from=server text=held => hold"])
    status, headers, body = request(proxy, "/api/openapi.json")
    assert status == 200 and body == (ROOT / "docs" / "openapi.json").read_bytes()
    # A live connection with a held message, so the routes that need one have one.
    with connect(proxy.url + "/api-test") as ws:
        ws.send("held")
        wait_api(proxy, "/api/holds", lambda a: a["holds"], "a held message")
        schemathesis = Path(sys.executable).parent / "schemathesis"
        done = subprocess.run(
            [str(schemathesis), "run", str(ROOT / "docs" / "openapi.json"), "--url", f"http://127.0.0.1:{proxy.ui_port}",
             "-H", f"Authorization: Bearer {proxy.token}", "--checks", "all", "--exclude-checks", "positive_data_acceptance",
             "--exclude-path", "/api/events", "--exclude-path", "/api/replays", "--max-examples", "40", "--seed", "1", "--request-timeout", str(DEADLINE)],
            capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"}, cwd=proxy.jsonl.parent)
        assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    # The proxy is still there and answering.
    assert request(proxy, "/api/status")[0] == 200
