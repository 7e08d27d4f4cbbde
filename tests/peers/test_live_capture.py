"""`wstap capture`: live libpcap capture on loopback while real peers talk through `wstap proxy`.
The capture's records equal the proxy's own (the live/offline invariant, live), its --write file reads
back into the same records, Ctrl-C flushes and summarises, and every way to get it wrong says how to fix
it. Needs root (the test environment and CI run as root); a non-root run is tested with setpriv."""
import asyncio
import os
import re
import shutil
import signal
import subprocess

import pytest
from websockets.asyncio.client import connect

from conftest import PEERS, PYTHON, WSTAP, Proc, messages, read_records, wait_ended

KEYS = ("from", "opcode", "frames", "wire_length", "length", "compressed", "text", "base64", "code", "reason", "truncated", "offset")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="live capture needs root; the test suite runs as root in CI")


async def conversation(url):
    async with connect(url, max_size=None) as ws:
        for payload in ["live capture", bytes(range(256)) * 400, "é" * 40000]:
            await ws.send(payload)
            assert await ws.recv() == payload
        await ws.send(["part one, ", "part two"])
        assert await ws.recv() == "part one, part two"
        await (await ws.ping(b"live"))
        await ws.close(1000, "bye")


def comparable(records):
    return [{k: m[k] for k in KEYS if k in m} for m in messages(records)]


def start_capture(tmp_path, procs, bpf, *extra):
    jsonl = tmp_path / "capture.jsonl"
    proc = Proc([WSTAP, "capture", "-i", "lo", "-f", bpf, "--jsonl", str(jsonl), "-q", *extra], stream="stderr")
    procs.append(proc)
    proc.wait_for(r"capturing on lo")  # printed once the capture is active and filtered
    return proc, jsonl


def test_live_capture_records_equal_the_proxy_records_and_ctrl_c_summarises(wstap, peer, procs, tmp_path):
    port = peer(PYTHON, str(PEERS / "websockets_echo_server.py"))
    proxy = wstap(f"ws://127.0.0.1:{port}")
    saved = tmp_path / "raw.pcap"
    # Only wstap's upstream leg: it carries exactly the bytes the proxy's records describe.
    capture, jsonl = start_capture(tmp_path, procs, f"tcp port {port}", "--write", str(saved))

    asyncio.run(conversation(proxy.url + "/live"))
    live = proxy.wait_ended()
    captured = wait_ended(jsonl)  # records appear while the capture runs, not at exit

    capture.popen.send_signal(signal.SIGINT)
    assert capture.popen.wait(timeout=30) == 0
    summary = capture.wait_for(r"captured ([\d,]+) packets .* (\d+) connection dissected; dropped (\d+) in the kernel")
    assert int(summary.group(1).replace(",", "")) >= 10
    assert summary.group(3) == "0"

    assert len(comparable(live)) >= 10
    assert comparable(captured) == comparable(live)
    opens = [r for r in captured if r["type"] == "open"]
    assert len(opens) == 1 and opens[0]["server"] == f"127.0.0.1:{port}"
    assert not [r for r in captured if r["type"] in ("gap", "diagnostic")]

    # The raw packets it saved read back into the same records.
    offline = tmp_path / "offline.jsonl"
    result = subprocess.run([WSTAP, "read", str(saved), "--jsonl", str(offline), "-q"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert comparable(read_records(offline)) == comparable(captured)
    if shutil.which("tshark"):
        frames = subprocess.run(["tshark", "-r", str(saved), "-d", f"tcp.port=={port},http", "-Y", "websocket"],
                                capture_output=True, text=True, timeout=120)
        assert frames.returncode == 0 and "WebSocket" in frames.stdout


def test_count_stops_by_itself_and_ctrl_c_stops_a_quiet_interface(wstap, peer, procs, tmp_path):
    port = peer(PYTHON, str(PEERS / "websockets_echo_server.py"))
    counted, jsonl = start_capture(tmp_path, procs, f"tcp port {port}", "-c", "3")
    asyncio.run(conversation(f"ws://127.0.0.1:{port}/direct"))
    assert counted.popen.wait(timeout=60) == 0
    assert counted.wait_for(r"captured (\d+) packets").group(1) == "3"

    # Nothing matches this filter: the capture must still notice Ctrl-C (pcap_next_ex alone would block).
    quiet, _ = start_capture(tmp_path, procs, "tcp port 9 and host 127.0.0.9")
    quiet.popen.send_signal(signal.SIGINT)
    assert quiet.popen.wait(timeout=30) == 0
    quiet.wait_for(r"captured 0 packets")


@pytest.mark.parametrize("args, message", [
    (["-i", "nosuch0"], r"there is no interface 'nosuch0'\. List them with `ip link`"),
    (["-i", "lo", "-f", "tcp prt 80"], r"--bpf 'tcp prt 80' is not a valid capture filter: .*man pcap-filter"),
    (["-i", "lo", "--write", "/nonexistent-dir/x.pcap"], r"--write: cannot create '/nonexistent-dir/x\.pcap'.*directory exists"),
    (["-i", "lo", "-c", "0"], r"--count must be 1 or more"),
], ids=["no-such-interface", "bad-filter", "unwritable-file", "bad-count"])
def test_capture_mistakes_get_one_line_that_says_how_to_fix_them(args, message):
    result = subprocess.run([WSTAP, "capture", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert re.search(message, result.stderr), result.stderr
    assert "Backtrac" not in result.stderr and "Fatal" not in result.stderr


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv is in util-linux")
def test_without_root_it_says_what_is_needed(tmp_path):
    # An unprivileged user with no capabilities, running a copy of wstap it may execute.
    binary = tmp_path / "wstap"
    shutil.copy(WSTAP, binary)
    os.chmod(tmp_path, 0o755)
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                             str(binary), "capture", "-i", "lo"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "needs root or CAP_NET_RAW" in result.stderr and "setcap cap_net_raw" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
