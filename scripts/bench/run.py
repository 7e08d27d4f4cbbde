#!/usr/bin/env python3
"""wstap benchmark: direct vs socat-tuned vs wstap (--jsonl to a file), interleaved in one run.

    python3 scripts/bench/run.py [--reps 3] [--out docs/performance.md]
    python3 scripts/bench/run.py --baseline /tmp/wstap-before --out /tmp/compare.md
    python3 scripts/bench/run.py --rules --only "64 B" --out /tmp/rules.md

With --rules, two more wstap processes join the rotation: one with ten rules that match nothing
(`rules-idle`) and one whose single rule edits every text message (`rules-edit`); the report gets a
table of what rules cost against wstap without rules and against socat, in the same run.

With --ui, two more: wstap with `--ui` and a push-stream reader that takes every event as fast as it
comes (`ui-reader`, curl on /api/events), and wstap with `--ui` and a reader that connected and then
stopped reading (`ui-stalled`); the report gets a table of both against wstap alone (issue 13: ≥ 0.9×).

With --baseline, a second wstap binary (say, a release build of the commit before a change) runs as one
more target in the same rotation, and the report gets a table of wstap against it: a change's cost
measured in one run, not against figures from another day.

Load comes from wsbench.c (a C client and echo server), so the load generator is not the bottleneck.
Every workload runs against the three targets in rotating order, REPS times; the table shows medians
and ratios against direct and against socat in the same run. Proxy CPU comes from /proc/PID/stat
(utime+stime, plus cutime+cstime for socat, which forks a child per connection); peak RSS is VmHWM.
"""
import argparse
import datetime
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".build" / "bench"
TICK = os.sysconf("SC_CLK_TCK")

WORKLOADS = [
    # name, kind, args for wsbench (after host port), messages relayed per direction
    ("64 B text, window 32", "load", ["1", "64", "32", "300000"]),
    ("64 KiB binary, window 4", "load", ["1", "65536", "4", "4000"]),
    ("1 MiB binary, window 2", "load", ["1", "1048576", "2", "400"]),
    ("100 connections x 64 B, window 8", "load", ["100", "64", "8", "3000"]),
    ("handshakes", "handshakes", ["2"]),
    ("RTT 64 B", "rtt", ["64", "20000"]),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid, children=False):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


def wait_children_reaped(pid):
    """socat forks a child per connection; its CPU reaches cutime only once the parent reaps it."""
    path = f"/proc/{pid}/task/{pid}/children"
    for _ in range(500):
        try:
            if not open(path).read().strip():
                return
        except FileNotFoundError:
            return
        time.sleep(0.01)


def peak_rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_line(proc, pattern):
    regex = re.compile(pattern)
    for line in proc.stdout if proc.stdout else []:
        m = regex.search(line)
        if m:
            return m
    raise RuntimeError(f"{proc.args[0]} did not print {pattern}")


