"""Headless Chromium through wstap's forward proxy: a page served over https opens wss:// and ws://
with the plain browser WebSocket API. Chromium trusts wstap's CA through an NSS database in a
temporary profile only; no certificate errors are ignored."""
import json
import os
import shutil
import subprocess

import pytest

from conftest import PEERS, PYTHON, Proc, messages, payload_bytes

CHROMIUM = shutil.which("chromium")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is installed by scripts/install-test-peers.sh")
def test_chromium_wss_and_ws_through_the_proxy(wstap, procs, tmp_path):
    server = Proc([PYTHON, str(PEERS / "browser_page_server.py")])
    procs.append(server)
    tls_port, plain_port = map(int, server.wait_for(r"^ready (\d+) (\d+)").groups())
    ca = tmp_path / "ca"
    proxy = wstap(None, ["--ca-dir", str(ca), "--upstream-ca", str(PEERS.parents[2] / "certs" / "test" / "test-ca.pem")])

    home = tmp_path / "home"
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True)
    subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "wstap test", "-i", str(ca / "wstap-ca.pem")], check=True)

    browser = Proc([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--proxy-server=http://127.0.0.1:{proxy.port}",
                    "--proxy-bypass-list=<-loopback>",  # Chromium skips proxies for localhost unless told
                    f"https://localhost:{tls_port}/page"],
                   env={**os.environ, "HOME": str(home)})
    procs.append(browser)
    results = json.loads(server.wait_for(r"^result (.*)").group(1))
    by_scheme = {r["url"].split(":")[0]: r for r in results}
    for scheme in ("wss", "ws"):
        assert by_scheme[scheme].get("error") is None, results
        assert by_scheme[scheme]["got"] == ["text from the browser", "1,2,3,250"]
        assert by_scheme[scheme]["code"] == 1000

    records = proxy.wait_records(lambda r: sum(1 for x in r if x["type"] == "open") >= 2
                                 and sum(1 for x in r if x["type"] == "message" and x["opcode"] == 8) >= 4, "two sessions closed")
    opens = {r["url"].split(":")[0]: r for r in records if r["type"] == "open"}
    assert opens["wss"]["url"] == f"wss://localhost:{tls_port}/ws" and opens["wss"]["client_tls"] == {"sni": "localhost"}
    assert opens["ws"]["url"] == f"ws://localhost:{plain_port}/ws" and opens["ws"]["client_tls"] is None
    for scheme, open_ in opens.items():
        sent = [(m["from"], payload_bytes(m)) for m in messages(records, conn=open_["conn"]) if m["opcode"] in (1, 2)]
        # The browser may send its binary message before the first echo arrives: compare per direction.
        for sender in ("client", "server"):
            assert [p for f, p in sent if f == sender] == [b"text from the browser", bytes([1, 2, 3, 250])], (scheme, sent)
    # The page itself came through the intercepted tunnel as plain HTTP exchanges.
    pages = [r for r in records if r["type"] == "http" and r["request"] and r["request"]["target"] == "/page"]
    assert pages and pages[0]["response"]["status"] == 200
