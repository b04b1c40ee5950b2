"""`smbgw demo failover` and the reconnect it relies on (issue 12, item 8).

* The demo: a Jet-like workload on a CA share of a 2-node cluster with
  takeover, one node SIGKILLed part way; its clients reconnect to the same
  address, reclaim their persistent handles and go on. For 3 seeds (the
  library, a fresh cluster each, node_ttl 1) and once as the real command:
  nothing committed is lost, no page is corrupt, and clients did reconnect.
* `clients.reconnect` against real nodes: a caching client whose node dies
  while it holds dirty pages and a local lock gets its handle back through
  the dead node's address with its cache intact, and gives the data and the
  lock to the cluster at the next break; a LOCK and a WRITE whose answers are
  lost (a proxy swallows them, then cuts the connection) are sent again
  without waiting for our own lock or writing anything twice.

Every process runs on loopback and is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from clients.caching import RWH, CachingFile
from clients.demo_failover import FailoverOptions, failover_cluster, run_failover_workload
from clients.jet import LOCK_BASE
from clients.messages import DurableRequest
from clients.reconnect import ReconnectFailed, Reconnector
from clients.smb2client import Open, SMB2Client, SmbError, Tree
from gateway.cluster import LocalCluster
from gateway.protocol.constants import Status

from .conftest import local_spec, signalled_cluster
from .test_demo import one_json_object, smbgw

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)

NODE_TTL = 1.0
USER = PASSWORD = "test"


# -- the demo ------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_failover_demo_loses_nothing_over_3_seeds() -> None:
    for seed in (1, 2, 3):
        opts = FailoverOptions(clients=4, updates=300, seed=seed, node_ttl=NODE_TTL, timeout=60)
        with failover_cluster(opts) as cluster:
            report = asyncio.run(run_failover_workload(cluster, opts))
            dead = [n.node_id for n in cluster.cluster.dead_nodes()]
        jet = report.jet
        assert jet.committed == opts.updates, (seed, report.as_dict())
        assert jet.lost == 0 and jet.corrupt_pages == 0, (seed, report.as_dict())
        assert dead == [report.killed_node] and report.killed_after is not None, seed
        # The kill hit working clients: they came back and took their handles.
        reconnected = [c for c in jet.clients if c.reconnects]
        assert reconnected and all(c.reclaimed == c.reconnects for c in reconnected), (
            seed,
            report.as_dict(),
        )
        # Declared dead after at most node_ttl, taken over within 0.5 s more.
        assert 0 < report.seconds_paused < NODE_TTL + 3, (seed, report.as_dict())


@pytest.mark.timeout(60)
def test_failover_command_prints_one_json_object() -> None:
    proc = smbgw(
        "demo", "failover", "--json", "--seed", "7", "--updates", "300", "--node-ttl", "1",
        timeout=60,
    )  # fmt: skip
    figures = one_json_object(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    assert figures["committed"] == 300 and figures["lost"] == 0, figures
    assert figures["corrupt_pages"] == 0, figures
    assert figures["killed_node"] in ("node1", "node2"), figures
    reconnects = figures["reconnects"]
    assert isinstance(reconnects, list) and len(reconnects) == 4 and sum(reconnects) >= 1
    assert isinstance(figures["seconds_paused"], float) and figures["seconds_paused"] > 0


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--nodes", "4"], "nodes must be between 2 and 3, not 4"),
        (["--node-ttl", "0.1"], "must be at least 0.5 s, not 0.1"),
        (["--clients", "0"], "clients must be between 1 and 64, not 0"),
    ],
)
def test_failover_bad_options_are_refused(args: list[str], words: str) -> None:
    proc = smbgw("demo", "failover", *args, timeout=30)
    assert proc.returncode == 2 and words in proc.stderr, proc.stderr
    assert proc.stdout == ""


# -- the reconnect, against real nodes ------------------------------------------------------


@pytest.fixture
def ca_cluster(tmp_path: Path) -> Iterator[tuple[LocalCluster, Path]]:
    """Two nodes, a CA share, takeover, node_ttl 1."""
    args = ["--node-ttl", str(NODE_TTL), "--break-timeout", "5"]
    with signalled_cluster(local_spec(tmp_path, node_args=args, ca=True, takeover=True)) as c:
        yield c, tmp_path / "share"


async def _logged_on(host: str, port: int) -> tuple[SMB2Client, Tree]:
    client = await SMB2Client.connect(host, port, user=USER, password=PASSWORD)
    return client, await client.tree_connect("share")


async def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for ``check`` to hold, polling."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


@pytest.mark.timeout(60)
def test_a_killed_node_loses_no_cached_write(ca_cluster: tuple[LocalCluster, Path]) -> None:
    c, share = ca_cluster
    (h1, port), (h2, _) = c.endpoints
    record = bytes(range(256)) * 32  # two pages

    async def scenario() -> None:
        a, tree = await _logged_on(h1, port)
        reconnect = Reconnector(a, deadline=20)
        f = await CachingFile.open(tree, "db.mdb", durable=DurableRequest(os.urandom(16)))
        assert f.op.persistent and f.caching == RWH
        await f.write(0, record)
        await f.lock(LOCK_BASE, 1)  # granted in A's cache
        assert f.dirty_pages == 2 and (share / "db.mdb").stat().st_size == 0

        os.kill(c.nodes[0].proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        await _until(lambda: reconnect.stats.reconnects == 1, 15, "A never reconnected")
        took = time.monotonic() - killed
        # Back through 127.0.0.1 (node 2 serves it now), same handle, cache untouched.
        assert reconnect.stats.reclaimed == 1 and a.transport is not None
        assert f.dirty_pages == 2 and f.caching == RWH
        assert (share / "db.mdb").stat().st_size == 0

        # B's open breaks A's lease through node 2: A writes back and pushes its lock first.
        b, btree = await _logged_on(h2, port)
        g = await btree.create("db.mdb")
        assert await g.read(0, len(record)) == record
        with pytest.raises(SmbError) as refused:
            await g.lock(LOCK_BASE, 1, wait=False)
        assert refused.value.status == Status.LOCK_NOT_GRANTED
        assert f.stats.flushed_pages == 2 and f.stats.pushed_locks == 1
        print(f"\nA reconnected and reclaimed {took:.2f} s after node 1's SIGKILL")
        await f.unlock(LOCK_BASE, 1)
        await g.lock(LOCK_BASE, 1, wait=False)
        await g.close()
        await f.close()
        await a.close()
        await b.close()

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_the_reconnect_gives_up_at_its_deadline(ca_cluster: tuple[LocalCluster, Path]) -> None:
    """Nobody answers 127.0.0.1 for about node_ttl after the kill: a 0.3 s deadline passes."""
    c, _ = ca_cluster
    (h1, port), _ = c.endpoints

    async def scenario() -> None:
        a, tree = await _logged_on(h1, port)
        reconnect = Reconnector(a, deadline=0.3)
        f = await CachingFile.open(
            tree, "db.mdb", mode="none", durable=DurableRequest(os.urandom(16))
        )
        os.kill(c.nodes[0].proc.pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(ReconnectFailed, match="no connection to 127.0.0.1 within 0.3 s"):
            await f.read(0, 10)
        assert time.monotonic() - started < 2 and reconnect.stats.reconnects == 0
        await f.close()  # gone: nothing to send
        await a.close()

    asyncio.run(scenario())


class CuttingProxy:
    """Relays a port to a node. ``mute()`` swallows what the node answers from
    then on; ``cut()`` closes both sides of every relayed connection (new ones
    are relayed normally): a request done by the server whose answer is lost."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.muted = False
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers += [writer, up_writer]
        await asyncio.gather(
            self._pipe(reader, up_writer, answers=False),
            self._pipe(up_reader, writer, answers=True),
            return_exceptions=True,
        )

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, answers: bool
    ) -> None:
        try:
            while data := await src.read(65536):
                if not (answers and self.muted):
                    dst.write(data)
                    await dst.drain()
        finally:
            dst.close()

    def mute(self) -> None:
        self.muted = True

    def cut(self) -> None:
        for w in self._writers:
            w.close()
        self._writers.clear()
        self.muted = False

    def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()


