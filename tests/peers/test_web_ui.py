"""The web UI in headless Chromium (Debian's chromium and chromium-driver, driven by Selenium): a live
session between real Python websockets peers appears in it, a message is inspected in each view, a held
message is edited and forwarded while the peers' pings keep flowing, a composed message reaches the
client, a close with 4001 reaches both peers; and the offline view of a shared capture shows the
capture's messages. The live test saves the README's screenshot (WSTAP_UI_SCREENSHOT names where)."""
import base64
import json
import os
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from conftest import DEADLINE, PEERS, PYTHON, WSTAP, Proc, messages
from test_control_api import api, request, start_ui, wait_api

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:  # installed by scripts/install-test-peers.sh
    webdriver = None

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
CAPTURES = Path(__file__).resolve().parents[2].parent / "shared" / "captures"
# CI installs them (scripts/install-test-peers.sh), so there a missing one fails instead of skipping.
pytestmark = pytest.mark.skipif((webdriver is None or CHROMIUM is None or CHROMEDRIVER is None) and not os.environ.get("CI"),
                                reason="chromium, chromium-driver and selenium come from scripts/install-test-peers.sh")


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--window-size=1400,900", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(DEADLINE)
    yield driver
    driver.quit()


def until(driver, condition, what):
    """Polls the page until condition(driver) is truthy (WebDriverWait polls; the bound is not a timing assertion)."""
    return WebDriverWait(driver, DEADLINE, poll_frequency=0.05).until(lambda d: condition(d), message=f"the page never showed {what}")


