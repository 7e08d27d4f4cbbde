"""Rules on the live proxy (--rule, --rules): real clients and servers see the changes, untouched
messages keep their bytes, compressed connections keep working after an edit, holds never stall
pings, and the rules file is reloaded while connections stay open."""
import asyncio
import json
import os
import subprocess

import pytest
from websockets.asyncio.client import connect

from conftest import NODE_ENV, PEERS, PYTHON, WSTAP, messages
from rawpeers import RawServer, frame, raw_client


def changes(records):
    return [r for r in records if r["type"] == "change"]


async def close_received(ws):
    """Waits for the connection to end: the close frame the client got (websockets' `Close`, with
    .code and .reason), None when it ended without one, or "still open" if a message came instead."""
    try:
        await asyncio.wait_for(ws.recv(), 30)
    except asyncio.TimeoutError:
        raise
    except Exception as closed:  # websockets' ConnectionClosedOK / ConnectionClosedError
        return closed.rcvd
    return "still open"


def echo_then_close(url, trigger, **options):
    """Sends "hello" and reads its echo, then sends `trigger` and waits for the end: (echo, close)."""
    async def run():
        async with connect(url, **options) as ws:
            await ws.send("hello")
            echoed = await asyncio.wait_for(ws.recv(), 30)
            await ws.send(trigger)
            return echoed, await close_received(ws)
    return asyncio.run(run())


def test_edits_and_drops_reach_a_compressing_server_and_later_messages_still_inflate(wstap, peer):
    """Python websockets on both ends with permessage-deflate (context takeover): the server echoes
    what it got, so what comes back is what wstap sent on. An edit desynchronises the windows unless
    wstap re-encodes the direction; websockets fails the connection if a message does not inflate."""
    port = peer(PYTHON, str(PEERS / "websockets_echo_server.py"))
    proxy = wstap(f"ws://127.0.0.1:{port}", ["--rule", "[shout] from=client text:hello => replace /hello/ \"HELLO\"",
                                             "--rule", "[gone] from=client text=\"drop me\" => drop"])
    sent = ["hello, compressed world: hello", "drop me", "a message that repeats: hello world, compressed world",
            "hello again, and again, and again", "untouched: world, compressed"]

    async def run():
        async with connect(proxy.url + "/x") as ws:  # compression="deflate" is websockets' default
            for text in sent:
                await ws.send(text)
            return [await ws.recv() for _ in range(len(sent) - 1)]

    echoed = asyncio.run(run())
    assert echoed == [t.replace("hello", "HELLO") for t in sent if t != "drop me"]
    records = proxy.wait_ended()
    assert [m["text"] for m in messages(records, sender="client") if m["opcode"] == 1] == sent  # as received
    made = changes(records)
    assert [(c["rules"], c["result"]) for c in made] == [(["shout"], "edited"), (["gone"], "dropped"), (["shout"], "edited"), (["shout"], "edited")]
    assert made[0]["sent"][0]["text"] == "HELLO, compressed world: HELLO" and made[0]["sent"][0]["compressed"] is True
    assert any(r["type"] == "diagnostic" and r["code"] == "reencoding" and r["from"] == "client" for r in records)


def test_untouched_messages_reach_a_raw_server_with_their_own_bytes(wstap):
    """A raw client and a raw server: every byte of the untouched frames (masks, a 16-bit length for a
    short payload, a ping between fragments) arrives as sent; the edited one arrives edited."""
    server = RawServer()
    proxy = wstap(f"ws://127.0.0.1:{server.port}", ["--rule", "text=edit-me => replace /edit/ \"EDIT\""])
    sock, _ = raw_client(proxy.port)
    untouched = (frame(1, b"keep me", mask=b"\x01\x02\x03\x04") + frame(2, b"\x00\xff", mask=b"\x05\x06\x07\x08", length_bits=16)
                 + frame(1, b"frag", fin=False, mask=b"\x09\x0a\x0b\x0c") + frame(0, b"ment", mask=b"\x0d\x0e\x0f\x10"))
    sock.sendall(untouched + frame(1, b"edit-me", mask=b"\x11\x12\x13\x14"))
    proxy.wait_records(lambda r: len(changes(r)) == 1, "the change record")
    sock.close()
    assert server.done.wait(30)
    assert server.received.startswith(untouched)
    edited = server.received[len(untouched):]
    assert edited[0] == 0x81 and edited[1] == 0x80 | 7  # FIN text, masked, 7 bytes
    key, body = edited[2:6], edited[6:13]
    assert bytes(b ^ key[i % 4] for i, b in enumerate(body)) == b"EDIT-me"
    assert key != b"\x11\x12\x13\x14"  # a fresh mask key


