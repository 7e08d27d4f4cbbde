"""`wstap rules test`: rules over a recording or a capture, per-rule counts and a before/after sample;
bad rules are one line with file, line and column, and exit 64."""
import json
import subprocess
from pathlib import Path

from conftest import WSTAP

CAPTURES = Path(__file__).resolve().parents[3] / "shared" / "captures"

RULES = """# rules for the test
[greet] from=client op=text => replace /(\\w+)/ "<$1>"
[drop-pings] op=ping => drop
[edit] from=server json.type? => set json.type "edited"; mark e
[never] json.nope? => abort
"""


def run(*args):
    return subprocess.run([WSTAP, *args], capture_output=True, text=True, timeout=120)


def test_a_capture_and_its_recording_give_the_same_report(tmp_path):
    rules = tmp_path / "rules.txt"
    rules.write_text(RULES)
    capture = CAPTURES / "gen-ws-deflate-takeover.pcap"
    jsonl = tmp_path / "rec.jsonl"
    assert run("read", str(capture), "--jsonl", str(jsonl), "-q").returncode == 0
    recorded = [json.loads(line) for line in jsonl.read_text().splitlines()]
    from_capture = run("rules", "test", "--rules", str(rules), str(capture))
    from_recording = run("rules", "test", "--rules", str(rules), str(jsonl))
    assert from_capture.returncode == 0 and from_recording.returncode == 0, from_capture.stderr + from_recording.stderr
    # The same lines after the first (which names the input).
    assert from_capture.stdout.splitlines()[1:] == from_recording.stdout.splitlines()[1:]
    report = from_recording.stdout

    messages = [r for r in recorded if r["type"] == "message"]
    client_texts = [m for m in messages if m["from"] == "client" and m["opcode"] == 1]
    pings = [m for m in messages if m["opcode"] == 9]
    jsons = [m for m in messages if m["from"] == "server" and m.get("text", "").startswith('{"type"')]
    assert f"{len(messages)} messages" in report.splitlines()[0]
    assert f"[greet] line 2: matches {len(client_texts)}," in report
    assert f"[drop-pings] line 3: matches {len(pings)}, would change {len(pings)}: drop" in report
    assert f"[edit] line 4: matches {len(jsons)}, would change {len(jsons)}" in report
    assert "[never] line 5: matches 0, would change 0: abort" in report
    # The first edit, before and after, as the text reads.
    first = client_texts[0]["text"]
    assert f"  before: {first}" in report
    assert '"type":"edited"' in report


def test_bad_rules_are_one_line_with_where_and_exit_64(tmp_path):
    rules = tmp_path / "bad.txt"
    rules.write_text("op=text => drop\n\n[x] op=text => explode\n")
    result = run("rules", "test", "--rules", str(rules), str(CAPTURES / "gen-ws-basic.pcap"))
    assert result.returncode == 64
    assert result.stderr.strip().splitlines() == [f"wstap: {rules}:3:16: unknown action 'explode' (drop, delay, hold, replace, "
                                                   "replace-bytes, set, delete, inject, close, abort, duplicate, fragment, uncompressed, "
                                                   "corrupt, exec, mark)"]
    result = run("rules", "test", "--rule", "len>4Q => drop", str(CAPTURES / "gen-ws-basic.pcap"))
    assert result.returncode == 64 and result.stderr.startswith("wstap: --rule:1:5: expected a number")
    missing = run("rules", "test", "--rules", str(tmp_path / "nope.txt"), str(CAPTURES / "gen-ws-basic.pcap"))
    assert missing.returncode != 0 and "--rules: cannot read" in missing.stderr