def open_ui(driver, url):
    driver.get(url)
    # The ?token= was traded for a cookie and left the address bar.
    until(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") in ("true", "error"), "itself loaded")
    assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true", driver.find_element(By.ID, "toast").text
    assert "token=" not in driver.current_url


def rows(driver):
    """The table's rows as the page shows them: seq and the text of each cell."""
    return driver.execute_script("""
        return [...document.querySelectorAll('#table-rows .row:not([hidden])')].map(r => ({
            seq: Number(r.dataset.seq), cls: r.className, cells: [...r.children].map(c => c.textContent)}));""")


def row_count(driver):
    return driver.execute_script("return window.wstap.table.view.length")


def click_row(driver, seq):
    """Selects the row of a record from the keyboard's point of view: scrolled into view, then clicked."""
    index = driver.execute_script("return window.wstap.table.indexOfSeq(arguments[0])", seq)
    assert index >= 0, f"record {seq} is not in the table"
    driver.execute_script("window.wstap.table.select(arguments[0], {reveal: true})", index)
    until(driver, lambda d: any(r["seq"] == seq for r in rows(d)), f"row {seq}")
    driver.find_element(By.CSS_SELECTOR, f'#table-rows .row[data-seq="{seq}"]').click()
    until(driver, lambda d: d.find_element(By.ID, "detail-title").text.startswith(f"#{seq} "), f"the detail of {seq}")


def tab(driver, name):
    driver.find_element(By.CSS_SELECTOR, f'#tabs button[data-view="{name}"]').click()
    until(driver, lambda d: d.find_element(By.ID, "detail").get_attribute("data-view") == name, f"the {name} view")
    return driver.find_element(By.ID, "detail")


def tabs(driver):
    return [b.text for b in driver.find_elements(By.CSS_SELECTOR, "#tabs button")]


def test_a_live_session_is_inspected_held_edited_composed_and_closed_in_the_browser(wstap, peer, browser, tmp_path):
    from websockets.sync.client import connect

    port = peer(PYTHON, str(PEERS / "websockets_echo_server.py"))
    proxy = start_ui(wstap, f"ws://127.0.0.1:{port}", ["--rule", '[gate] from=server json.op="hold-me" => hold', "--hold-timeout", "120"])
    open_ui(browser, f"http://127.0.0.1:{proxy.ui_port}/?token={proxy.token}")

    greeting = json.dumps({"op": "greet", "items": [1, 2, 3], "name": "wstap"})
    with connect(proxy.url + "/ui", ping_interval=0.5, ping_timeout=5, proxy=None) as ws:
        ws.send(greeting)
        assert ws.recv() == greeting
        ws.send(bytes([0, 1, 2, 0xFF]))
        assert ws.recv() == bytes([0, 1, 2, 0xFF])

        # The session appears: its connection in the list, its messages in the table.
        until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '#connections li[data-conn="1"]'), "connection 1")
        echoed = wait_api(proxy, "/api/records?filter=" + urllib.parse.quote('type=message from=server op=text'),
                          lambda a: a["records"], "the echo")["records"][0]
        until(browser, lambda d: any(r["seq"] == echoed["seq"] for r in rows(d)), "the echo's row")
        row = next(r for r in rows(browser) if r["seq"] == echoed["seq"])
        assert "from-server" in row["cls"] and "text" in row["cells"] and '{"op":"greet"' in "".join(row["cells"]).replace(" ", "")

        # Each view of the echoed JSON message.
        click_row(browser, echoed["seq"])
        assert {"Text", "JSON", "Hex", "Base64", "Frames", "Record"} <= set(tabs(browser)), tabs(browser)
        assert tab(browser, "Text").text == greeting
        tree = tab(browser, "JSON")
        assert [k.text for k in tree.find_elements(By.CSS_SELECTOR, ".key")][:3] == ["op:", "items:", "0:"]
        assert '"wstap"' in tree.text
        hexed = tab(browser, "Hex").text
        assert hexed.startswith("00000000  7b 22 6f 70 22") and '{"op"' in hexed
        assert tab(browser, "Base64").text == base64.b64encode(greeting.encode()).decode()
        frames = tab(browser, "Frames").find_elements(By.CSS_SELECTOR, "tr")
        header, first = [c.text for c in frames[0].find_elements(By.TAG_NAME, "th")], [c.text for c in frames[1].find_elements(By.TAG_NAME, "td")]
        assert header[:3] == ["offset", "FIN", "RSV1"] and first[1] == "1"
        # websockets negotiates permessage-deflate: the server's frame has RSV1 set, and is not masked.
        assert first[2] == ("1" if echoed["compressed"] else "0") and first[6] == "none"
        assert json.loads(tab(browser, "Record").text)["seq"] == echoed["seq"]

        # The view chosen stays for the next message while it has one: the binary echo has no Text,
        # so it opens in hex. Keyboard: k goes to the row before, j back.
        tab(browser, "Text")
        binary = wait_api(proxy, "/api/records?filter=" + urllib.parse.quote("type=message from=server op=binary"),
                          lambda a: a["records"], "the binary echo")["records"][0]
        click_row(browser, binary["seq"])
        assert browser.find_element(By.ID, "detail").get_attribute("data-view") == "Hex"
        assert "00 01 02 ff" in browser.find_element(By.ID, "detail").text
        browser.find_element(By.ID, "table").send_keys("k")
        until(browser, lambda d: not d.find_element(By.ID, "detail-title").text.startswith(f"#{binary['seq']} "), "the previous row")
        browser.find_element(By.ID, "table").send_keys("j")
        until(browser, lambda d: d.find_element(By.ID, "detail-title").text.startswith(f"#{binary['seq']} "), "the binary row again")

        # The filter box: a mistake is shown at its column, a good filter narrows the table.
        box = browser.find_element(By.ID, "filter")
        box.send_keys("from=server len>>3", Keys.ENTER)
        until(browser, lambda d: d.find_element(By.ID, "filter-error").is_displayed(), "the filter error")
        error = browser.find_element(By.ID, "filter-error").text
        column = json.loads(request(proxy, "/api/records?filter=" + urllib.parse.quote("from=server len>>3"))[2])["column"]
        assert error.splitlines()[0] == " " * (column - 1) + "^", error
        box.clear()
        # (text only: the peers' pings go on all the time, and would make the count below move)
        box.send_keys("from=server op=text", Keys.ENTER)
        until(browser, lambda d: not d.find_element(By.ID, "filter-error").is_displayed() and rows(d)
              and all("from-server" in r["cls"] and r["cells"][4] == "text" for r in rows(d)), "only the server's text messages")
        shown = row_count(browser)

        # Pause: new rows wait behind a counter, then come in.
        browser.find_element(By.ID, "pause").click()
        ws.send("while paused")
        assert ws.recv() == "while paused"
        until(browser, lambda d: d.find_element(By.ID, "new-rows").is_displayed() and d.find_element(By.CSS_SELECTOR, "#new-rows span").text == "1",
              "one new row while paused")
        assert row_count(browser) == shown
        browser.find_element(By.ID, "resume").click()
        until(browser, lambda d: row_count(d) == shown + 1, "the waiting row")
        box.clear()
        box.send_keys(Keys.ENTER)
        until(browser, lambda d: d.find_element(By.ID, "counts").text.endswith(" rows") and " of " not in d.find_element(By.ID, "counts").text,
              "every row again")

        # A held message: its peer's pings keep flowing; edited in the browser, the peer gets the edit.
        ws.send(json.dumps({"op": "hold-me", "n": 1}))
        until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#holds li button[data-action=edit]"), "the held message")
        held = api(proxy, "/api/holds")["holds"][0]
        assert browser.find_element(By.CSS_SELECTOR, "#holds li .preview").text == held["text"]
        held_at = api(proxy, "/api/records?filter=diag%3Dheld")["records"][0]["seq"]
        wait_api(proxy, f"/api/records?after={held_at}&filter=" + urllib.parse.quote("type=message op=pong from=server"),
                 lambda a: len(a["records"]) >= 2, "two pongs after the hold")
        # The README's screenshot: a message held, the echo selected in its JSON view.
        click_row(browser, echoed["seq"])
        tab(browser, "JSON")
        shot = Path(os.environ.get("WSTAP_UI_SCREENSHOT") or tmp_path / "ui.png")
        shot.parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        browser.find_element(By.CSS_SELECTOR, "#holds li button[data-action=edit]").click()
        editor = browser.find_element(By.CSS_SELECTOR, "#edit-dialog textarea")
        assert editor.get_attribute("value") == held["text"]
        editor.clear()
        editor.send_keys('{"op":"edited in the browser"}')
        browser.find_element(By.CSS_SELECTOR, '#edit-dialog button[value="edit"]').click()
        assert ws.recv() == '{"op":"edited in the browser"}'
        until(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, "#holds li"), "the hold queue empty")
        # The held message's row now carries its change: received against sent, and the rule.
        held_message = api(proxy, f"/api/records?filter=" + urllib.parse.quote('type=message from=server json.op="hold-me"'))["records"][0]
        click_row(browser, held_message["seq"])
        until(browser, lambda d: any(r["seq"] == held_message["seq"] and "edited" in r["cells"][-1] for r in rows(d)),
              "the edit marked on the held message's row")
        changed = tab(browser, "Changed")
        assert "gate" in changed.text and "edited" in changed.text
        received, sent = changed.find_elements(By.CSS_SELECTOR, ".compare > div")
        assert held_message["text"] in received.text and '{"op":"edited in the browser"}' in sent.text

        # Compose: to the client directly, and to the server (whose echo proves it arrived).
        browser.find_element(By.ID, "compose-button").click()
        form = browser.find_element(By.CSS_SELECTOR, "#compose-dialog form")
        Select(form.find_element(By.NAME, "to")).select_by_value("client")
        form.find_element(By.NAME, "payload").send_keys("composed in the browser")
        form.find_element(By.CSS_SELECTOR, 'button[value="send"]').click()
        assert ws.recv() == "composed in the browser"
        browser.find_element(By.ID, "compose-button").click()
        Select(form.find_element(By.NAME, "to")).select_by_value("server")
        form.find_element(By.NAME, "payload").clear()
        form.find_element(By.NAME, "payload").send_keys("echo this")
        form.find_element(By.NAME, "fragments").clear()
        form.find_element(By.NAME, "fragments").send_keys("3")
        form.find_element(By.CSS_SELECTOR, 'button[value="send"]').click()
        assert ws.recv() == "echo this"
        # Its record: wstap's own message, sent in the three frames asked for.
        sent = wait_api(proxy, "/api/records?filter=type%3Dchange",
                        lambda a: any(c["result"] == "injected" and c["sent"][0].get("text") == "echo this" for c in a["records"]), "the injected record")
        injected = next(c for c in sent["records"] if c["result"] == "injected" and c["sent"][0].get("text") == "echo this")
        assert injected["from"] == "client" and injected["sent"][0]["frames"] == 3 and injected["rules"] == ["control API"]

        # Close with 4001 from the code picker, to both peers.
        browser.find_element(By.ID, "close-button").click()
        form = browser.find_element(By.CSS_SELECTOR, "#close-dialog form")
        Select(form.find_element(By.NAME, "preset")).select_by_value("4000")
        code = form.find_element(By.NAME, "code")
        code.clear()
        code.send_keys("4001")
        form.find_element(By.NAME, "reason").send_keys("closed from the UI")
        form.find_element(By.CSS_SELECTOR, 'button[value="close"]').click()
        from websockets.exceptions import ConnectionClosed
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=DEADLINE)
        assert closed.value.rcvd.code == 4001 and closed.value.rcvd.reason == "closed from the UI"

    proxy.wait_ended()
    mine = proxy.records()
    # The server got the 4001 too: its answering close carries the code back.
    assert any(r["type"] == "message" and r["from"] == "server" and r.get("code") == 4001 for r in mine)
    edited = next(r for r in mine if r["type"] == "change" and r["result"] == "edited")
    assert edited["rules"] == ["gate"] and edited["sent"][0]["text"] == '{"op":"edited in the browser"}'
    # The end reaches the page: the connection is listed as ended.
    until(browser, lambda d: "ended" in d.find_element(By.CSS_SELECTOR, '#connections li[data-conn="1"]').get_attribute("class"), "the end")


