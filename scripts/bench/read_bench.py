#!/usr/bin/env python3
"""`wstap read` against tshark on the same captures, interleaved in one run:

    python3 scripts/bench/read_bench.py [--reps 3] [--megabytes 100] [--out docs/performance.md]

Captures come from make_captures.py (kept in .build/bench/captures and reused). wstap runs as a user
would to keep everything: `wstap read FILE --jsonl OUT -q` (release build, records to a file). tshark
runs the field export the issue names: `tshark -r FILE -Y websocket -T fields -e websocket.opcode
-e websocket.payload_length`, output to a file. Wall time is the median of the reps; peak RSS comes from
wait4's rusage for each run. As a cross-check the frame count from wstap's records must equal the number
of opcodes tshark printed, or the run fails.

The results replace the block between the read-benchmark markers in docs/performance.md (appended if
missing), so run.py's relay table above stays untouched.
"""
import argparse
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CAPTURES = ROOT / ".build" / "bench" / "captures"
START = "<!-- read benchmark: written by scripts/bench/read_bench.py -->"
END = "<!-- read benchmark: end -->"


def timed(args, stdout):
    """Runs args; returns (seconds, peak RSS in MB)."""
    started = time.monotonic()
    proc = subprocess.Popen(args, stdout=stdout, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{args[0]} failed with {proc.returncode}: {' '.join(map(str, args))}")
    return seconds, usage.ru_maxrss / 1024


def frames_in_jsonl(path):
    count = 0
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(b'{"v":1,"type":"frame"'):
                count += 1
    return count


def frames_in_tsv(path):
    count = 0
    with open(path) as f:
        for line in f:
            opcodes = line.split("\t")[0].strip()
            if opcodes:
                count += len(opcodes.split(","))
    return count


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--out", default=str(ROOT / "docs" / "performance.md"))
    opts = parser.parse_args()

    subprocess.run(["swift", "build", "-c", "release", "--product", "wstap"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    wstap = ROOT / ".build" / "release" / "wstap"
    captures = {name: CAPTURES / f"{name}.pcap" for name in ("mixed", "deflate")}
    marker = CAPTURES / f"made-{opts.megabytes}MB"
    if not marker.exists():
        subprocess.run([sys.executable, str(ROOT / "scripts/bench/make_captures.py"), str(CAPTURES), "--megabytes", str(opts.megabytes)], check=True)
        marker.touch()
    # The memory bound must not depend on file size: also read a quarter-size capture.
    small = CAPTURES / "small"
    if not (small / "mixed.pcap").exists():
        subprocess.run([sys.executable, str(ROOT / "scripts/bench/make_captures.py"), str(small), "--megabytes", str(max(1, opts.megabytes // 4))],
                       check=True, stdout=subprocess.DEVNULL)

    scratch = CAPTURES / "out"
    scratch.mkdir(exist_ok=True)
    results = {}
    for name, path in captures.items():
        samples = {"wstap": [], "tshark": []}
        rss = {"wstap": 0.0, "tshark": 0.0}
        jsonl, tsv = scratch / f"{name}.jsonl", scratch / f"{name}.tsv"
        for rep in range(opts.reps):
            order = ["wstap", "tshark"] if rep % 2 == 0 else ["tshark", "wstap"]
            for tool in order:
                if tool == "wstap":
                    seconds, peak = timed([str(wstap), "read", str(path), "--jsonl", str(jsonl), "-q"], subprocess.DEVNULL)
                    if rep < opts.reps - 1:
                        jsonl.unlink()  # bounds disk use; the last one is kept for the frame count
                else:
                    with open(tsv, "w") as out:
                        seconds, peak = timed(["tshark", "-r", str(path), "-Y", "websocket", "-T", "fields",
                                               "-e", "websocket.opcode", "-e", "websocket.payload_length"], out)
                samples[tool].append(seconds)
                rss[tool] = max(rss[tool], peak)
                print(f"{name} {tool} rep {rep + 1}: {seconds:.2f} s, {peak:.1f} MB", flush=True)
        ours, theirs = frames_in_jsonl(jsonl), frames_in_tsv(tsv)
        if ours != theirs:
            sys.exit(f"{name}: wstap recorded {ours} frames, tshark printed {theirs}: the tools disagree")
        results[name] = {
            "size": path.stat().st_size / 1e6, "frames": ours, "jsonl": jsonl.stat().st_size / 1e6,
            "wstap": statistics.median(samples["wstap"]), "tshark": statistics.median(samples["tshark"]),
            "wstap_rss": rss["wstap"], "tshark_rss": rss["tshark"],
        }
        jsonl.unlink()
    small_rss = {}
    for name in captures:
        _, small_rss[name] = timed([str(wstap), "read", str(small / f"{name}.pcap"), "--jsonl", os.devnull, "-q"], subprocess.DEVNULL)

    rows = []
    for name, r in results.items():
        rows.append(f"| {name} | {r['size']:.1f} MB | {r['frames']:,} | {r['tshark']:.2f} s | {r['wstap']:.2f} s | "
                    f"**{r['tshark'] / r['wstap']:.2f}×** | {r['size'] / r['wstap']:.0f} MB/s | {r['tshark_rss']:.0f} MB | "
                    f"{r['wstap_rss']:.1f} MB ({small_rss[name]:.1f} MB at {max(1, opts.megabytes // 4)} MB) | {r['jsonl']:.0f} MB |")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = f"""{START}
## Reading captures: `wstap read` against tshark

Measured by `python3 scripts/bench/read_bench.py --reps {opts.reps} --megabytes {opts.megabytes}` on {stamp},
{platform.machine()}, {os.cpu_count()} cores, release build, tshark {tshark_version()}. Captures from
`scripts/bench/make_captures.py` (see its header: Ethernet, 1,448-byte segments, concurrent sessions;
`deflate` uses permessage-deflate with context takeover on JSON-like payloads). Medians of {opts.reps} interleaved
runs; wstap writes every record to a JSONL file (`--jsonl FILE -q`), tshark writes its fields to a file.
Both tools found the same number of frames in each capture (checked by the script).

| capture | size | frames | tshark | wstap | speed-up | wstap rate | tshark peak RSS | wstap peak RSS | wstap JSONL |
|---|---|---|---|---|---|---|---|---|---|
""" + "\n".join(rows) + f"""

Targets (issue 4): ≥ 3× tshark on the mixed capture, ≥ 5× on the deflate capture, peak RSS ≤ 64 MB
regardless of file size.
{END}"""
    out = Path(opts.out)
    text = out.read_text() if out.exists() else "# Performance\n"
    if START in text and END in text:
        text = text.split(START, 1)[0] + block + text.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    out.write_text(text)
    print(block)


def tshark_version():
    found = re.search(r"\d+\.\d+\.\d+", subprocess.run(["tshark", "--version"], capture_output=True, text=True).stdout)
    return found.group(0) if found else "?"


if __name__ == "__main__":
    main()
