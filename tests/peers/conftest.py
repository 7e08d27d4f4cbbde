"""Helpers for tests that run wstap between real third-party WebSocket peers over loopback.

Synchronisation is by what processes print (a "ready PORT" line, wstap's "listening on" banner) and by
waiting for records to appear in the JSONL file, never by sleeping.
"""
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent
PEERS = HERE / "peers"
WSTAP = os.environ.get("WSTAP_BIN", str(HERE.parent.parent / ".build" / "debug" / "wstap"))
DEADLINE = 60.0  # seconds: a bound so a broken build fails instead of hanging CI, not a timing assertion


class Proc:
    """A child process whose output lines are read on a thread so tests can wait for a line."""

    def __init__(self, args, stream="stdout", env=None):
        self.args = args
        self.popen = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, bufsize=1
        )
        self.lines = queue.Queue()
        self.seen = []
        for name in ("stdout", "stderr"):
            threading.Thread(target=self._pump, args=(getattr(self.popen, name), name), daemon=True).start()
        self.stream = stream

    def _pump(self, pipe, name):
        for line in pipe:
            self.lines.put((name, line.rstrip("\n")))
        self.lines.put((name, None))

    def wait_for(self, pattern, stream=None):
        stream = stream or self.stream
        regex = re.compile(pattern)
        deadline = time.monotonic() + DEADLINE
        closed = set()
        while time.monotonic() < deadline:
            try:
                name, line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                closed.add(name)
                if len(closed) == 2:
                    break
                continue
            self.seen.append(f"{name}: {line}")
            if name == stream:
                m = regex.search(line)
                if m:
                    return m
        raise AssertionError(f"{self.args[0]} never printed /{pattern}/; output:\n" + "\n".join(self.seen[-40:]))

    def output(self):
        """Stops the process and returns every line it printed, as "stdout: …" / "stderr: …"."""
        self.stop()
        closed = 0
        while closed < 2:
            name, line = self.lines.get(timeout=DEADLINE)
            if line is None:
                closed += 1
            else:
                self.seen.append(f"{name}: {line}")
        return self.seen

    def stop(self):
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


class Wstap(Proc):
    def __init__(self, tmp_path, upstream=None, extra=()):
        self.jsonl = tmp_path / f"wstap-{id(self)}.jsonl"
        args = [WSTAP, "proxy", "--listen", "127.0.0.1:0", "--jsonl", str(self.jsonl), "-q", *extra]
        if upstream:
            args += ["--upstream", upstream]
        super().__init__(args, stream="stderr")
        m = self.wait_for(r"listening on 127\.0\.0\.1:(\d+)")
        self.port = int(m.group(1))
        self.url = f"ws://127.0.0.1:{self.port}"

    def records(self):
        return read_records(self.jsonl)

    def wait_records(self, condition, what="records"):
        return wait_records(self.jsonl, condition, what)

    def wait_ended(self, count=1):
        return wait_ended(self.jsonl, count)


def read_records(path):
    """The file's complete records. A line still being written (a large one goes out in more than
    one write) has no newline yet and is not read: a reader tailing the file sees it next time."""
    if not path.exists():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n") and line.strip()]


def wait_records(path, condition, what="records"):
    """Waits until condition(records) holds for the JSONL file at path: records are written as events happen."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        recs = read_records(path)
        if condition(recs):
            return recs
        time.sleep(0.02)  # polling a file for a condition; the assertion is on content, not time
    raise AssertionError(f"timed out waiting for {what}; last records: {read_records(path)[-10:]}")


def wait_ended(path, count=1):
    return wait_records(path, lambda r: sum(1 for x in r if x["type"] == "end") >= count, f"{count} end record(s)")


def stop_tcpdump(dump, path, fins):
    """Stops a tcpdump writing `path` once its file holds `fins` FIN segments. tcpdump exits on SIGINT
    without draining what the kernel still buffers, so stopping it as soon as the peers are done can
    lose the end of the conversation (this made capture tests fail now and then)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        # Parsed from tcpdump's own listing: a `tcp[tcpflags]` filter would only match IPv4.
        out = subprocess.run(["tcpdump", "-r", str(path), "-nn"], capture_output=True, text=True, timeout=60).stdout
        found = sum(1 for line in out.splitlines() if re.search(r"Flags \[[^\]]*F", line))
        if found >= fins:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"tcpdump wrote {found} of {fins} FINs to {path}")
        time.sleep(0.05)  # polling a file for a condition, not waiting for time to pass
    dump.popen.send_signal(signal.SIGINT)
    dump.popen.wait(timeout=30)


def start_peer(*args, env=None):
    """Starts a peer script that prints 'ready PORT' and returns (proc, port)."""
    proc = Proc(list(args), env=env)
    port = int(proc.wait_for(r"^ready (\d+)").group(1))
    return proc, port


@pytest.fixture
def procs():
    started = []
    yield started
    for p in started:
        p.stop()


@pytest.fixture
def wstap(tmp_path, procs):
    def make(upstream=None, extra=()):
        w = Wstap(tmp_path, upstream, extra)
        procs.append(w)
        return w
    return make


@pytest.fixture(scope="session")
def generated_captures(tmp_path_factory):
    """An 8 MB mixed and an 8 MB deflate capture from the read benchmark's generator (24 concurrent
    sessions, fragments, ping/pong), made once for every test that reads them."""
    out = tmp_path_factory.mktemp("generated")
    subprocess.run([sys.executable, str(HERE.parent.parent / "scripts/bench/make_captures.py"), str(out), "--megabytes", "8"],
                   check=True, capture_output=True, timeout=300)
    return out


@pytest.fixture
def peer(procs):
    def make(*args, env=None):
        proc, port = start_peer(*args, env=env)
        procs.append(proc)
        return port
    return make


PYTHON = sys.executable
NODE_ENV = {**os.environ, "NODE_PATH": os.environ.get("NODE_PATH", "/usr/share/nodejs")}


def messages(records, conn=None, sender=None):
    return [r for r in records if r["type"] == "message" and (conn is None or r["conn"] == conn)
            and (sender is None or r["from"] == sender)]


def payload_bytes(record):
    """The recorded payload prefix as bytes."""
    import base64
    if "text" in record:
        return record["text"].encode()
    if "base64" in record:
        return base64.b64decode(record["base64"])
    return b""