def build():
    BIN.mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(BIN / "wsbench"), str(ROOT / "scripts/bench/wsbench.c")], check=True)
    subprocess.run(["swift", "build", "-c", "release", "--product", "wstap"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    if not shutil.which("socat"):
        sys.exit("socat is missing: run scripts/install-test-peers.sh first")


def run_client(kind, port, args):
    out = subprocess.run([str(BIN / "wsbench"), kind, "127.0.0.1", str(port), *args],
                         check=True, capture_output=True, text=True, timeout=600).stdout
    return {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+)", out)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "docs" / "performance.md"))
    parser.add_argument("--baseline", help="another wstap binary to measure in the same run")
    parser.add_argument("--only", help="run only the workloads whose name contains this (e.g. RTT)")
    parser.add_argument("--rules", action="store_true", help="also measure wstap with rules loaded (rules-idle, rules-edit)")
    parser.add_argument("--ui", action="store_true", help="also measure wstap --ui with a push-stream reader and with a stalled one")
    opts = parser.parse_args()
    if opts.only:
        WORKLOADS[:] = [w for w in WORKLOADS if opts.only in w[0]]
        if not WORKLOADS:
            sys.exit(f"--only {opts.only}: no workload has that in its name")
    if opts.baseline and not os.access(opts.baseline, os.X_OK):
        sys.exit(f"--baseline {opts.baseline}: not an executable file")
    build()

    tmp = Path(tempfile.mkdtemp(prefix="wstap-bench-"))
    echo = subprocess.Popen([str(BIN / "wsbench"), "server", "0"], stdout=subprocess.PIPE, text=True)
    echo_port = int(wait_line(echo, r"ready (\d+)").group(1))
    socat_port = free_port()
    socat = subprocess.Popen(["socat", "-b", "262144", f"TCP-LISTEN:{socat_port},bind=127.0.0.1,reuseaddr,fork,nodelay,backlog=1024",
                              f"TCP:127.0.0.1:{echo_port},nodelay"])
    def start_wstap(binary, jsonl, extra=()):
        proc = subprocess.Popen([str(binary), "proxy", "--listen", "127.0.0.1:0",
                                 "--upstream", f"ws://127.0.0.1:{echo_port}", "--jsonl", str(jsonl), "-q", *extra],
                                stderr=subprocess.PIPE, text=True)
        port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", proc.stderr.readline()).group(1))
        if "--ui" in extra:
            proc.ui = re.search(r"at http://127\.0\.0\.1:(\d+)/\?token=(\w+)", proc.stderr.readline()).groups()
        return proc, port

    jsonl = tmp / "records.jsonl"
    wstap, wstap_port = start_wstap(ROOT / ".build/release/wstap", jsonl)
    jsonl_files = {"wstap": jsonl}
    baseline = None
    if opts.baseline:
        jsonl_files["baseline"] = tmp / "baseline.jsonl"
        baseline, baseline_port = start_wstap(opts.baseline, jsonl_files["baseline"])
    rule_targets = {}
    if opts.rules:
        # Ten rules a real session might load, none of which matches wsbench's a-z payloads.
        idle = [f"[idle{i}] from=client text:\"no such text {i}\" => drop" for i in range(5)] + \
               [f"[json{i}] json.type=\"t{i}\" => set json.n {i}" for i in range(3)] + \
               ["[pings] op=ping => drop", "[huge] len>1M => mark big"]
        rule_sets = {"rules-idle": idle, "rules-edit": ["[edit] op=text => replace /abc/ \"xyz\""]}
        for name, rules in rule_sets.items():
            jsonl_files[name] = tmp / f"{name}.jsonl"
            args = [a for rule in rules for a in ("--rule", rule)]
            rule_targets[name] = start_wstap(ROOT / ".build/release/wstap", jsonl_files[name], args)
    ui_targets, readers = {}, []
    if opts.ui:
        for name in ("ui-reader", "ui-stalled"):
            jsonl_files[name] = tmp / f"{name}.jsonl"
            ui_targets[name] = start_wstap(ROOT / ".build/release/wstap", jsonl_files[name], ["--ui", "0"])
        ui_port, token = ui_targets["ui-reader"][0].ui
        readers.append(subprocess.Popen(["curl", "-sN", "-H", f"Authorization: Bearer {token}", f"http://127.0.0.1:{ui_port}/api/events"],
                                        stdout=subprocess.DEVNULL))
        # Connects, asks for the stream, reads its head and never reads again.
        ui_port, token = ui_targets["ui-stalled"][0].ui
        stalled = socket.create_connection(("127.0.0.1", int(ui_port)))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{ui_port}\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        stalled.recv(1)
    # socat listens once its process is up; a connect loop proves it.
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", socat_port)).close()
            break
        except OSError:
            time.sleep(0.01)

    targets = {"direct": (echo_port, None), "socat": (socat_port, socat.pid), "wstap": (wstap_port, wstap.pid)}
    if baseline:
        targets["baseline"] = (baseline_port, baseline.pid)
    for name, (proc, port) in list(rule_targets.items()) + list(ui_targets.items()):
        targets[name] = (port, proc.pid)
    results = {w[0]: {t: [] for t in targets} for w in WORKLOADS}
    cpu = {w[0]: {t: [] for t in targets} for w in WORKLOADS}
    order = list(targets)
    jsonl_bytes = {}
    try:
        for rep in range(opts.reps):
            for name, kind, args in WORKLOADS:
                for target in order[rep % len(order):] + order[:rep % len(order)]:
                    port, pid = targets[target]
                    before = cpu_seconds(pid, children=(target == "socat")) if pid else 0
                    r = run_client(kind, port, args)
                    if target == "socat":
                        wait_children_reaped(pid)
                    after = cpu_seconds(pid, children=(target == "socat")) if pid else 0
                    results[name][target].append(r)
                    cpu[name][target].append((after - before, r))
                    print(f"rep {rep} {name:34} {target:6} {r}", flush=True)
                    if target in jsonl_files:
                        if target == "wstap":
                            jsonl_bytes[name] = jsonl.stat().st_size
                        # Bound disk use; wstap opens with O_APPEND, so it writes on at the new end.
                        os.truncate(jsonl_files[target], 0)
        wstap_rss = peak_rss_mb(wstap.pid)
        for name, (proc, _) in ui_targets.items():
            opts.ui_rss = getattr(opts, "ui_rss", {}) | {name: peak_rss_mb(proc.pid)}
    finally:
        for p in (wstap, socat, echo) + ((baseline,) if baseline else ()) + tuple(p for p, _ in rule_targets.values()) \
                + tuple(p for p, _ in ui_targets.values()) + tuple(readers):
            p.terminate()
        shutil.rmtree(tmp, ignore_errors=True)

    # The raw numbers first, so a mistake in the report below does not lose a run.
    raw = Path(tempfile.gettempdir()) / "wstap-bench-raw.json"
    raw.write_text(__import__("json").dumps({"results": results, "cpu": cpu, "wstap_rss": wstap_rss, "jsonl_bytes": jsonl_bytes}))
    print(f"raw numbers in {raw}", flush=True)
    write_report(opts, results, cpu, wstap_rss, jsonl_bytes)


def median(values):
    return statistics.median(values) if values else float("nan")


def write_report(opts, results, cpu, wstap_rss, jsonl_bytes):
    rows = []
    baseline_rows = []
    rule_rows = []
    ui_rows = []
    for name, kind, args in WORKLOADS:
        if kind == "load":
            key, unit = "msgs_per_s", "msg/s"
        elif kind == "handshakes":
            key, unit = "per_s", "handshakes/s"
        else:
            key, unit = "p50_us", "µs p50"
        med = {t: median([r[key] for r in results[name][t]]) for t in results[name]}
        extra = ""
        if kind == "rtt":
            p99 = {t: median([r["p99_us"] for r in results[name][t]]) for t in results[name]}
            extra = f" (p99: direct {p99['direct']:.0f}, socat {p99['socat']:.0f}, wstap {p99['wstap']:.0f} µs)"
        if kind == "load":
            mb = {t: median([r["mb_per_s"] for r in results[name][t]]) for t in results[name]}
            extra = f" ({mb['wstap']:.0f} MB/s each way through wstap)"
        # CPU per message: proxy CPU seconds over messages relayed in both directions.
        per_msg = {}
        for t in [t for t in ("socat", "wstap", "baseline", "rules-idle", "rules-edit", "ui-reader", "ui-stalled") if t in cpu[name]]:
            samples = []
            for seconds, r in cpu[name][t]:
                if kind == "handshakes":
                    relayed = r["handshakes"]  # CPU per handshake, not per message
                elif kind == "rtt":
                    relayed = 2 * int(args[1])
                else:
                    relayed = 2 * r["messages"]
                if relayed:
                    samples.append(seconds / relayed * 1e6)
            per_msg[t] = median(samples)
        if kind == "rtt":
            ratio_d = med["direct"] / med["wstap"]
            ratio_s = med["socat"] / med["wstap"]
        else:
            ratio_d = med["wstap"] / med["direct"]
            ratio_s = med["wstap"] / med["socat"]
        rows.append(f"| {name} | {med['direct']:,.1f} | {med['socat']:,.1f} | {med['wstap']:,.1f} {unit} | {ratio_d:.2f}× | {ratio_s:.2f}× | {per_msg['socat']:.2f} | {per_msg['wstap']:.2f} |{extra}")
        if "baseline" in med:
            ratio_b = med["baseline"] / med["wstap"] if kind == "rtt" else med["wstap"] / med["baseline"]
            baseline_rows.append(f"| {name} | {med['baseline']:,.1f} | {med['wstap']:,.1f} {unit} | {ratio_b:.2f}× "
                                 f"| {per_msg['baseline']:.2f} | {per_msg['wstap']:.2f} | {per_msg['wstap'] - per_msg['baseline']:+.2f} |")
        if "ui-reader" in med:
            def versus(a, b):
                return med[b] / med[a] if kind == "rtt" else med[a] / med[b]
            ui_rows.append(f"| {name} | {med['wstap']:,.1f} | {med['ui-reader']:,.1f} | {med['ui-stalled']:,.1f} {unit} "
                           f"| {versus('ui-reader', 'wstap'):.2f}× | {versus('ui-stalled', 'wstap'):.2f}× "
                           f"| {per_msg['ui-reader'] - per_msg['wstap']:+.2f} | {per_msg['ui-stalled'] - per_msg['wstap']:+.2f} |")
        if "rules-idle" in med:
            def over(a, b):
                return med[b] / med[a] if kind == "rtt" else med[a] / med[b]
            rule_rows.append(f"| {name} | {med['wstap']:,.1f} | {med['rules-idle']:,.1f} | {med['rules-edit']:,.1f} {unit} "
                             f"| {over('rules-idle', 'wstap'):.2f}× | {per_msg['rules-idle'] - per_msg['wstap']:+.2f} "
                             f"| {over('rules-edit', 'socat'):.2f}× | {per_msg['rules-edit']:.2f} |")

    if ui_rows:
        rss = ", ".join(f"{k} {v:.1f} MB" for k, v in getattr(opts, "ui_rss", {}).items())
        ui_text = f"""
## With the web UI's push stream, same run

**ui-reader**: wstap `--ui` with a reader taking every event of `/api/events` as it comes (curl);
**ui-stalled**: wstap `--ui` with a reader that asked for the stream and stopped reading. Both keep
every record in the UI's store (64 MiB) and follow message boundaries for steering. Target
(issue 13): ≥ 0.9× of wstap alone. Peak RSS: {rss}.

| workload | wstap | ui-reader | ui-stalled | reader/wstap | stalled/wstap | reader CPU µs/msg over wstap | stalled CPU µs/msg over wstap |
|---|---|---|---|---|---|---|---|
""" + "\n".join(ui_rows) + "\n"
    else:
        ui_text = ""
    jsonl_lines = "\n".join(f"- {name}: {size / 1e6:,.1f} MB" for name, size in jsonl_bytes.items())
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = f"""# Performance

Measured by `python3 scripts/bench/run.py --reps {opts.reps}` on {stamp}, {platform.machine()},
{os.cpu_count()} cores, release build. Load generator and echo server: `scripts/bench/wsbench.c` (C).
Targets, interleaved in one run: **direct** (client to echo server), **socat** tuned
(`-b 262144`, `nodelay`), **wstap** (`--jsonl` to a file, console off). Medians of {opts.reps} runs.

Ratios are wstap against direct and against socat: for throughput higher is better (1.00× = as fast);
for RTT it is the other's latency over wstap's (1.00× = as low). CPU columns are proxy CPU
time (user + system) per message relayed, counting both directions, in µs (per handshake for
the handshake row).

| workload | direct | socat | wstap | wstap/direct | wstap/socat | socat µs/msg | wstap µs/msg |
|---|---|---|---|---|---|---|---|
""" + "\n".join(rows) + f"""

wstap peak RSS over the whole run: **{wstap_rss:.1f} MB** (VmHWM).

JSONL written by one wstap run of each workload (the file is emptied between runs to bound disk use):
{jsonl_lines}

Targets (issue 2): throughput ≥ 1.0× socat in every workload, p50 RTT no worse than socat,
≤ 3 µs proxy CPU per small message, peak RSS ≤ 50 MB.
"""
    text += ui_text
    if baseline_rows:
        text += f"""
## Against the baseline `{opts.baseline}`, same run

| workload | baseline | wstap | wstap/baseline | baseline µs/msg | wstap µs/msg | difference µs/msg |
|---|---|---|---|---|---|---|
""" + "\n".join(baseline_rows) + "\n"
    if rule_rows:
        text += """
## Rules loaded, same run

**rules-idle**: ten rules that match none of the load's messages (text contains, JSON fields, pings,
size); **rules-edit**: one rule, `op=text => replace /abc/ "xyz"`, that edits every text message.
Targets (issue 11): rules that match nothing cost ≤ 10% throughput and ≤ 0.5 µs CPU per message
against wstap without rules; a replace on every message keeps ≥ 0.5× socat.

| workload | wstap | rules-idle | rules-edit | idle/wstap | idle CPU µs/msg over wstap | edit/socat | edit µs/msg |
|---|---|---|---|---|---|---|---|
""" + "\n".join(rule_rows) + "\n"
    # Keep the hand-written analysis below the marker across runs.
    marker = "<!-- analysis: kept by run.py -->"
    out = Path(opts.out)
    if out.exists() and marker in out.read_text():
        text += "\n" + marker + out.read_text().split(marker, 1)[1]
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