def test_node_ws_with_compression_sees_edited_server_messages(wstap, peer):
    """Node ws server (perMessageDeflate) and Node ws client (threshold 0: everything compressed):
    the server's echoes are edited on the way back; text and binary alike."""
    port = peer("node", str(PEERS / "node_ws_echo_server.js"), "--deflate", env=NODE_ENV)
    proxy = wstap(f"ws://127.0.0.1:{port}", ["--rule", "[up] from=server => replace-bytes hex:6f6e65 hex:4f4e45"])
    out = subprocess.run(["node", str(PEERS / "node_ws_client.js"), proxy.url + "/n", "one", "two", "one more"],
                         capture_output=True, text=True, timeout=60, env=NODE_ENV)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [l["data"] for l in lines if "data" in l] == ["ONE", "ONE", "two", "two", "ONE more", "ONE more"]
    assert lines[-1] == {"closed": 1000}
    records = proxy.wait_ended()
    assert all(m["compressed"] for m in messages(records) if m["opcode"] in (1, 2))
    # Every server message matched; the four with "one" in them were edited, the others went on as
    # they were (compressed anew: the direction is re-encoded from the first edit on).
    assert [c["result"] for c in changes(records)] == ["edited", "edited", "forwarded", "forwarded", "edited", "edited"]


def test_a_held_server_message_does_not_stall_the_clients_pings(wstap, peer):
    """The client pings every second and gives up after one second without a pong; the server's
    answer is held for three. Pings and pongs overtake the hold, so the connection survives and the
    held message arrives (mitmproxy's intercept pauses the whole connection, pings included)."""
    port = peer(PYTHON, str(PEERS / "websockets_echo_server.py"))
    proxy = wstap(f"ws://127.0.0.1:{port}", ["--rule", "[wait] from=server text=slow => hold", "--hold-timeout", "3"])

    async def run():
        async with connect(proxy.url + "/p", ping_interval=1, ping_timeout=1) as ws:
            await ws.send("slow")
            answer = await asyncio.wait_for(ws.recv(), timeout=30)
            await ws.send("fast")
            return answer, await ws.recv()

    assert asyncio.run(run()) == ("slow", "fast")
    records = proxy.wait_ended()
    held = changes(records)[0]
    assert held["rules"] == ["wait"] and held["held_ms"] >= 3000
    pings = [m for m in messages(records, sender="client") if m["opcode"] == 9]
    pongs = [m for m in messages(records, sender="server") if m["opcode"] == 10]
    assert len(pings) >= 2 and len(pongs) >= 2  # pings flowed while the message was held
    assert any(r["type"] == "diagnostic" and r["code"] == "hold-released" for r in records)


def test_strip_takes_deflate_out_of_the_offer(wstap, peer):
    port = peer(PYTHON, str(PEERS / "websockets_echo_server.py"))
    proxy = wstap(f"ws://127.0.0.1:{port}", ["--rule", "text=x => mark seen", "--compression", "strip"])

    async def run():
        async with connect(proxy.url + "/s") as ws:
            await ws.send("x")
            return await ws.recv()

    assert asyncio.run(run()) == "x"
    records = proxy.wait_ended()
    opened = [r for r in records if r["type"] == "open"][0]
    assert opened["extensions"] is None
    assert not any(h[0].lower() == "sec-websocket-extensions" for h in opened["request"]["headers"])
    assert changes(records)[0]["marks"] == ["seen"] and changes(records)[0]["result"] == "forwarded"


