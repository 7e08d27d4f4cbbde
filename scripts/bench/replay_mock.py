#!/usr/bin/env python3
"""Replay and mock benchmark: wstap replay and wstap mock against the C load generator and echo server.

    python3 scripts/bench/replay_mock.py [--reps 3] [--messages 100000] [--out docs/performance-replay.md]

One recording is made first: the C load generator (one connection, 64 B text, window 32) through
`wstap proxy --max-payload unlimited` to the C echo server, MESSAGES messages each way. Then, REPS
times in rotating order:

  direct      the C load generator against the C echo server (the reference)
  replay      `wstap replay REC --pace asap --diff -q` against the C echo server: wall time from start
              to exit (reading the recording, connecting, sending every message, every echo back, the
              diff of all of them); "replay session" is the same run's session alone, from connected
              to closed, as its summary line says
  mock        the C load generator against `wstap mock --from REC -q`
  mock+journal the same with `--journal FILE` (every client message written as it arrives)

Each row is messages per second and its ratio to `direct` in the same run (median of REPS).
"""
import argparse
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".build" / "bench"
WSTAP = ROOT / ".build" / "release" / "wstap"


def wait_line(stream, pattern):
    regex = re.compile(pattern)
    for line in stream:
        m = regex.search(line)
        if m:
            return m
    raise RuntimeError(f"never printed {pattern}")


def load(port, messages):
    out = subprocess.run([str(BIN / "wsbench"), "load", "127.0.0.1", str(port), "1", "64", "32", str(messages)],
                         check=True, capture_output=True, text=True, timeout=600).stdout
    return float(re.search(r"msgs_per_s ([\d.]+)", out).group(1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--out", default=str(ROOT / "docs" / "performance-replay.md"))
    opts = parser.parse_args()
    BIN.mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(BIN / "wsbench"), str(ROOT / "scripts/bench/wsbench.c")], check=True)
    subprocess.run(["swift", "build", "-c", "release", "--product", "wstap"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)

    tmp = Path(tempfile.mkdtemp(prefix="wstap-replay-bench-"))
    procs = []
    try:
        echo = subprocess.Popen([str(BIN / "wsbench"), "server", "0"], stdout=subprocess.PIPE, text=True)
        procs.append(echo)
        echo_port = int(wait_line(echo.stdout, r"ready (\d+)").group(1))

        recording = tmp / "recording.jsonl"
        proxy = subprocess.Popen([str(WSTAP), "proxy", "--listen", "127.0.0.1:0", "--upstream", f"ws://127.0.0.1:{echo_port}",
                                  "--jsonl", str(recording), "--max-payload", "unlimited", "-q"], stderr=subprocess.PIPE, text=True)
        procs.append(proxy)
        proxy_port = int(wait_line(proxy.stderr, r"listening on 127\.0\.0\.1:(\d+)").group(1))
        load(proxy_port, opts.messages)
        # The recording is complete once the connection's end record is in it.
        deadline = time.monotonic() + 120
        while b'"type":"end"' not in recording.read_bytes()[-4096:]:
            if time.monotonic() > deadline:
                sys.exit("the recording never got its end record")
            time.sleep(0.05)  # polling a file for a condition
        proxy.terminate()
        size = recording.stat().st_size

        def start_mock(*extra):
            mock = subprocess.Popen([str(WSTAP), "mock", "--from", str(recording), "--listen", "127.0.0.1:0", "-q", *extra],
                                    stderr=subprocess.PIPE, text=True)
            procs.append(mock)
            return int(wait_line(mock.stderr, r"mock listening on 127\.0\.0\.1:(\d+)").group(1))
        mock_port = start_mock()
        journal = tmp / "journal.jsonl"
        journal_port = start_mock("--journal", str(journal))

        session_rates = []

        def replay():
            started = time.monotonic()
            done = subprocess.run([str(WSTAP), "replay", str(recording), "--to", f"ws://127.0.0.1:{echo_port}", "--pace", "asap", "--diff", "-q"],
                                  capture_output=True, text=True, timeout=600)
            elapsed = time.monotonic() - started
            if done.returncode != 0 or f"received {opts.messages} server messages" not in done.stderr:
                sys.exit(f"replay failed: {done.stderr}")
            # The session's own time (connected to closed), as the summary line gives it.
            session_rates.append(opts.messages / float(re.search(r" in ([\d.]+) s", done.stderr).group(1)))
            return opts.messages / elapsed

        def read_only():
            started = time.monotonic()
            subprocess.run([str(WSTAP), "read", str(recording), "-q"], check=True, capture_output=True, timeout=600)
            return time.monotonic() - started

        runs = {
            "direct": lambda: load(echo_port, opts.messages),
            "replay": replay,
            "mock": lambda: load(mock_port, opts.messages),
            "mock+journal": lambda: load(journal_port, opts.messages),
        }
        results = {name: [] for name in runs}
        reads = []
        order = list(runs)
        for rep in range(opts.reps):
            for name in order[rep % len(order):] + order[:rep % len(order)]:
                value = runs[name]()
                results[name].append(value)
                print(f"rep {rep} {name:13} {value:,.0f} msgs/s", flush=True)
                if name == "mock+journal":
                    os.truncate(journal, 0)
            reads.append(read_only())
    finally:
        for p in procs:
            p.terminate()

    results["replay session"] = session_rates
    med = {name: statistics.median(values) for name, values in results.items()}
    lines = [
        "# Replay and mock benchmark",
        "",
        f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()}, {os.cpu_count()} cores; "
        f"{opts.reps} interleaved reps, medians. Recording: {opts.messages:,} messages each way, 64 B text, "
        f"{size / 1e6:.1f} MB of JSON Lines. Reproduce: `python3 scripts/bench/replay_mock.py`.",
        "",
        "| run | messages/s | × direct | target |",
        "|---|---:|---:|---|",
    ]
    targets = {"replay": "≥ 0.5×", "replay session": "≥ 0.5×", "mock": "≥ 0.5×"}
    for name in ["direct", "replay", "replay session", "mock", "mock+journal"]:
        lines.append(f"| {name} | {med[name]:,.0f} | {med[name] / med['direct']:.2f}× | {targets.get(name, '')} |")
    lines += ["", "`replay` is the whole command, `replay session` its session alone (connected to closed, from the summary line)."]
    lines += ["", f"Reading the recording alone (`wstap read REC -q`) took {statistics.median(reads):.2f} s of the replay's "
              f"{opts.messages / med['replay']:.2f} s.", ""]
    Path(opts.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
