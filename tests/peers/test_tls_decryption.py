"""Decrypting captured wss:// traffic with the key log a real client writes (SSLKEYLOGFILE format), as
Wireshark does: Python `websockets` over OpenSSL, TLS 1.3 and TLS 1.2 with AES-128-GCM, AES-256-GCM and
ChaCha20-Poly1305. The capture is live (`wstap capture --keylog`, while the client is still appending its
keys), then the saved packets are read offline with the same key log; both must give the messages that
were sent. Without a key log, wstap says why the connection stayed encrypted."""
import asyncio
import os
import signal
import ssl
import subprocess

import pytest
from websockets.asyncio.client import connect

from conftest import HERE, PEERS, PYTHON, WSTAP, Proc, messages, payload_bytes, read_records, wait_ended

TEST_CA = HERE.parent.parent / "certs" / "test" / "test-ca.pem"
SENT = ["secret text over TLS", bytes(range(256)) * 80, "ünïcödé " * 3000]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="live capture needs root; the test suite runs as root in CI")


async def conversation(port, keylog, version, cipher):
    context = ssl.create_default_context(cafile=str(TEST_CA))
    context.keylog_filename = str(keylog)
    context.minimum_version = context.maximum_version = version
    if cipher:
        context.set_ciphers(cipher)
    async with connect(f"wss://localhost:{port}/secret", ssl=context, max_size=None) as ws:
        for payload in SENT:
            await ws.send(payload)
            assert await ws.recv() == payload
        await ws.close(1000, "tls done")


def check_decrypted(records):
    opens = [r for r in records if r["type"] == "open"]
    assert len(opens) == 1
    assert opens[0]["url"].startswith("wss://localhost:") and opens[0]["client_tls"]["sni"] == "localhost"
    for sender in ("client", "server"):
        data = [payload_bytes(m) for m in messages(records, sender=sender) if m["opcode"] in (1, 2)]
        assert data == [p.encode() if isinstance(p, str) else p for p in SENT]
    assert not [r for r in records if r["type"] in ("gap", "diagnostic")]


@pytest.mark.parametrize("version, cipher", [
    (ssl.TLSVersion.TLSv1_3, None),
    (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-GCM-SHA256"),
    (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES256-GCM-SHA384"),
    (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-CHACHA20-POLY1305"),
], ids=["tls1.3", "tls1.2-aes128gcm", "tls1.2-aes256gcm", "tls1.2-chacha20"])
def test_captured_wss_is_decrypted_live_and_offline_with_the_clients_key_log(peer, procs, tmp_path, version, cipher):
    port = peer(PYTHON, str(PEERS / "websockets_tls_echo_server.py"))
    keylog = tmp_path / "sslkeys.log"
    keylog.touch()  # empty at start: the client appends while wstap captures
    live_jsonl, saved = tmp_path / "live.jsonl", tmp_path / "wss.pcap"
    capture = Proc([WSTAP, "capture", "-i", "lo", "-f", f"tcp port {port}", "--keylog", str(keylog),
                    "--write", str(saved), "--jsonl", str(live_jsonl), "-q"], stream="stderr")
    procs.append(capture)
    capture.wait_for(r"capturing on lo")
    asyncio.run(conversation(port, keylog, version, cipher))
    live = wait_ended(live_jsonl)
    capture.popen.send_signal(signal.SIGINT)
    assert capture.popen.wait(timeout=30) == 0
    check_decrypted(live)

    offline_jsonl = tmp_path / "offline.jsonl"
    result = subprocess.run([WSTAP, "read", str(saved), "--keylog", str(keylog), "--jsonl", str(offline_jsonl), "-q"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "not decrypted" not in result.stderr, result.stderr
    check_decrypted(read_records(offline_jsonl))

    # Without the key log the connection is skipped, and wstap says so and how to fix it.
    plain = subprocess.run([WSTAP, "read", str(saved), "--jsonl", "-", "-q"], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0 and plain.stdout == ""
    assert "1 TLS connection not decrypted: no key log given (--keylog FILE" in plain.stderr

    # A key log without this connection's secrets: named as such, not a crash or garbage.
    other = tmp_path / "other.log"
    other.write_text("CLIENT_RANDOM " + "00" * 32 + " " + "11" * 48 + "\n")
    wrong = subprocess.run([WSTAP, "read", str(saved), "--keylog", str(other), "--jsonl", "-", "-q"], capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 0 and wrong.stdout == ""
    assert "not decrypted: no key for client random" in wrong.stderr


def test_unreadable_key_log_is_one_clear_line(tmp_path):
    result = subprocess.run([WSTAP, "read", "/dev/null", "--keylog", str(tmp_path / "missing.log")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("wstap: --keylog: cannot read") and "SSLKEYLOGFILE" in result.stderr
