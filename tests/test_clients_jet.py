"""The Jet-like workload: no lost update on one server, lost updates on a naive cluster.

* one gateway node, 4 caching clients: every increment survives, every page
  checksum verifies;
* Samba's smbd, the independent reference server, same workload: the same
  (this proves the caching client, not just our own server);
* two gateway nodes over one directory, each with its own in-process bus
  (the naive multi-mount): each node grants its own client Write caching,
  and updates are lost. That is the corruption the project exists to prevent.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.samba import Smbd
from clients.caching import RWH, CachingFile
from clients.jet import LOCK_BASE, JetConfig, JetReport, decode_page, encode_page, run_jet
from clients.smb2client import SMB2Client, SmbError
from gateway.cluster import LocalCluster
from gateway.protocol.constants import CreateDisposition, Dialect

from .conftest import (
    PASSWORD,
    USER,
    GatewayNode,
    free_port,
    local_spec,
    start_gateway,
)


def jet(endpoints: list[tuple[str, int]], cfg: JetConfig, timeout: float = 45) -> JetReport:
    seen: list[int] = []

    async def go() -> JetReport:
        return await asyncio.wait_for(
            run_jet(endpoints, cfg, progress=lambda done, total: seen.append(done)), timeout
        )

    report = asyncio.run(go())
    assert seen == list(range(1, cfg.updates + 1))  # progress: once per commit, in order
    return report


def test_page_format_detects_damage() -> None:
    page = encode_page(3, 41, 2, 4096)
    assert decode_page(page, 3, 4096) == (41, True)
    assert decode_page(page, 4, 4096)[1] is False  # another page's record
    torn = page[:2048] + encode_page(3, 42, 1, 4096)[2048:]
    assert decode_page(torn, 3, 4096)[1] is False


@pytest.fixture
def node(tmp_path: Path) -> Iterator[GatewayNode]:
    gw = start_gateway(tmp_path / "gw")
    yield gw
    assert gw.stop() == 0, gw.log()[-4000:]
    assert "Traceback" not in gw.log(), gw.log()[-4000:]


def test_jet_on_one_gateway_node_loses_nothing(node: GatewayNode) -> None:
    report = jet([(node.host, node.port)], JetConfig(clients=4, updates=1000, seed=7))
    assert report.committed == 1000
    assert report.lost == 0 and report.corrupt_pages == 0, report.details()
    # The clients really cached: the first had Write caching, was broken and gave it back.
    assert report.breaks >= 1
    assert sum(c.stats.local_locks for c in report.clients) > 0
    assert sum(c.stats.flushed_pages for c in report.clients) > 0


def test_jet_with_batch_oplocks_on_one_gateway_node(node: GatewayNode) -> None:
    report = jet([(node.host, node.port)], JetConfig(clients=4, updates=400, seed=3, mode="oplock"))
    assert report.lost == 0 and report.corrupt_pages == 0, report.details()
    assert report.breaks >= 1


def test_jet_on_a_coordinated_two_node_cluster_loses_nothing(tmp_path: Path) -> None:
    """The same workload over two nodes sharing a Redis bus: breaks cross nodes."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    spec = local_spec(tmp_path)
    with LocalCluster(spec) as cluster:
        report = jet(cluster.endpoints, JetConfig(clients=4, updates=1000, seed=7))
    assert report.committed == 1000
    assert report.lost == 0 and report.corrupt_pages == 0, report.details()
    # Client 0 (node 1) starts with Write caching; client 1's open on node 2 breaks it.
    assert report.clients[0].breaks >= 1 and report.clients[0].stats.flushed_pages > 0


def test_uncoordinated_nodes_lose_updates(tmp_path: Path) -> None:
    """Two nodes, one directory, no shared bus: both grant Write caching."""
    share = tmp_path / "share"
    share.mkdir()
    nodes = [start_gateway(tmp_path / f"n{i}", share_dir=share) for i in range(2)]
    try:
        endpoints = [(n.host, n.port) for n in nodes]
        report = jet(endpoints, JetConfig(clients=4, updates=1000, seed=11))
    finally:
        for n in nodes:
            n.stop()
    assert report.committed == 1000
    assert report.lost > 0, report.details()


# -- Samba's smbd: the independent server ---------------------------------------------


@pytest.fixture
def smbd() -> Iterator[tuple[tuple[str, int], Path]]:
    """Samba's smbd on a free loopback port: ((host, port), share directory)."""
    if shutil.which("smbd") is None:
        pytest.skip("Samba's smbd is not installed")
    if os.geteuid() != 0:
        pytest.skip("smbd needs root (it switches to the test user)")
    # pytest's tmp dirs are 0700; smbd serves the share as user test.
    work = Path(tempfile.mkdtemp(prefix="smbgw-clients-smbd-"))
    work.chmod(0o755)
    try:
        # Without samba-vfs-modules the share has no VFS modules; the workload needs none.
        with Smbd(work / "smbd", free_port()).start() as server:
            yield server.endpoints[0], server.share
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_jet_on_samba_loses_nothing(smbd: tuple[tuple[str, int], Path]) -> None:
    report = jet([smbd[0]], JetConfig(clients=4, updates=1000, seed=7))
    assert report.committed == 1000
    assert report.lost == 0 and report.corrupt_pages == 0, report.details()
    assert report.breaks >= 1


def test_client_interoperates_with_samba(smbd: tuple[tuple[str, int], Path]) -> None:
    """Every dialect and protection, then a break that flushes, against smbd."""
    (host, port), share_dir = smbd
    combos = [
        (Dialect.SMB2_1, True, False),
        (Dialect.SMB3_0_2, True, False),
        (Dialect.SMB3_0_2, False, True),
        (Dialect.SMB3_1_1, False, False),
        (Dialect.SMB3_1_1, True, False),
        (Dialect.SMB3_1_1, False, True),
    ]

    async def connect(**kw: object) -> SMB2Client:
        return await SMB2Client.connect(host, port, user=USER, password=PASSWORD, **kw)  # type: ignore[arg-type]

    async def go() -> None:
        for dialect, sign, encrypt in combos:
            c = await connect(dialects=(dialect,), require_signing=sign, encrypt=encrypt)
            tree = await c.tree_connect("share")
            f = await tree.create("rt.bin", disposition=CreateDisposition.OVERWRITE_IF)
            await f.write(0, b"samba" * 30000)
            assert await f.read(0, 200000) == b"samba" * 30000
            await f.lock(LOCK_BASE, 1)
            await f.unlock(LOCK_BASE, 1)
            await f.close()
            await c.close()
        a, b = await connect(), await connect()
        ta, tb = await a.tree_connect("share"), await b.tree_connect("share")
        fa = await CachingFile.open(ta, "brk.bin", disposition=CreateDisposition.OVERWRITE_IF)
        assert fa.caching == RWH
        await fa.write(0, b"unflushed")
        await fa.lock(LOCK_BASE, 1)
        assert (share_dir / "brk.bin").read_bytes() == b""  # still only in A's cache
        fb = await tb.create("brk.bin")
        assert a.breaks_received == 1 and fa.stats.pushed_locks == 1
        assert await fb.read(0, 100) == b"unflushed"
        with pytest.raises(SmbError):
            await fb.lock(LOCK_BASE, 1, wait=False)
        await fa.close()
        await fb.close()
        for c in (a, b):
            await c.close()

    asyncio.run(asyncio.wait_for(go(), 45))
