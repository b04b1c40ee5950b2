"""The caching client keeps its promise against a gateway node.

While it holds Write caching its writes and locks stay in the client (the
file on disk does not change, no LOCK reaches the server); a conflicting
open from a second client makes the server break it, the break arrives
before that open completes, and the second client then reads the first
one's buffered data and cannot take its locked range.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.caching import PAGE, RWH, CachingFile
from clients.smb2client import SMB2Client, SmbError
from gateway.protocol.constants import CreateDisposition, Status

from .conftest import PASSWORD, USER, GatewayNode, start_gateway
from .test_clients_smb2 import connect, run

LOCK_AT = 0x10000005


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayNode]:
    gw = start_gateway(tmp_path_factory.mktemp("gw-caching"))
    yield gw
    assert gw.stop() == 0, gw.log()[-4000:]
    assert "Traceback" not in gw.log(), gw.log()[-4000:]


async def _seed(client: SMB2Client, name: str, data: bytes) -> None:
    tree = await client.tree_connect("share")
    f = await tree.create(name, disposition=CreateDisposition.OVERWRITE_IF)
    await f.write(0, data)
    await f.close()


@pytest.mark.parametrize("mode", ["lease", "oplock"])
def test_break_flushes_buffered_writes_and_pushes_locks(node: GatewayNode, mode: str) -> None:
    name = f"cached-{mode}.bin"
    original = b"o" * (3 * PAGE)
    update = b"A" * 5000  # page 0 whole, page 1 in part: a read-modify-write

    async def go() -> None:
        a, b = await connect(node), await connect(node)
        await _seed(a, name, original)
        events: list[tuple[str, float]] = []
        fa = await CachingFile.open(
            await a.tree_connect("share"),
            name,
            mode=mode,
            on_event=lambda ev, d: events.append((ev, float(d["t"]))),  # type: ignore[arg-type]
        )
        assert fa.caching == RWH
        await fa.write(100, update)
        await fa.lock(LOCK_AT, 1)
        assert await fa.read(100, len(update)) == update
        # Honest caching: nothing has reached the server yet.
        assert (node.share_dir / name).read_bytes() == original
        assert fa.dirty_pages == 2 and fa.stats.local_locks == 1 and fa.stats.server_locks == 0

        tb = await b.tree_connect("share")
        started = time.monotonic()
        fb = await CachingFile.open(tb, name, mode="none")
        completed = time.monotonic()
        names = [e for e, _ in events]
        assert names == ["break", "flushed", "locks_pushed", "acked"]
        times = dict(events)
        assert started <= times["break"] <= times["acked"] <= completed
        assert a.breaks_received == 1 and fa.dirty_pages == 0 and fa.stats.pushed_locks == 1
        assert not fa.caching & 4  # Write caching gone

        expected = original[:100] + update + original[100 + len(update) :]
        assert await fb.read(0, len(original)) == expected
        assert (node.share_dir / name).read_bytes() == expected
        with pytest.raises(SmbError) as e:
            await fb.lock(LOCK_AT, 1, wait=False)
        assert e.value.status == Status.LOCK_NOT_GRANTED
        # The lock now lives on the server, so unlocking goes there too.
        await fa.unlock(LOCK_AT, 1)
        await fb.lock(LOCK_AT, 1, wait=False)
        # Writes now go through: B sees them at once.
        await fa.write(0, b"B")
        assert await fb.read(0, 1) == b"B"
        await fa.close()
        await fb.close()
        for c in (a, b):
            await c.close()

    run(go())


def test_reads_come_from_the_cache_while_read_caching_is_held(node: GatewayNode) -> None:
    async def go() -> None:
        c = await connect(node)
        await _seed(c, "reads.bin", b"r" * (2 * PAGE))
        f = await CachingFile.open(await c.tree_connect("share"), "reads.bin")
        assert await f.read(10, 20) == b"r" * 20
        assert f.stats.server_reads == 1
        for _ in range(5):
            assert await f.read(PAGE - 5, 10) == b"r" * 10  # page 1 is fetched once
        assert f.stats.server_reads == 2 and f.stats.cache_reads == 4  # 1 miss, 4 hits
        assert await f.read(2 * PAGE - 4, 100) == b"r" * 4  # clipped at end of file
        await f.close()
        await c.close()

    run(go())


def test_without_caching_everything_goes_to_the_server(node: GatewayNode) -> None:
    async def go() -> None:
        c = await connect(node)
        await _seed(c, "plain.bin", b"")
        f = await CachingFile.open(await c.tree_connect("share"), "plain.bin", mode="none")
        assert f.caching == 0
        await f.write(0, b"through")
        assert (node.share_dir / "plain.bin").read_bytes() == b"through"
        await f.lock(LOCK_AT, 1)
        assert f.stats.server_locks == 1 and f.stats.local_locks == 0
        await f.unlock(LOCK_AT, 1)
        await f.close()
        await c.close()

    run(go())


def test_local_locks_conflict_like_server_locks(node: GatewayNode) -> None:
    async def go() -> None:
        c = await connect(node)
        await _seed(c, "local.bin", b"x")
        f = await CachingFile.open(await c.tree_connect("share"), "local.bin")
        await f.lock(10, 10)
        await f.lock(30, 10, exclusive=False)
        await f.lock(35, 1, exclusive=False)  # shared beside shared
        with pytest.raises(SmbError):
            await f.lock(15, 1, wait=False)
        waiter = asyncio.ensure_future(f.lock(15, 1))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        await f.unlock(10, 10)
        await asyncio.wait_for(waiter, 2)
        assert f.stats.server_locks == 0
        await f.close()
        await c.close()

    run(go())


def test_simultaneous_opens_break_the_first_holder(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path / "gw")

    async def go() -> None:
        a = await SMB2Client.connect(gw.host, gw.port, user=USER, password=PASSWORD)
        b = await SMB2Client.connect(gw.host, gw.port, user=USER, password=PASSWORD)
        await _seed(a, "race.bin", b"")
        ta, tb = await a.tree_connect("share"), await b.tree_connect("share")
        # Both CREATEs leave in the same loop iteration, as two users opening one database.
        fa, fb = await asyncio.wait_for(
            asyncio.gather(
                ta.create("race.bin", lease_state=RWH), tb.create("race.bin", lease_state=RWH)
            ),
            5,
        )
        holders = [f for f in (fa, fb) if f.lease_state & 4]
        assert len(holders) <= 1
        assert a.breaks_received + b.breaks_received >= 1
        for c in (a, b):
            await c.close()

    try:
        run(go())
    finally:
        gw.stop()