def test_the_offline_view_of_a_shared_capture_shows_its_messages(browser, procs, tmp_path):
    capture = CAPTURES / "gen-ws-fragmented.pcap"
    if not capture.exists():
        pytest.skip(f"{capture} is not here") if not os.environ.get("CI") else pytest.fail(f"{capture} is missing in CI")
    expected = tmp_path / "expected.jsonl"
    subprocess.run([WSTAP, "read", str(capture), "--jsonl", str(expected), "-q"], check=True, timeout=DEADLINE)
    records = [json.loads(line) for line in expected.read_text().splitlines()]
    shown_types = {"open", "http", "message", "diagnostic", "gap", "end"}
    wanted = [r for r in records if r["type"] in shown_types or (r["type"] == "change" and r["result"] == "injected")]

    reader = Proc([WSTAP, "read", str(capture), "-q", "--ui", "0"], stream="stderr")
    procs.append(reader)
    url = reader.wait_for(r"web UI on .* at (http://127\.0\.0\.1:\d+/\?token=[0-9a-f]{32})").group(1)
    reader.wait_for(r"records? served")
    open_ui(browser, url)
    until(browser, lambda d: row_count(d) == len(wanted), f"{len(wanted)} rows")
    assert "offline" in browser.find_element(By.ID, "mode").text and capture.name in browser.find_element(By.ID, "mode").text
    # Nothing to steer: the live actions are not shown.
    assert not browser.find_element(By.ID, "compose-button").is_displayed()
    assert not browser.find_element(By.ID, "rules-button").is_displayed()
    # A fragmented message: its row says how many frames, its Frames view lists each one's header.
    fragmented = next(m for m in messages(records) if m["frames"] > 1 and m["opcode"] in (1, 2))
    seq = browser.execute_script("return window.wstap.table.view[arguments[0]].seq", wanted.index(fragmented))
    click_row(browser, seq)
    row = next(r for r in rows(browser) if r["seq"] == seq)
    assert str(fragmented["frames"]) in row["cells"] and str(fragmented["length"]) in row["cells"]
    frame_rows = tab(browser, "Frames").find_elements(By.CSS_SELECTOR, "tr")[1:]
    assert len(frame_rows) == fragmented["frames"]
    fins = [r.find_elements(By.TAG_NAME, "td")[1].text for r in frame_rows]
    assert fins == ["0"] * (fragmented["frames"] - 1) + ["1"]
    payload = fragmented.get("text") if "text" in fragmented else None
    if payload is not None:
        assert tab(browser, "Text").text == payload.strip() or payload in tab(browser, "Text").text
    else:
        assert tab(browser, "Base64").text == fragmented["base64"]
    # The export link gives back what `wstap read --jsonl` wrote.
    href = browser.find_element(By.ID, "export-jsonl").get_attribute("href")
    exported = browser.execute_async_script("const done = arguments[1]; fetch(arguments[0]).then(r => r.text()).then(done)", href)
    assert [json.loads(line) for line in exported.splitlines()] == records


