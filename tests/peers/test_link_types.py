"""`wstap read` on captures of every link type it claims, all made from one real tcpdump of `lo`
(Ethernet) with an IPv4 and an IPv6 session: rewritten as Linux cooked SLL and SLL2 (the headers
libpcap gives `-i any`), raw IP (LINKTYPE_RAW), with 802.1Q VLAN tags, and as pcapng (editcap). Every
file must give the same messages. (Three tcpdumps at once, on `lo` and twice on `any`, were tried first:
the `any` captures now and then missed the first packets of a connection, so the comparison measured
tcpdump's losses, not wstap.)"""
import asyncio
import shutil
import struct
import subprocess

import pytest
from websockets.asyncio.client import connect

from conftest import PEERS, PYTHON, WSTAP, Proc, messages, read_records, stop_tcpdump

KEYS = ("from", "opcode", "frames", "wire_length", "length", "compressed", "text", "base64", "code", "reason", "offset")
LINKTYPE = {"ethernet": 1, "raw": 101, "sll": 113, "sll2": 276}

pytestmark = pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is installed by scripts/install-test-peers.sh")


async def conversation(url):
    async with connect(url, max_size=None) as ws:
        for payload in ["over " + url, bytes(range(256)) * 20, "z" * 5000]:
            await ws.send(payload)
            assert await ws.recv() == payload
        await ws.close(1000, "link types done")


def rewrite_pcap(source, target, linktype, packet):
    """Copies a classic pcap, changing its link type and each packet's bytes with packet(frame)."""
    data = source.read_bytes()
    magic, major, minor, zone, sigfigs, snaplen, _ = struct.unpack_from("<IHHiIII", data, 0)
    out = [struct.pack("<IHHiIII", magic, major, minor, zone, sigfigs, snaplen, linktype)]
    offset = 24
    while offset < len(data):
        seconds, fraction, caplen, length = struct.unpack_from("<IIII", data, offset)
        frame = packet(data[offset + 16: offset + 16 + caplen])
        out.append(struct.pack("<IIII", seconds, fraction, len(frame), length + len(frame) - caplen) + frame)
        offset += 16 + caplen
    target.write_bytes(b"".join(out))


def with_vlan_tag(frame):
    # 802.1Q: TPID 0x8100, then priority/VLAN id 42, then the original EtherType.
    return frame[:12] + b"\x81\x00" + struct.pack("!H", 42) + frame[12:]


def cooked_sll(frame):
    # Linux cooked v1 (16 bytes): packet type 0 (to us), ARPHRD_LOOPBACK, address length 6, the source
    # address padded to 8, then the EtherType.
    return struct.pack("!HHH", 0, 772, 6) + frame[6:12] + b"\0\0" + frame[12:14] + frame[14:]


def cooked_sll2(frame):
    # Linux cooked v2 (20 bytes): EtherType, reserved, interface index 1, ARPHRD_LOOPBACK, packet type 0,
    # address length 6, the source address padded to 8.
    return frame[12:14] + b"\0\0" + struct.pack("!IHBB", 1, 772, 0, 6) + frame[6:12] + b"\0\0" + frame[14:]


def linktype_of(path):
    return struct.unpack_from("<I", path.read_bytes(), 20)[0]


def comparable(records):
    by_server = {}
    opens = {r["conn"]: r["server"] for r in records if r["type"] == "open"}
    for m in messages(records):
        by_server.setdefault(opens[m["conn"]], []).append({k: m[k] for k in KEYS if k in m})
    return by_server


def test_every_link_type_gives_the_same_messages(peer, procs, tmp_path):
    port4 = peer(PYTHON, str(PEERS / "websockets_echo_server.py"))
    port6 = peer(PYTHON, str(PEERS / "websockets_echo_server.py"), "--host", "::1")
    bpf = f"tcp port {port4} or tcp port {port6}"
    files = {"ethernet": tmp_path / "lo.pcap"}
    dump = Proc(["tcpdump", "-i", "lo", "-B", "32768", "-U", "--immediate-mode", "-Z", "root", "-w", str(files["ethernet"]), bpf], stream="stderr")
    procs.append(dump)
    dump.wait_for(r"listening on")
    asyncio.run(conversation(f"ws://127.0.0.1:{port4}/v4"))
    asyncio.run(conversation(f"ws://[::1]:{port6}/v6"))
    stop_tcpdump(dump, files["ethernet"], fins=4)  # two connections, closed both ways

    files["sll"] = tmp_path / "sll.pcap"
    rewrite_pcap(files["ethernet"], files["sll"], LINKTYPE["sll"], cooked_sll)
    files["sll2"] = tmp_path / "sll2.pcap"
    rewrite_pcap(files["ethernet"], files["sll2"], LINKTYPE["sll2"], cooked_sll2)
    files["raw"] = tmp_path / "raw.pcap"
    rewrite_pcap(files["ethernet"], files["raw"], LINKTYPE["raw"], lambda frame: frame[14:])
    files["vlan"] = tmp_path / "vlan.pcap"
    rewrite_pcap(files["ethernet"], files["vlan"], LINKTYPE["ethernet"], with_vlan_tag)
    files["pcapng"] = tmp_path / "sll2.pcapng"
    subprocess.run(["editcap", "-F", "pcapng", str(files["sll2"]), str(files["pcapng"])], check=True, timeout=60)
    for name in ("ethernet", "raw", "sll", "sll2"):
        assert linktype_of(files[name]) == LINKTYPE[name], name

    results = {}
    for name, path in files.items():
        out = tmp_path / f"{name}.jsonl"
        result = subprocess.run([WSTAP, "read", str(path), "--jsonl", str(out), "-q"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{name}: {result.stderr}"
        records = read_records(out)
        assert not [r for r in records if r["type"] in ("gap", "diagnostic")], name
        results[name] = comparable(records)

    reference = results["ethernet"]
    assert sorted(reference) == sorted([f"127.0.0.1:{port4}", f"[::1]:{port6}"])
    assert all(len(found) == 8 for found in reference.values())  # 3 echoes each way + the closes
    for name, found in results.items():
        assert found == reference, name
