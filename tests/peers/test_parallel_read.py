"""`wstap read` spreads connections over threads (one per core by default). Whatever the thread count,
the JSON Lines must be byte for byte what a single thread writes: same records, same order, connections
numbered alike, end records of connections still open at the end of the capture in id order. Also for a
damaged file: the same records up to the damage, then the same error.

The captures come from the benchmark's generator (24 concurrent sessions, deflate and not, fragmented
and large messages), which tshark also reads: the test checks that first, so the input is known good."""
import subprocess

import pytest

from conftest import WSTAP


def read(capture, out, threads):
    result = subprocess.run([WSTAP, "read", str(capture), "-q", "--jsonl", str(out), "--threads", str(threads)],
                            capture_output=True, text=True, timeout=300)
    return result.returncode, result.stderr, out.read_bytes()


@pytest.mark.parametrize("name", ["mixed.pcap", "deflate.pcap"])
def test_records_are_identical_on_one_or_many_threads(generated_captures, tmp_path, name):
    capture = generated_captures / name
    tshark = subprocess.run(["tshark", "-r", str(capture), "-Y", "websocket", "-T", "fields", "-e", "frame.number"],
                            capture_output=True, text=True, timeout=300)
    assert tshark.returncode == 0 and len(tshark.stdout.splitlines()) > 400

    code, err, single = read(capture, tmp_path / "one.jsonl", 1)
    assert code == 0 and err == ""
    lines = single.splitlines()
    assert len(lines) > 800 and b'"type":"end"' in lines[-1]
    assert len({line.split(b'"conn":')[1].split(b",")[0] for line in lines}) > 24  # many connections interleave
    for threads in (2, 3, 5):
        code, err, many = read(capture, tmp_path / f"{threads}.jsonl", threads)
        assert code == 0 and err == ""
        assert many == single, f"{threads} threads"


def test_a_damaged_file_gives_the_same_records_and_error_on_any_thread_count(generated_captures, tmp_path):
    whole = (generated_captures / "deflate.pcap").read_bytes()
    damaged = tmp_path / "damaged.pcap"
    damaged.write_bytes(whole[: len(whole) * 2 // 3])  # cut inside a packet
    code, err, single = read(damaged, tmp_path / "one.jsonl", 1)
    assert code != 0 and "is damaged after" in err and len(single.splitlines()) > 100
    for threads in (2, 4):
        code_many, err_many, many = read(damaged, tmp_path / f"{threads}.jsonl", threads)
        assert (code_many, err_many, many) == (code, err, single)