def test_a_connection_is_replayed_from_the_browser_and_the_replay_appears_beside_it(wstap, peer, browser):
    from websockets.sync.client import connect

    port = peer(PYTHON, str(PEERS / "websockets_app_server.py"))
    proxy = start_ui(wstap, f"ws://127.0.0.1:{port}")
    with connect(proxy.url + "/app", proxy=None) as ws:
        ws.send(json.dumps({"op": "get", "id": 3, "token": None}))
        assert json.loads(ws.recv())["price"] == 103
        ws.send("plain")
        assert ws.recv() == "plain"
    proxy.wait_ended()
    open_ui(browser, f"http://127.0.0.1:{proxy.ui_port}/?token={proxy.token}")
    browser.find_element(By.CSS_SELECTOR, '#connections li[data-conn="1"]').click()
    until(browser, lambda d: not d.find_element(By.ID, "replay-button").get_attribute("disabled"), "the replay button enabled")
    browser.find_element(By.ID, "replay-button").click()
    form = browser.find_element(By.CSS_SELECTOR, "#replay-dialog form")
    assert form.find_element(By.NAME, "to").get_attribute("value") == f"ws://127.0.0.1:{port}/app"
    form.find_element(By.NAME, "ignore").send_keys("json.ts")
    form.find_element(By.CSS_SELECTOR, 'button[value="replay"]').click()
    report = browser.find_element(By.CSS_SELECTOR, "#replay-dialog .replay-report")
    until(browser, lambda d: report.get_attribute("data-same") in ("true", "false"), "the replay's result")
    assert report.get_attribute("data-same") == "true", report.text
    assert "replayed as connection 2" in report.text and "sent 2 of 2 client messages, received 2" in report.text
    assert report.text.endswith("the server answered as recorded")
    # The replay is a connection of its own, listed beside the one it replayed.
    form.find_element(By.CSS_SELECTOR, 'button[value="cancel"]').click()
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '#connections li[data-conn="2"]'), "the replayed session")


