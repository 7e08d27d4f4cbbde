"""`wstap read` on a terminal shows a progress line for long reads, redrawn in place and cleared at the
end; when stderr is not a terminal (pipes, CI logs) it prints none. The capture comes from the benchmark's
generator; `script` gives wstap a real pseudo-terminal."""
import shutil
import subprocess

import pytest

from conftest import WSTAP


@pytest.fixture
def capture(generated_captures):
    return generated_captures / "deflate.pcap"


@pytest.mark.skipif(shutil.which("script") is None, reason="script(1) is in bsdutils")
def test_progress_line_on_a_terminal_is_drawn_and_cleared(capture, tmp_path):
    jsonl = tmp_path / "r.jsonl"
    result = subprocess.run(["script", "-qec", f"{WSTAP} read {capture} -q --jsonl {jsonl}", "/dev/null"],
                            capture_output=True, timeout=300)
    assert result.returncode == 0, result.stdout
    screen = result.stdout.decode()
    assert f"\rreading {capture}: " in screen and "% of 8.0 MB, " in screen and " packets, " in screen
    assert screen.endswith("\r\x1b[K")  # the last thing drawn erases the line
    assert jsonl.stat().st_size > 0


def test_no_progress_line_without_a_terminal(capture, tmp_path):
    result = subprocess.run([WSTAP, "read", str(capture), "-q", "--jsonl", str(tmp_path / "r.jsonl")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stderr == "" and result.stdout == ""
