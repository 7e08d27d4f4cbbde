#!/usr/bin/env python3
"""Memory per connection: wstap's RSS with N WebSocket connections open through it, and after they close.

    python3 scripts/bench/connections.py [--connections 10000] [--wstap .build/release/wstap]

Python websockets on both ends (client in this process, echo server in a child); wstap runs with
--jsonl to a file, as users run it. RSS is VmRSS from /proc; each phase waits for its condition
(connections open, echoes back, end records written), never for time. The proxy holds two
descriptors per connection, so N is capped by the hard descriptor limit (shown when it bites).
"""
import argparse
import asyncio
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parents[2]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def sockets(pid):
    """How many sockets the process holds."""
    held = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            held += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except FileNotFoundError:
            pass  # closed while we looked
    return held


def open_sockets(pid, baseline):
    """What the proxy still holds beyond its idle sockets: TCP states of its sockets, from ss."""
    held = sockets(pid)
    states = subprocess.run(["ss", "-tanpH"], capture_output=True, text=True).stdout.splitlines()
    counts = {}
    for line in states:
        if f"pid={pid}," in line:
            counts[line.split()[0]] = counts.get(line.split()[0], 0) + 1
    return f": {held} sockets against {baseline} when idle; its TCP sockets by state: {counts}"


def ends(path):
    with open(path) as f:
        return sum(1 for line in f if '"type":"end"' in line)


def wait_for(condition, what, timeout=600, explain=lambda: ""):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            sys.exit(f"connections.py: timed out waiting for {what}{explain()}")
        time.sleep(0.05)  # polling a condition, not timing anything


async def run(url, count, proxy_pid, jsonl, report):
    gate = asyncio.Semaphore(256)

    async def one(i):
        async with gate:
            return await connect(f"{url}/c{i}", ping_interval=None, compression=None, open_timeout=120)

    # Sockets, not all descriptors: wstap opens its signal and timer descriptors as it starts up,
    # which under load can be after the listening line.
    idle_sockets = sockets(proxy_pid)
    report("idle, before any connection", rss_kib(proxy_pid))
    connections = await asyncio.gather(*(one(i) for i in range(count)))
    report(f"{count} connections open (handshakes done)", rss_kib(proxy_pid))
    for ws in connections:
        await ws.send("x" * 64)
    for ws in connections:
        await ws.recv()
    report(f"{count} connections, one 64 B echo each", rss_kib(proxy_pid))
    await asyncio.gather(*(ws.close() for ws in connections))
    wait_for(lambda: ends(jsonl) >= count, "the end records")
    report("all closed (end records written)", rss_kib(proxy_pid))
    # When its last connection closes wstap trims its heap on a background queue: once every socket
    # is gone, the lowest RSS of the next two seconds is what it keeps.
    wait_for(lambda: sockets(proxy_pid) <= idle_sockets, "the sockets to close",
             explain=lambda: open_sockets(proxy_pid, idle_sockets))
    lowest = rss_kib(proxy_pid)
    for _ in range(40):
        time.sleep(0.05)
        lowest = min(lowest, rss_kib(proxy_pid))
    report("all closed, heap trimmed", lowest)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--wstap", default=str(ROOT / ".build" / "release" / "wstap"))
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    count = min(args.connections, (hard - 300) // 2)
    if count < args.connections:
        print(f"hard descriptor limit {hard}: {count} connections instead of {args.connections}")
    server = subprocess.Popen([sys.executable, str(ROOT / "tests/peers/peers/websockets_echo_server.py"), "--no-compression"],
                              stdout=subprocess.PIPE, text=True)
    port = int(re.match(r"ready (\d+)", server.stdout.readline()).group(1))
    jsonl = Path(f"/tmp/wstap-connections-{os.getpid()}.jsonl")
    proxy = subprocess.Popen([args.wstap, "proxy", "--listen", "127.0.0.1:0", "--upstream", f"ws://127.0.0.1:{port}",
                              "--jsonl", str(jsonl), "-q"], stderr=subprocess.PIPE, text=True)
    proxy_port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", proxy.stderr.readline()).group(1))
    rows = []

    def report(phase, sample):
        rows.append((phase, *sample))
        print(f"{phase}: RSS {sample[0] / 1024:.1f} MiB (peak {sample[1] / 1024:.1f} MiB)", flush=True)

    try:
        asyncio.run(run(f"ws://127.0.0.1:{proxy_port}", count, proxy.pid, jsonl, report))
    finally:
        proxy.terminate()
        server.terminate()
        jsonl.unlink(missing_ok=True)
    base, loaded = rows[0][1], rows[1][1]
    print(f"\n| phase | RSS MiB |\n|---|---:|")
    for phase, now, _ in rows:
        print(f"| {phase} | {now / 1024:.1f} |")
    print(f"\n{(loaded - base) / count:.1f} KiB per open connection; peak {rows[-1][2] / 1024:.1f} MiB; "
          f"{(rows[-1][1] - base) / 1024:.1f} MiB above idle after all closed")


if __name__ == "__main__":
    main()