def test_socket_io_packets_are_decoded_in_the_detail_pane(wstap, peer, browser):
    """python-socketio's client and server through wstap: an event with an acknowledgement."""
    import socketio

    port = peer(PYTHON, str(PEERS / "socketio_server.py"))
    proxy = start_ui(wstap, f"ws://127.0.0.1:{port}")
    client = socketio.Client()
    client.connect(f"http://127.0.0.1:{proxy.port}", transports=["websocket"])
    try:
        assert client.call("echo", {"n": 7, "text": "via socket.io"}, timeout=DEADLINE) == {"echoed": {"n": 7, "text": "via socket.io"}}
    finally:
        client.disconnect()
    # The event as the client sent it: 42 (Engine.IO message, Socket.IO EVENT), an ack id, the JSON.
    seq = next(r["seq"] for r in api(proxy, "/api/records?filter=" + urllib.parse.quote("type=message from=client text:echo"))["records"])
    open_ui(browser, f"http://127.0.0.1:{proxy.ui_port}/?token={proxy.token}")
    click_row(browser, seq)
    assert browser.find_element(By.ID, "detail").get_attribute("data-view") == "Socket.IO"
    facts = {row.find_element(By.TAG_NAME, "th").text: row.find_element(By.TAG_NAME, "td").text
             for row in browser.find_elements(By.CSS_SELECTOR, "#detail table tr")}
    assert facts["Engine.IO"] == "message" and facts["Socket.IO"] == "EVENT" and facts["event"] == "echo" and facts["namespace"] == "/"
    assert facts["ack id"].isdigit()
    assert '"via socket.io"' in browser.find_element(By.CSS_SELECTOR, "#detail .json").text
