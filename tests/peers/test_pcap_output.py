"""--pcap: the decrypted cleartext of both legs, read back by tshark (the oracle here): every message
wstap recorded is found by tshark with the same payload, on the client leg and on the upstream leg."""
import asyncio
import shutil
import signal
import subprocess

import pytest
from websockets.asyncio.client import connect

from conftest import PEERS, PYTHON, messages, stop_tcpdump
from test_tls import TEST_CA, client_context, start_tls_server

TSHARK = shutil.which("tshark")
TEXTS = ["first message", "ünïcödé ✓", "x" * 3000]


def tshark_texts(pcap, ports):
    decode = []
    for port in ports:
        decode += ["-d", f"tcp.port=={port},http"]
    out = subprocess.run([TSHARK, "-r", str(pcap), *decode, "-Y", "websocket.payload.text", "-T", "fields",
                          "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "websocket.payload.text"],
                         capture_output=True, text=True, timeout=120).stdout
    rows = [line.split("\t") for line in out.splitlines() if line]
    return [(int(src), int(dst), text.replace("\\n", "\n")) for src, dst, text in rows]


async def chat(url, **kwargs):
    async with connect(url, max_size=None, **kwargs) as ws:
        for text in TEXTS:
            await ws.send(text)
            assert await ws.recv() == text


def stop_cleanly(proxy):
    proxy.popen.send_signal(signal.SIGINT)
    assert proxy.popen.wait(timeout=30) == 0


@pytest.mark.skipif(TSHARK is None, reason="tshark is installed by scripts/install-test-peers.sh")
def test_intercepted_wss_decrypts_into_the_pcap(wstap, peer, tmp_path):
    port = start_tls_server(peer)
    ca, pcap = tmp_path / "ca", tmp_path / "decrypted.pcap"
    proxy = wstap(None, ["--ca-dir", str(ca), "--upstream-ca", str(TEST_CA), "--pcap", str(pcap)])
    asyncio.run(chat(f"wss://localhost:{port}/p", ssl=client_context(ca / "wstap-ca.pem"), proxy=f"http://127.0.0.1:{proxy.port}"))
    records = proxy.wait_ended()
    stop_cleanly(proxy)

    recorded = [m["text"] for m in messages(records) if m["opcode"] == 1]
    assert recorded == [t for t in TEXTS for _ in ("client", "server")]
    seen = tshark_texts(pcap, [port, proxy.port])
    upstream_leg = [text for src, dst, text in seen if port in (src, dst)]
    client_leg = [text for src, dst, text in seen if proxy.port in (src, dst)]
    assert upstream_leg == recorded  # what the server exchanged
    assert client_leg == recorded  # what the browser/app exchanged, decrypted


@pytest.mark.skipif(TSHARK is None, reason="tshark is installed by scripts/install-test-peers.sh")
def test_reverse_mode_pcap_has_both_legs(wstap, peer, tmp_path):
    port = peer(PYTHON, str(PEERS / "websockets_echo_server.py"))
    pcap = tmp_path / "reverse.pcap"
    proxy = wstap(f"ws://127.0.0.1:{port}", ["--pcap", str(pcap)])
    asyncio.run(chat(proxy.url + "/r"))
    records = proxy.wait_ended()
    stop_cleanly(proxy)
    recorded = [m["text"] for m in messages(records) if m["opcode"] == 1]
    seen = tshark_texts(pcap, [port, proxy.port])
    assert [t for s, d, t in seen if port in (s, d)] == recorded
    assert [t for s, d, t in seen if proxy.port in (s, d)] == recorded


@pytest.mark.skipif(TSHARK is None or shutil.which("tcpdump") is None, reason="tshark and tcpdump come from scripts/install-test-peers.sh")
def test_keylog_decrypts_a_capture_of_the_real_traffic(wstap, peer, procs, tmp_path):
    """tcpdump records the real, encrypted loopback traffic; wstap's --keylog lets tshark decrypt both legs."""
    from conftest import Proc
    port = start_tls_server(peer)
    ca, keys, capture = tmp_path / "ca", tmp_path / "keys.log", tmp_path / "real.pcap"
    proxy = wstap(None, ["--ca-dir", str(ca), "--upstream-ca", str(TEST_CA), "--keylog", str(keys)])
    # --immediate-mode: otherwise the last packets can still be in the kernel buffer when tcpdump stops.
    # -Z root: Debian's tcpdump otherwise drops to its own user, which cannot write into the temp dir.
    dump = Proc(["tcpdump", "-i", "lo", "-B", "32768", "-U", "--immediate-mode", "-Z", "root", "-w", str(capture), f"tcp port {port} or tcp port {proxy.port}"],
                stream="stderr")
    procs.append(dump)
    dump.wait_for(r"listening on lo")
    asyncio.run(chat(f"wss://localhost:{port}/real", ssl=client_context(ca / "wstap-ca.pem"), proxy=f"http://127.0.0.1:{proxy.port}"))
    records = proxy.wait_ended()
    stop_tcpdump(dump, capture, fins=4)  # client leg and upstream leg, closed both ways

    out = subprocess.run([TSHARK, "-r", str(capture), "-o", f"tls.keylog_file:{keys}", "-d", f"tcp.port=={port},tls",
                          "-d", f"tcp.port=={proxy.port},http", "-Y", "websocket.payload.text", "-T", "fields",
                          "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "websocket.payload.text"],
                         capture_output=True, text=True, timeout=120).stdout
    seen = [line.split("\t") for line in out.splitlines() if line]
    recorded = [m["text"] for m in messages(records) if m["opcode"] == 1]
    assert [t for s, d, t in seen if str(port) in (s, d)] == recorded  # wstap <-> server, decrypted
    assert [t for s, d, t in seen if str(proxy.port) in (s, d)] == recorded  # client <-> wstap, decrypted


def test_decrypted_pcap_reads_back_into_the_same_records(wstap, peer, tmp_path):
    """wstap's own --pcap output (BSD loopback link type) through `wstap read`: same messages as live."""
    import json
    from conftest import WSTAP
    port = start_tls_server(peer)
    ca, pcap, offline_jsonl = tmp_path / "ca", tmp_path / "decrypted.pcap", tmp_path / "offline.jsonl"
    proxy = wstap(None, ["--ca-dir", str(ca), "--upstream-ca", str(TEST_CA), "--pcap", str(pcap)])
    asyncio.run(chat(f"wss://localhost:{port}/back", ssl=client_context(ca / "wstap-ca.pem"), proxy=f"http://127.0.0.1:{proxy.port}"))
    live = proxy.wait_ended()
    stop_cleanly(proxy)
    result = subprocess.run([WSTAP, "read", str(pcap), "--jsonl", str(offline_jsonl), "-q"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    offline = [json.loads(line) for line in offline_jsonl.read_text().splitlines()]
    live_texts = [(m["from"], m["text"]) for m in messages(live) if m["opcode"] == 1]
    legs = {r["conn"] for r in offline if r["type"] == "open"}
    assert len(legs) == 2  # the client leg and the upstream leg
    for conn in legs:
        assert [(m["from"], m["text"]) for m in messages(offline, conn=conn) if m["opcode"] == 1] == live_texts
