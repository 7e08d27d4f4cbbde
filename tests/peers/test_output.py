"""Console and JSON Lines output as a user sees them: streams, colours, and nothing lost on kill -9."""
import json
import os
import pty
import select
import signal
import socket
import subprocess

from conftest import WSTAP, Wstap, messages
from rawpeers import RawServer, frame, raw_client, recv_until_closed

M = b"\x01\x02\x03\x04"


def echo_once(proxy_port, server, text):
    """The server answers only after it has received the client's frame, as a real echo server does."""
    sock, _ = raw_client(proxy_port)
    sent = frame(1, text, mask=M)
    sock.sendall(sent)
    assert server.connected.wait(30)
    server.wait_received(len(sent))
    server.send(frame(1, b"echo: " + text))
    got = b""
    while len(got) < 2 + len(b"echo: " + text):
        got += sock.recv(65536)
    return sock, got


def test_kill_9_loses_no_record_of_what_a_peer_has_seen(tmp_path, procs):
    server = RawServer()
    proxy = Wstap(tmp_path, f"ws://127.0.0.1:{server.port}")
    procs.append(proxy)
    sock, got = echo_once(proxy.port, server, b"before the kill")
    assert got.endswith(b"echo: before the kill")
    os.kill(proxy.popen.pid, signal.SIGKILL)  # no chance to flush anything
    proxy.popen.wait()
    texts = [(m["from"], m["text"]) for m in messages(proxy.records())]
    assert texts == [("client", "before the kill"), ("server", "echo: before the kill")]
    sock.close()


def test_jsonl_to_stdout_moves_the_console_to_stderr():
    server = RawServer()
    proc = subprocess.Popen([WSTAP, "proxy", "--listen", "127.0.0.1:0", "--upstream", f"ws://127.0.0.1:{server.port}", "--jsonl", "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = proc.stderr.readline()
        port = int(banner.split("127.0.0.1:")[1].split(",")[0])
        sock, _ = echo_once(port, server, b"to stdout")
        sock.shutdown(socket.SHUT_WR)
        assert server.done.wait(30)
        server.shutdown_write()
        recv_until_closed(sock)
        lines = []
        while not any('"type":"end"' in l for l in lines):
            lines.append(proc.stdout.readline())
        records = [json.loads(l) for l in lines]  # every stdout line is JSON, none is console text
        assert any(r["type"] == "message" and r.get("text") == "to stdout" for r in records)
        console = proc.stderr.readline() + proc.stderr.readline()
        assert "open ws://" in console
    finally:
        proc.kill()
        proc.wait()


def run_on_pty(env_extra):
    """Runs wstap with its stdout on a pseudo-terminal; returns the console text for one message."""
    server = RawServer()
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env.update(env_extra)
    proc = subprocess.Popen([WSTAP, "proxy", "--listen", "127.0.0.1:0", "--upstream", f"ws://127.0.0.1:{server.port}"],
                            stdout=slave, stderr=subprocess.PIPE, text=True, env=env)
    os.close(slave)
    try:
        port = int(proc.stderr.readline().split("127.0.0.1:")[1].split(",")[0])
        sock, _ = echo_once(port, server, b"colour?")
        out = b""
        while b"echo: colour?" not in out:
            ready, _, _ = select.select([master], [], [], 30)
            assert ready, f"no console output: {out!r}"
            out += os.read(master, 65536)
        sock.close()
        return out.decode()
    finally:
        proc.kill()
        proc.wait()
        os.close(master)


def test_colours_on_a_terminal_and_never_with_no_color():
    assert "\x1b[" in run_on_pty({"TERM": "xterm"})
    assert "\x1b[" not in run_on_pty({"TERM": "xterm", "NO_COLOR": "1"})


def test_no_colours_when_not_a_terminal(tmp_path):
    server = RawServer()
    log = open(tmp_path / "console.txt", "w")
    proc = subprocess.Popen([WSTAP, "proxy", "--listen", "127.0.0.1:0", "--upstream", f"ws://127.0.0.1:{server.port}"],
                            stdout=log, stderr=subprocess.PIPE, text=True, env={**os.environ, "TERM": "xterm"})
    try:
        port = int(proc.stderr.readline().split("127.0.0.1:")[1].split(",")[0])
        sock, _ = echo_once(port, server, b"plain")
        sock.close()
    finally:
        # Records are written before bytes are forwarded, so the console line exists by now.
        proc.kill()
        proc.wait()
    text = (tmp_path / "console.txt").read_text()
    assert 'text 5 B  "plain"' in text
    assert "\x1b[" not in text
