#!/usr/bin/env python3
"""What the web UI costs as a session grows: the same page on a recording of 1,000 messages and on
one of 100,000, in headless Chromium (issue 13: ≤ 2× between them, i.e. it does not grow).

    python3 scripts/bench/ui_render.py [--out docs/performance-ui-render.md] [--samples 400]

The recordings are real: the C load generator through `wstap proxy --jsonl` to the C echo server.
Each is served by `wstap read REC --ui`; the page loads it (that time grows with the records
fetched, and is reported, not a target), then, in the page, for a few hundred scroll positions
spread over the whole table: set the position, draw the table (`render()`) and force layout, timed
with performance.now(); then for as many rows: select it and draw its detail pane. Medians and 95th
percentiles, in milliseconds.
"""
import argparse
import datetime
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BIN, ROOT, build, wait_line  # noqa: E402

SIZES = [1_000, 100_000]

MEASURE = """
const [samples, done] = arguments;
const table = window.wstap.table, scroller = document.getElementById('table');
const total = table.view.length;
const time = body => { const t0 = performance.now(); body(); document.body.getBoundingClientRect(); return performance.now() - t0; };
const positions = Array.from({length: samples}, (_, i) => Math.floor((i * 7919) % Math.max(1, total)));
table.stick = false;
// Warm-up: the row pool is built and the code compiled before anything is timed.
for (const index of positions.slice(0, 40)) { scroller.scrollTop = index * table.rowHeight; table.render(); table.select(index); }
const scroll = positions.map(index => time(() => {
  scroller.scrollTop = index * table.rowHeight;
  table.render();
  scroller.querySelector('#table-rows .row:not([hidden])')?.offsetTop;
}));
const select = positions.map(index => time(() => table.select(index)));
done({total, scroll, select});
"""


def record(wsbench_port, wstap, messages, path):
    """A recording of `messages` messages (both directions) of 64 B text through wstap."""
    proxy = subprocess.Popen([str(wstap), "proxy", "--listen", "127.0.0.1:0", "--upstream", f"ws://127.0.0.1:{wsbench_port}",
                              "--jsonl", str(path), "-q"], stderr=subprocess.PIPE, text=True)
    port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", proxy.stderr.readline()).group(1))
    subprocess.run([str(BIN / "wsbench"), "load", "127.0.0.1", str(port), "1", "64", "32", str(messages // 2)],
                   check=True, capture_output=True, timeout=600)
    # The connection's end record is the last the proxy writes for it.
    deadline = time.monotonic() + 60
    while '"type":"end"' not in path.read_text()[-4096:]:
        if time.monotonic() > deadline:
            sys.exit(f"the recording {path} never ended")
        time.sleep(0.05)
    proxy.terminate()
    proxy.wait()


def measure(wstap, recording, samples, profile):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    reader = subprocess.Popen([str(wstap), "read", str(recording), "-q", "--ui", "0", "--ui-store", str(1 << 30)],
                              stderr=subprocess.PIPE, text=True)
    url = re.search(r"at (http://\S+)", reader.stderr.readline()).group(1)
    wait_line_stderr(reader, r"records? served")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_script_timeout(600)
    try:
        started = time.monotonic()
        driver.get(url)
        while driver.execute_script("return document.body.dataset.ready") != "true":
            if time.monotonic() - started > 600:
                sys.exit("the page never loaded")
            time.sleep(0.02)
        loaded = time.monotonic() - started
        result = driver.execute_async_script(MEASURE, samples)
        heap = driver.execute_script("return performance.memory ? performance.memory.usedJSHeapSize : 0")
    finally:
        driver.quit()
        reader.terminate()
        reader.wait()
    return loaded, result, heap


def wait_line_stderr(proc, pattern):
    for line in proc.stderr:
        if re.search(pattern, line):
            return line
    sys.exit(f"never printed /{pattern}/")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "docs" / "performance-ui-render.md"))
    parser.add_argument("--samples", type=int, default=400)
    opts = parser.parse_args()
    build()
    wstap = ROOT / ".build/release/wstap"
    tmp = Path(tempfile.mkdtemp(prefix="wstap-ui-bench-"))
    echo = subprocess.Popen([str(BIN / "wsbench"), "server", "0"], stdout=subprocess.PIPE, text=True)
    echo_port = int(wait_line(echo, r"ready (\d+)").group(1))
    rows = {}
    try:
        for size in SIZES:
            path = tmp / f"rec-{size}.jsonl"
            record(echo_port, wstap, size, path)
            loaded, result, heap = measure(wstap, path, opts.samples, tmp / f"profile-{size}")
            rows[size] = (loaded, result, heap, path.stat().st_size)
            print(size, loaded, statistics.median(result["scroll"]), statistics.median(result["select"]), flush=True)
    finally:
        echo.terminate()
        shutil.rmtree(tmp, ignore_errors=True)

    def p95(values):
        return sorted(values)[int(len(values) * 0.95) - 1]

    small, large = rows[SIZES[0]], rows[SIZES[1]]
    lines = []
    for size, (loaded, result, heap, file_bytes) in rows.items():
        lines.append(f"| {size:,} messages ({result['total']:,} rows, {file_bytes / 1e6:.1f} MB JSONL) | {loaded:.2f} s "
                     f"| {statistics.median(result['scroll']):.2f} / {p95(result['scroll']):.2f} "
                     f"| {statistics.median(result['select']):.2f} / {p95(result['select']):.2f} | {heap / 1e6:.0f} MB |")
    scroll_ratio = statistics.median(large[1]["scroll"]) / statistics.median(small[1]["scroll"])
    select_ratio = statistics.median(large[1]["select"]) / statistics.median(small[1]["select"])
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = f"""# The web UI as a session grows

Measured by `python3 scripts/bench/ui_render.py --samples {opts.samples}` on {stamp}, {platform.machine()},
{os.cpu_count()} cores, release build, headless Chromium (Debian's). Recordings: the C load generator
(64 B text, window 32) through `wstap proxy --jsonl` to the C echo server; each served by
`wstap read REC --ui`. Per scroll position: move there, draw the table, force layout. Per row: select
it and draw its detail pane. Times in ms, median / 95th percentile over {opts.samples} positions spread
over the whole table.

| recording | page load (fetch every record) | scroll + draw, ms | select + detail, ms | JS heap |
|---|---|---|---|---|
""" + "\n".join(lines) + f"""

100,000 against 1,000 messages: scroll + draw **{scroll_ratio:.2f}×**, select + detail **{select_ratio:.2f}×**
(target, issue 13: ≤ 2×, the cost of a frame does not grow with the session). The page load grows
with the records it fetches (it holds what the server's store holds); it is not a per-frame cost.
"""
    Path(opts.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
