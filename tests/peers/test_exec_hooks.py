"""Exec hooks on the live proxy (--exec, the `exec` action): the example hooks in docs/examples/ run
as wstap's own child processes between real websockets peers, and hooks that are slow, die or write
garbage are said so once while the connection keeps flowing."""
import asyncio
import os
import signal
import subprocess
import sys
import time

from websockets.asyncio.client import connect

from conftest import DEADLINE, PEERS, PYTHON, WSTAP, messages

from test_rules_live import changes, close_received

ROOT = PEERS.parent.parent.parent
PY_HOOK = f"{sys.executable} {ROOT / 'docs' / 'examples' / 'hook.py'}"
SH_HOOK = f"sh {ROOT / 'docs' / 'examples' / 'hook.sh'}"


def test_the_python_example_hook_changes_drops_delays_injects_and_closes(wstap, peer):
    """websockets on both ends with permessage-deflate (context takeover): the hook replaces a
    message (so wstap re-encodes the direction), drops one, delays one, injects one toward the client
    and finally closes both sides with its own code. The echo server's answers come back through the
    hook too; websockets fails the connection if a message did not inflate."""
    port = peer(PYTHON, str(PEERS / "websockets_echo_server.py"))
    proxy = wstap(f"ws://127.0.0.1:{port}", ["--exec", PY_HOOK])
    sent = ["hello", "the price is 5", "secret", "slow one", "after"]

    async def run():
        async with connect(proxy.url + "/h") as ws:
            for text in sent:
                await ws.send(text)
            got = [await asyncio.wait_for(ws.recv(), 30) for _ in range(5)]
            await ws.send("bye now")
            return got, await close_received(ws)

    got, close = asyncio.run(run())
    injected = "the hook changed a price"
    assert injected in got
    assert [m for m in got if m != injected] == ["hello", "the PRICE is 5", "slow one", "after"]
    assert (close.code, close.reason) == (4000, "the hook says bye")
    records = proxy.wait_ended()
    from_client = [c for c in changes(records) if c["from"] == "client"]
    assert [c["result"] for c in from_client] == ["forwarded", "edited", "dropped", "forwarded", "forwarded", "closed", "injected", "dropped"]
    assert all(c["rules"] == ["exec"] for c in from_client)  # the close's own record too
    edited = from_client[1]
    assert edited["sent"][0]["text"] == "the PRICE is 5" and edited["sent"][0]["compressed"]
    assert "answered replace + inject 1" in edited["notes"][0]
    assert from_client[3]["held_ms"] >= 200  # "slow one" was delayed by the hook
    assert any(r["type"] == "diagnostic" and r["code"] == "reencoding" for r in records)
    # The server saw the edit, never the secret, and wstap's close.
    server_got = [m.get("text") for m in messages(records, sender="client") if m["opcode"] == 1]
    assert "secret" in server_got  # recorded as received from the client ...
    assert not any("secret" in (s.get("text") or "") for c in changes(records) for s in c["sent"])  # ... never sent on


def test_the_shell_and_jq_example_hook_prefixes_client_text(wstap, peer):
    port = peer(PYTHON, str(PEERS / "websockets_echo_server.py"))
    proxy = wstap(f"ws://127.0.0.1:{port}", ["--exec", SH_HOOK])

    async def run():
        async with connect(proxy.url + "/jq", compression=None) as ws:
            await ws.send("one")
            await ws.send(b"\x00\x01")
            return [await asyncio.wait_for(ws.recv(), 30) for _ in range(2)]

    assert asyncio.run(run()) == ["[hooked] one", b"\x00\x01"]


