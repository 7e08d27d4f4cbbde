"""Our own failures: one clear line that says how to fix it, and a non-zero exit."""
import socket
import subprocess

from conftest import WSTAP


def run(*args):
    return subprocess.run([WSTAP, *args], capture_output=True, text=True, timeout=60)


def test_port_in_use():
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    result = run("proxy", "--listen", f"127.0.0.1:{port}", "--upstream", "ws://127.0.0.1:9")
    assert result.returncode != 0
    assert "already in use" in result.stderr and "--listen" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    taken.close()


def test_bad_upstream_url():
    for url in ["foo://x", "ws://h:99999", "not a url", "ws://"]:
        result = run("proxy", "--upstream", url)
        assert result.returncode != 0
        assert "--upstream" in result.stderr.splitlines()[0], result.stderr


def test_bad_flag_and_bad_listen():
    assert run("proxy", "--bogus").returncode != 0
    result = run("proxy", "--listen", "nonsense")
    assert result.returncode != 0 and "--listen" in result.stderr


def test_unwritable_jsonl():
    result = run("proxy", "--listen", "127.0.0.1:0", "--jsonl", "/nonexistent-dir/x.jsonl")
    assert result.returncode != 0
    assert result.stderr.startswith("wstap: --jsonl: cannot open")


def test_help_lists_the_options():
    result = run("proxy", "--help")
    assert result.returncode == 0
    for option in ["--listen", "--upstream", "--jsonl", "--verbose", "--quiet", "--max-payload"]:
        assert option in result.stdout
