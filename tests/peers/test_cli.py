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


def test_every_kept_capture_regression_ends_in_exit_0_or_1():
    """Capture files that once crashed a reader: any input ends in a record stream and exit 0 or 1."""
    from pathlib import Path
    directory = Path(__file__).resolve().parents[2] / "Tests" / "Regressions" / "capture-file"
    files = sorted(directory.iterdir())
    assert files
    for path in files:
        for threads in ("1", "2"):
            result = run("read", str(path), "--threads", threads, "-q")
            assert result.returncode in (0, 1), f"{path.name} --threads {threads}: exit {result.returncode}\n{result.stderr[-2000:]}"


def test_a_timestamp_after_2262_is_clamped_and_said_once():
    from pathlib import Path
    path = Path(__file__).resolve().parents[2] / "Tests" / "Regressions" / "capture-file" / "pcapng-timestamp-after-2262.pcapng"
    result = run("read", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("1 packet in") == 1 and "claims a time after the year 2262" in result.stderr


def test_bad_limits_say_how_to_fix_them():
    for args in (["--head-timeout", "-1"], ["--upstream-timeout", "nan"], ["--max-head-size", "10"],
                 ["--max-payload", "lots"], ["--max-payload", "99999999999G"]):
        result = run("proxy", "--upstream", "ws://127.0.0.1:9", *args)
        assert result.returncode != 0
        assert args[0] in result.stderr, result.stderr