def test_a_hook_that_writes_garbage_is_said_once_and_restarted(wstap, peer, tmp_path):
    """Its first life answers with garbage: the message it owes goes on unchanged (fail open), wstap
    says so once and starts it again; the second life answers properly."""
    marker = tmp_path / "lives"
    script = tmp_path / "hook.py"
    script.write_text(
        "import json, pathlib, sys\n"
        f"marker = pathlib.Path({str(marker)!r})\n"
        "first = not marker.exists()\n"
        "marker.write_text('x')\n"
        "for line in sys.stdin:\n"
        "    request = json.loads(line)\n"
        "    if first:\n"
        "        print('this is not a verdict', flush=True)\n"
        "        continue\n"
        "    text = request['message'].get('text', '')\n"
        "    print(json.dumps({'id': request['id'], 'verdict': 'replace', 'text': 'second life: ' + text}), flush=True)\n")
    port = peer(PYTHON, str(PEERS / "websockets_echo_server.py"))
    proxy = wstap(f"ws://127.0.0.1:{port}", ["--rule", "from=client => exec " + f"{sys.executable} {script}"])

    async def run():
        async with connect(proxy.url + "/g") as ws:
            await ws.send("first")
            first = await asyncio.wait_for(ws.recv(), 30)
            proxy.wait_for(r"hook .* wrote a line that is not a verdict .*started again")
            # The restart comes after a pause: messages go on unchanged until the new process answers.
            deadline = time.monotonic() + DEADLINE
            while time.monotonic() < deadline:
                await ws.send("again")
                answer = await asyncio.wait_for(ws.recv(), 30)
                if answer != "again":
                    return first, answer
            return first, None

    assert asyncio.run(run()) == ("first", "second life: again")
    said = [line for line in proxy.output() if "not a verdict" in line]
    assert len(said) == 1, said


def test_a_hook_that_never_answers_fails_closed_and_pings_still_flow(wstap, peer):
    """--exec-fail closed: each message waits --exec-timeout, then is dropped; the connection lives
    (pings are never held), and wstap says once that the hook is slow."""
    port = peer(PYTHON, str(PEERS / "websockets_echo_server.py"))
    proxy = wstap(f"ws://127.0.0.1:{port}", ["--exec", "cat > /dev/null", "--exec-timeout", "0.5", "--exec-fail", "closed"])

    async def run():
        async with connect(proxy.url + "/s") as ws:
            await ws.send("one")
            await ws.send("two")
            proxy.wait_records(lambda r: sum(1 for c in changes(r) if c["result"] == "dropped") == 2, "two dropped messages")
            pong = await ws.ping()
            await asyncio.wait_for(pong, 30)
            return "alive"

    assert asyncio.run(run()) == "alive"
    records = proxy.wait_ended()
    dropped = [c for c in changes(records) if c["result"] == "dropped"]
    assert all("--exec-fail closed" in c["notes"][-1] for c in dropped)
    assert len([line for line in proxy.output() if "did not answer within --exec-timeout" in line]) == 1


def test_a_hook_that_exits_is_reported_with_its_status_and_wstap_leaves_no_process_behind(tmp_path):
    """A hook command that fails at once: wstap says how it ended; when wstap stops, its hooks end too."""
    pidfile = tmp_path / "pid"
    proc = subprocess.Popen([WSTAP, "proxy", "--listen", "127.0.0.1:0", "--upstream", "ws://127.0.0.1:9", "-q",
                             "--exec", "exit 3", "--exec", f"echo $$ > {pidfile}; exec sleep 600"],
                            stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "exited with status 3" in line:
                break
        assert any("hook 'exit 3' exited with status 3" in line for line in lines), lines
        deadline = time.monotonic() + DEADLINE
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert time.monotonic() < deadline, "the second hook never started"
            time.sleep(0.02)  # polling for a file the hook writes, not waiting for time to pass
        hook_pid = int(pidfile.read_text())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    deadline = time.monotonic() + DEADLINE
    while os.path.exists(f"/proc/{hook_pid}") and open(f"/proc/{hook_pid}/stat").read().split()[2] != "Z":
        assert time.monotonic() < deadline, "the hook outlived wstap"
        time.sleep(0.02)  # polling the process table for the hook's end
