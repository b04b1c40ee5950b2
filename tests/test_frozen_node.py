"""A node that was frozen past its TTL never acts on what it was granted before.

Issue 12, finding 5: a client holds a file with no sharing through node 1;
node 1 is frozen (SIGSTOP) while the client's WRITE waits in its socket; the
cluster declares node 1 dead and node 2's client takes the file and writes;
node 1 is resumed. Before the fix, node 1 executed the queued WRITE over the
new owner's data (3 times of 3). Now every request that touches the volume
first checks that the node's registration is still vouched for (a monotonic
clock against the last confirmed heartbeat renewal), so the resumed node
fences itself and drops the connection instead.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.smb2client import SMB2Client, SmbError
from gateway.cluster import ClusterSpec, LocalCluster
from gateway.protocol.constants import CreateDisposition

from .conftest import PASSWORD, USER, free_port, signalled_cluster, write_users

NODE_TTL = 1.0
ROUNDS = int(os.environ.get("SMBGW_FROZEN_ROUNDS", "20"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Path]]:
    tmp = tmp_path_factory.mktemp("frozen")
    share = tmp / "share"
    share.mkdir()
    spec = ClusterSpec(
        nodes=2,
        port=free_port(),
        shares=[f"share={share}"],
        users=str(write_users(tmp / "users")),
        node_args=["--break-timeout", "5", "--node-ttl", str(NODE_TTL)],
        log_dir=tmp / "logs",
    )
    with signalled_cluster(spec) as c:
        yield c, share


async def _connect(host: str, port: int, deadline: float) -> SMB2Client:
    """A logged-on client; a resumed node may need a moment to register again."""
    while True:
        try:
            return await SMB2Client.connect(host, port, user=USER, password=PASSWORD)
        except (OSError, ConnectionError, SmbError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _take(client: SMB2Client, name: str, deadline: float) -> object:
    """Open ``name`` with no sharing, retrying while another open still holds it."""
    tree = await client.tree_connect("share")
    while True:
        try:
            return await tree.create(name, share_access=0, disposition=CreateDisposition.OPEN)
        except SmbError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _round(cluster: LocalCluster, share: Path, index: int) -> tuple[bytes, str]:
    (h1, port), (h2, _) = cluster.endpoints
    node1 = cluster.nodes[0].proc
    name = f"frozen-{index}.dat"
    (share / name).write_bytes(b"original")
    deadline = time.monotonic() + 30
    old = await _connect(h1, port, deadline)
    held = await _take(old, name, deadline)
    os.kill(node1.pid, signal.SIGSTOP)
    try:
        queued = asyncio.ensure_future(held.write(0, b"OLD-OWNER-WRITE"))  # type: ignore[attr-defined]
        await asyncio.sleep(0.2)  # the WRITE sits in node 1's socket
        new = await _connect(h2, port, deadline)
        taken = await _take(new, name, deadline)  # after node 1 is declared dead
        await taken.write(0, b"NEW")  # type: ignore[attr-defined]
        await taken.close()  # type: ignore[attr-defined]
        await new.close()
    finally:
        os.kill(node1.pid, signal.SIGCONT)
    try:
        await asyncio.wait_for(queued, 10)
        outcome = "executed"
    except (ConnectionError, OSError, SmbError) as e:
        outcome = type(e).__name__
    except TimeoutError:
        outcome = "no answer"
    try:
        await asyncio.wait_for(old.transport.close(), 5)
    except (ConnectionError, OSError, TimeoutError):
        pass
    return (share / name).read_bytes(), outcome


def test_a_resumed_node_never_writes_over_the_new_owner(
    cluster: tuple[LocalCluster, Path],
) -> None:
    c, share = cluster
    results = [asyncio.run(_round(c, share, i)) for i in range(ROUNDS)]
    kept = [data for data, _ in results if data.startswith(b"NEW")]
    assert len(kept) == ROUNDS, [(data, outcome) for data, outcome in results]
    assert all(outcome != "executed" for _, outcome in results), results
    log = c.nodes[0].log_path
    assert log is not None and "cannot vouch" in log.read_text()
