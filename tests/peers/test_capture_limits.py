"""Absurd capture files end in exit 0 or 1 with bounded memory: nothing a file claims (lengths, snap
lengths, record counts) makes wstap read allocate it. The files are sparse, so they cost no disk."""
import os
import struct
import subprocess

import pytest

from conftest import WSTAP

MEMORY_BOUND = 128 * 1024 * 1024  # bytes of peak RSS; a read that allocates what a file claims needs GiBs


def read_capture(path, *extra):
    """Runs `wstap read` on path; returns (exit status, peak RSS in bytes, stderr)."""
    process = subprocess.Popen([WSTAP, "read", str(path), "-q", "--jsonl", os.devnull, *extra],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    # Exit status, not a signal: a crash is never an acceptable answer to a file.
    assert os.WIFEXITED(status), f"wstap read was killed by signal {os.WTERMSIG(status)}: {stderr[-2000:]}"
    return os.WEXITSTATUS(status), usage.ru_maxrss * 1024, stderr


def sparse(path, head, size):
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


def pcap_header(snaplen=65535, linktype=1):
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)


def pcapng_section(length=28):
    return struct.pack("<IIIHHq", 0x0A0D0D0A, length, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", length)


CASES = {
    # 2 GiB of zeros: not a capture at all.
    "zeros": lambda p: sparse(p, b"", 2 << 30),
    # A 4 GiB snap length and a packet that claims 4 GiB.
    "huge-snaplen": lambda p: sparse(p, pcap_header(snaplen=0xFFFFFFFF) + struct.pack("<IIII", 0, 0, 0xFFFFFFFF, 0xFFFFFFFF), 64 << 20),
    # A record length of 4 GiB under a sane snap length.
    "huge-record": lambda p: sparse(p, pcap_header() + struct.pack("<IIII", 0, 0, 0xFFFFFFF0, 60), 64 << 20),
    # A pcapng block that claims 4 GiB, and a secrets block that claims nearly as much.
    "huge-block": lambda p: sparse(p, pcapng_section() + struct.pack("<II", 1, 0xFFFFFFF0), 64 << 20),
    "huge-secrets": lambda p: sparse(p, pcapng_section() + struct.pack("<IIII", 0x0A, 0xFFFFFFF0, 0x544C534B, 0xFFFFFF00), 64 << 20),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_absurd_capture_is_refused_in_bounded_memory(tmp_path, name):
    path = CASES[name](tmp_path / f"{name}.pcap")
    status, peak, stderr = read_capture(path)
    assert status == 1, stderr
    assert peak < MEMORY_BOUND, f"{peak // (1 << 20)} MiB for {name}"
    assert stderr.strip().startswith("wstap:") and len(stderr.strip().splitlines()) == 1, stderr


def test_millions_of_empty_records_are_read_in_bounded_memory(tmp_path):
    """134 million 16-byte records of zeros (a 2 GiB sparse file): every one is a packet of 0 bytes."""
    path = sparse(tmp_path / "empty-records.pcap", pcap_header(), 24 + 16 * 134_000_000)
    status, peak, stderr = read_capture(path, "--threads", "1")
    assert status in (0, 1), stderr
    assert peak < MEMORY_BOUND, f"{peak // (1 << 20)} MiB"
