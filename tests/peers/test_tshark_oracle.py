"""tshark 4.0's dissection of every capture in ../shared/captures (its .tshark.tsv) as an oracle for `wstap read`:
- every frame tshark dissected is found with the same header (FIN, RSV bits, opcode, mask bit, payload length,
  masking key), in order per TCP direction;
- every message tshark completed has the same payload bytes (unmasked, inflated, reassembled), except the rows
  SOURCES.md documents as tshark 4.0 bugs, where wstap must hold the real message instead (exact truths are
  in the Swift tests SharedCaptureTests and MidstreamCaptureTests).
gen-wss-keylog is TLS 1.3: both tools decrypt it with the secrets embedded in the pcapng."""
import base64
import csv
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import WSTAP

CAPTURES = Path(__file__).resolve().parents[2].parent / "shared" / "captures"
csv.field_size_limit(1 << 30)
# Rows where tshark 4.0's payload is wrong or absent, per SOURCES.md: (capture, frame) → why.
TSHARK_WRONG = {
    ("gen-ws-deflate-noctx-asym.pcap", "12"): "client/server deflate parameters applied to the wrong direction",
    ("gen-ws-deflate-noctx-asym.pcap", "16"): "client/server deflate parameters applied to the wrong direction",
    ("gen-ws-deflate-pylib.pcap", "20"): "fragmented compressed message shown as raw deflate",
    ("gen-ws-deflate-takeover.pcap", "32"): "fragmented compressed message shown as raw deflate",
    ("gen-ws-deflate-takeover.pcap", "34"): "inflater out of sync after the previous message",
    ("gen-ws-fragmented.pcap", "40"): "empty final continuation ignored",
    ("gen-ws-fragmented.pcap", "46"): "next message merged into the unclosed one",
    ("gen-ws-violations.pcap", "38"): "1-byte close body shown empty",
}
# Payloads another dissector took (SIP over WebSocket): the TSV has no bytes for them.
HANDED_ON = {"subdissector"}
NAMES = sorted(p.name for p in CAPTURES.glob("*.pcap*") if p.suffix in (".pcap", ".pcapng")) if CAPTURES.exists() else []


def wstap_records(path):
    out = subprocess.run([WSTAP, "read", str(path), "--jsonl", "-", "-q", "--max-payload", "10000000"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def direction_of(record, opens):
    client, server = (opens[record["conn"]][k].rsplit(":", 1)[1] for k in ("client", "server"))
    return (client, server) if record["from"] == "client" else (server, client)


def wstap_frames(path):
    records = wstap_records(path)
    opens = {r["conn"]: r for r in records if r["type"] == "open"}
    frames = {}
    for r in records:
        if r["type"] != "frame" or r["conn"] not in opens:
            continue
        key = direction_of(r, opens)
        rsv = r["rsv1"] * 4 + r["rsv2"] * 2 + r["rsv3"]
        frames.setdefault(key, []).append((int(r["fin"]), rsv, r["opcode"], int(r["masked"]), r["length"], r["mask_key"] or ""))
    return frames


def tshark_frames(path):
    frames = {}
    with open(str(path) + ".tshark.tsv") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            frames.setdefault((row["src_port"], row["dst_port"]), []).append(
                (int(row["fin"]), int(row["rsv"], 16), int(row["opcode"]), int(row["mask"]), int(row["payload_len"]), row["masking_key"]))
    return frames


def test_shared_captures_are_there_in_ci():
    """CI clones the repository with shared/ beside it: a missing capture directory must not pass as a skip."""
    if os.environ.get("CI"):
        assert NAMES, f"no captures in {CAPTURES}"


@pytest.mark.skipif(not NAMES, reason="the shared captures are beside the repository")
@pytest.mark.parametrize("name", NAMES)
def test_frame_headers_agree_with_tshark(name):
    ours, theirs = wstap_frames(CAPTURES / name), tshark_frames(CAPTURES / name)
    assert sum(map(len, theirs.values())) > 0
    for direction, expected in theirs.items():
        assert ours.get(direction) == expected, f"{name} {direction}"
    # wstap may find more than tshark, never less: pub-onewesong starts inside an earlier session whose
    # last frame (a masked "\n") tshark's default settings do not look for.
    extra = {d: f for d, f in ours.items() if d not in theirs}
    if name == "pub-onewesong-websocket.pcapng":
        assert list(extra.values()) == [[(1, 0, 1, 1, 1, "1a0e17b2")]]
    else:
        assert extra == {}


def wstap_messages(path):
    records = wstap_records(path)
    opens = {r["conn"]: r for r in records if r["type"] == "open"}
    messages = {}
    for r in records:
        if r["type"] == "message" and r["conn"] in opens:
            if "base64" in r:
                payload = base64.b64decode(r["base64"])
            elif "text" in r:
                payload = r["text"].encode()
            elif r["opcode"] == 8 and r["code"] is not None:
                payload = r["code"].to_bytes(2, "big") + (r["reason"] or "").encode()
            else:
                payload = b""
            messages.setdefault(direction_of(r, opens), []).append((payload.hex(), r))
    return messages


def tshark_messages(path):
    """The rows where tshark completed a message: final frames, and control frames (even a fragmented
    ping, which is one message to wstap)."""
    messages = {}
    with open(str(path) + ".tshark.tsv") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row["fin"] == "1" or int(row["opcode"]) >= 8:
                messages.setdefault((row["src_port"], row["dst_port"]), []).append(row)
    return messages


@pytest.mark.skipif(not NAMES, reason="the shared captures are beside the repository")
@pytest.mark.parametrize("name", NAMES)
def test_message_payloads_agree_with_tshark_except_its_documented_bugs(name):
    ours, theirs = wstap_messages(CAPTURES / name), tshark_messages(CAPTURES / name)
    compared = 0
    for direction, rows in theirs.items():
        mine = ours.get(direction, [])
        assert len(mine) == len(rows), f"{name} {direction}: {len(mine)} messages, tshark completed {len(rows)}"
        for row, (payload, record) in zip(rows, mine):
            if (name, row["frame"]) in TSHARK_WRONG:
                # tshark is wrong here; wstap must have decoded the message (no failed inflate, exact bytes).
                assert payload != row["payload_hex"] and not record.get("inflate_failed"), (name, row["frame"])
            elif row["kind"] not in HANDED_ON:
                assert payload == row["payload_hex"], f"{name} frame {row['frame']}"
                compared += 1
    assert compared > 0