def test_the_rules_file_is_reloaded_for_connections_already_open(wstap, peer, tmp_path):
    port = peer(PYTHON, str(PEERS / "websockets_echo_server.py"))
    rules = tmp_path / "rules.txt"
    rules.write_text("# first version\n[one] from=client => replace /a/ \"1\"\n")
    proxy = wstap(f"ws://127.0.0.1:{port}", ["--rules", str(rules)])

    async def run():
        async with connect(proxy.url + "/r") as ws:
            await ws.send("a")
            first = await ws.recv()
            # A broken version keeps the rules in force, and says why.
            rules.write_text("[two] from=client => replace /a/\n")
            proxy.wait_for(r"rules\.txt:1:.*keeping the 1 rule in force")
            await ws.send("a")
            second = await ws.recv()
            rules.write_text("[three] from=client => replace /a/ \"3\"\n")
            proxy.wait_for(r"rules\.txt reloaded: 1 rule in force")
            await ws.send("a")
            return first, second, await ws.recv()

    assert asyncio.run(run()) == ("1", "1", "3")
    assert [c["rules"] for c in changes(proxy.wait_ended())] == [["one"], ["one"], ["three"]]


@pytest.mark.parametrize("args,expected", [
    (["--rule", "from=client => nonsense"], "unknown action 'nonsense'"),
    (["--exec", "./hook.py", "--exec-fail", "maybe"], "--exec-fail must be open or closed"),
    (["--exec", "./hook.py", "--exec-timeout", "0"], "--exec-timeout must be"),
    (["--rule", "from=client => drop", "--compression", "maybe"], "--compression must be keep, strip or reencode"),
    (["--filter", "len>>3"], "--filter"),
])
def test_bad_rules_and_settings_give_one_line_and_exit_64(args, expected):
    result = subprocess.run([WSTAP, "proxy", "--listen", "127.0.0.1:0", "--upstream", "ws://127.0.0.1:9", *args],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 64, result.stderr
    assert expected in result.stderr


def test_corrupt_makes_a_real_server_fail_the_connection_as_rfc_6455_says(wstap, peer):
    """Python websockets as the server: text that is not UTF-8 is answered with close 1007, an
    unmasked client frame with 1002; the messages before arrive untouched."""
    port = peer(PYTHON, str(PEERS / "websockets_echo_server.py"))
    proxy = wstap(f"ws://127.0.0.1:{port}", ["--rule", "[bad-text] text=\"break utf8\" => corrupt utf8",
                                             "--rule", "[no-mask] text=\"break mask\" => corrupt mask"])

    for trigger, code in [("break utf8", 1007), ("break mask", 1002)]:
        echoed, close = echo_then_close(proxy.url + "/x", trigger, compression=None)
        assert (echoed, getattr(close, "code", close)) == ("hello", code)
    made = changes(proxy.wait_records(lambda r: len(changes(r)) == 2, "both change records"))
    assert [(c["rules"], c["result"]) for c in made] == [(["bad-text"], "edited"), (["no-mask"], "edited")]


def test_abort_resets_both_connections(wstap, peer):
    """Python websockets on both ends: after `abort` (on the server's echo) the client sees its
    connection end without a close frame, and the record says which rule ended it."""
    port = peer(PYTHON, str(PEERS / "websockets_echo_server.py"))
    proxy = wstap(f"ws://127.0.0.1:{port}", ["--rule", "[kill] from=server text=boom => abort"])

    assert echo_then_close(proxy.url + "/x", "boom") == ("hello", None)
    records = proxy.wait_ended()
    assert [(c["rules"], c["result"]) for c in changes(records)] == [(["kill"], "aborted")]
    end = [r for r in records if r["type"] == "end"][-1]
    assert "rule 'kill' aborted the connection" in end["reason"] and end["closed_by"] == "proxy"


def test_injected_messages_reach_both_peers_of_a_compressing_connection(wstap, peer):
    """Python websockets on both ends with permessage-deflate: one client message makes wstap send a
    message of its own to each side (uncompressed, as RFC 7692 allows); the server echoes the one it
    got, and later compressed messages still inflate everywhere."""
    port = peer(PYTHON, str(PEERS / "websockets_echo_server.py"))
    proxy = wstap(f"ws://127.0.0.1:{port}", ["--rule", "[hi] from=client text=hello => inject to=client text \"from wstap\"; "
                                             "inject to=server text \"for the server\""])

    async def run():
        async with connect(proxy.url + "/x") as ws:
            await ws.send("hello")
            got = sorted([await asyncio.wait_for(ws.recv(), 30) for _ in range(3)])
            await ws.send("compressed after the injection, compressed after the injection")
            return got, await asyncio.wait_for(ws.recv(), 30)

    got, after = asyncio.run(run())
    assert got == ["for the server", "from wstap", "hello"]
    assert after == "compressed after the injection, compressed after the injection"
    records = proxy.wait_ended()
    injected = [c for c in changes(records) if c["result"] == "injected"]
    assert sorted((c["from"], c["sent"][0]["text"], c["sent"][0]["compressed"]) for c in injected) == [
        ("client", "for the server", False), ("server", "from wstap", False)]
    # The server's echo of the injected message was recorded like any message it sent.
    assert "for the server" in [m["text"] for m in messages(records, sender="server") if m["opcode"] == 1]


def test_close_to_the_server_completes_the_handshake_with_both_peers(wstap, peer):
    """`close 4000 reason to=server` on a client message: the websockets server gets wstap's close and
    answers it; that answer reaches the client, whose own answer stays with wstap. Both sides see a
    clean close with wstap's code and reason."""
    port = peer(PYTHON, str(PEERS / "websockets_echo_server.py"))
    proxy = wstap(f"ws://127.0.0.1:{port}", ["--rule", "[shut] from=client text=shut => close 4000 \"rule says bye\" to=server"])

    echoed, close = echo_then_close(proxy.url + "/x", "shut")
    assert (echoed, getattr(close, "code", None), getattr(close, "reason", None)) == ("hello", 4000, "rule says bye")
    records = proxy.wait_ended()
    made = changes(records)
    assert [(c["from"], c["result"]) for c in made] == [("client", "closed"), ("client", "injected"), ("client", "dropped")]
    assert made[1]["sent"][0]["opcode"] == 8 and "answer to wstap's close" in made[2]["notes"][0]
    server_closes = [m for m in messages(records, sender="server") if m["opcode"] == 8]
    assert [m.get("code") for m in server_closes] == [4000]


def test_node_ws_client_sees_an_injection_and_a_close_with_its_code(wstap, peer):
    """Node ws on both ends with compression: a server message makes wstap inject one of its own to the
    client, a later one makes wstap close the client's side with 4001; the client's answer goes on to
    the server, whose answer wstap keeps, so the Node client sees a normal close with that code."""
    port = peer("node", str(PEERS / "node_ws_echo_server.js"), "--deflate", env=NODE_ENV)
    proxy = wstap(f"ws://127.0.0.1:{port}", ["--rule", "[hi] from=server op=text text=one => inject to=client text \"hello node\"",
                                             "--rule", "[shut] from=server op=text text=two => close 4001 \"enough\" to=client"])
    out = subprocess.run(["node", str(PEERS / "node_ws_client.js"), proxy.url + "/n", "one", "two"],
                         capture_output=True, text=True, timeout=60, env=NODE_ENV)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert lines == [{"binary": False, "data": "one"}, {"binary": False, "data": "hello node"}, {"binary": True, "data": "one"}, {"closed": 4001}]
    records = proxy.wait_ended()
    assert [c["result"] for c in changes(records) if c["rules"] == ["shut"]][:2] == ["closed", "injected"]