async def _locked_out(g: Open, offset: int) -> bool:
    """Whether another open's lock keeps ``g`` from ``offset`` (probed, not kept)."""
    try:
        await g.lock(offset, 1, wait=False)
    except SmbError as e:
        if e.status in (Status.LOCK_NOT_GRANTED, Status.FILE_LOCK_CONFLICT):
            return True
        raise
    await g.unlock(offset, 1)
    return False


@pytest.mark.timeout(60)
def test_requests_whose_answers_were_lost_are_sent_again(
    ca_cluster: tuple[LocalCluster, Path],
) -> None:
    c, share = ca_cluster
    (h1, port), _ = c.endpoints
    page_lock = LOCK_BASE + 3

    async def answer_lost(
        proxy: CuttingProxy, call: Awaitable[object], done: Callable[[], Awaitable[bool]]
    ) -> None:
        """``call`` reaches the node and takes effect there, its answer never
        comes back, the connection is cut: the client must send it again."""
        proxy.mute()
        task = asyncio.ensure_future(call)
        deadline = time.monotonic() + 5
        while not await done():
            assert time.monotonic() < deadline, "the request never took effect on the server"
            await asyncio.sleep(0.02)
        assert not task.done()
        proxy.cut()
        await asyncio.wait_for(task, 10)

    async def scenario() -> None:
        proxy = CuttingProxy((h1, port))
        a, tree = await _logged_on("127.0.0.1", await proxy.start())
        reconnect = Reconnector(a, deadline=20)
        # No caching: every call goes to the server.
        f = await CachingFile.open(
            tree, "jet.mdb", mode="none", durable=DurableRequest(os.urandom(16))
        )
        assert f.op.persistent
        b, btree = await _logged_on(h1, port)
        g = await btree.create("jet.mdb")

        async def a_holds_the_lock() -> bool:
            return await _locked_out(g, page_lock)

        async def a_let_go() -> bool:
            return not await _locked_out(g, page_lock)

        async def page_written() -> bool:
            return (share / "jet.mdb").read_bytes() == page

        # A LOCK granted, its answer lost: sent again, it must not wait for A's own lock.
        await answer_lost(proxy, f.lock(page_lock, 1), a_holds_the_lock)
        assert (reconnect.stats.reconnects, reconnect.stats.replayed) == (1, 1)
        assert await a_holds_the_lock()
        # A WRITE done, its answer lost: sent again, the same bytes at the same place.
        page = b"P" * 4096
        await answer_lost(proxy, f.write(0, page), page_written)
        assert (share / "jet.mdb").read_bytes() == page
        # An UNLOCK done, its answer lost: the replay's RANGE_NOT_LOCKED means done.
        await answer_lost(proxy, f.unlock(page_lock, 1), a_let_go)
        assert (reconnect.stats.reconnects, reconnect.stats.replayed) == (3, 3)
        assert reconnect.stats.reclaimed == 3
        await f.close()
        await g.close()
        await a.close()
        await b.close()
        proxy.close()

    asyncio.run(scenario())
