"""Ten thousand concurrent WebSocket connections through the proxy (Python websockets on both ends):
all open at once, a new one still opens and echoes while they are, and every one ends in a record.
The proxy holds two descriptors per connection, so the test raises the soft descriptor limit of its
processes to the hard limit; where the hard limit is below 20,000 plus some (a sandbox that cannot
raise it), it runs as many connections as fit and says so. RSS per connection is measured by
scripts/bench/connections.py, not asserted here."""
import asyncio
import resource

import pytest
from websockets.asyncio.client import connect

from conftest import PEERS, PYTHON, WSTAP, Proc, wait_records, start_peer

WANTED = 10_000


def raise_limit():
    """Raises this process's soft limit to the hard one (children inherit it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = min(hard, 1 << 20) if hard != resource.RLIM_INFINITY else 1 << 20
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    return limit


def connections_that_fit(limit):
    # Two descriptors per connection in the proxy, plus its own few hundred.
    count = min(WANTED, (limit - 300) // 2)
    if count < 1000:
        pytest.fail(f"the descriptor limit ({limit}) allows only {count} proxied connections; raise the hard limit (ulimit -Hn)")
    if count < WANTED:
        print(f"\nscale: hard descriptor limit {limit}: {count} connections instead of {WANTED}")
    return count


async def open_all(url, count, parallel=256):
    """Opens `count` connections, at most `parallel` handshakes at a time; returns them open."""
    gate = asyncio.Semaphore(parallel)
    async def one(i):
        async with gate:
            return await connect(f"{url}/c{i}", ping_interval=None, compression=None, open_timeout=60)
    return await asyncio.gather(*(one(i) for i in range(count)))


async def exercise(url, count):
    connections = await open_all(url, count)
    # While all are open, a new client still gets through and is answered.
    async with connect(f"{url}/late", ping_interval=None) as late:
        await late.send("still responsive")
        assert await late.recv() == "still responsive"
    # Every hundredth of the open connections still relays both ways.
    for ws in connections[::100]:
        await ws.send("echo")
    assert [await ws.recv() for ws in connections[::100]] == ["echo"] * len(connections[::100])
    await asyncio.gather(*(ws.close() for ws in connections))


def test_ten_thousand_connections_at_once(procs, tmp_path):
    count = connections_that_fit(raise_limit())
    server, port = start_peer(PYTHON, str(PEERS / "websockets_echo_server.py"), "--no-compression")
    procs.append(server)
    jsonl = tmp_path / "scale.jsonl"
    proxy = Proc([WSTAP, "proxy", "--listen", "127.0.0.1:0", "--upstream", f"ws://127.0.0.1:{port}", "--jsonl", str(jsonl), "-q"],
                 stream="stderr")
    procs.append(proxy)
    proxy_port = int(proxy.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))
    asyncio.run(exercise(f"ws://127.0.0.1:{proxy_port}", count))
    records = wait_records(jsonl, lambda r: sum(1 for x in r if x["type"] == "end") >= count + 1, "an end record per connection")
    opens = [r for r in records if r["type"] == "open"]
    assert len(opens) == count + 1
    assert len({r["conn"] for r in opens}) == count + 1
    ends = [r for r in records if r["type"] == "end"]
    assert all(e["reason"].startswith("close frame from client") for e in ends), {e["reason"] for e in ends}
