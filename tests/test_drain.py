"""Planned moves (issue 12, item 7): `smbgw drain NODE`.

Two nodes with takeover on a continuously available share (127.0.0.1 and
127.0.0.2, a real redis-server). A client holds a persistent handle with an
RWH lease, written data and a byte-range lock through node 1. `smbgw drain
node1` reports each step and exits 0: node 1 stopped listening, node 2 serves
127.0.0.1, node 1 closed the client's connection, and `smbgw status` shows
node 1 as DRAINED. Meanwhile another client's open for writing is
FILE_NOT_AVAILABLE; the client comes back to 127.0.0.1 (node 2 now) and
reclaims its handle, data and lock intact. Node 1 is then stopped: node 2 keeps
serving its address; started again, node 1 gets it back (the rolling upgrade).
A drain of a node the bus does not know, or through a bus nobody answers on,
exits 2 with one line; one that a frozen node does not answer in time, 1.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from smbprotocol.exceptions import SMBException
from smbprotocol.open import FilePipePrinterAccessMask, ShareAccess

from bench.persistent import (
    STATUS_FILE_NOT_AVAILABLE,
    STATUS_LOCK_NOT_GRANTED,
    Client,
    committed,
    lease,
    lock_range,
    open_file,
    status_of,
    until_reclaimed,
)
from gateway.cluster import LocalCluster
from gateway.takeover import assignment, listen_own, release_own
from oplock_bus.liveness import AddressView
from oplock_bus.status import collect

from .conftest import REPO, local_spec, signalled_cluster

SHARE_ALL = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    tmp = tmp_path_factory.mktemp("drain")
    spec = local_spec(tmp, node_args=["--break-timeout", "5"], ca=True, takeover=True)
    with signalled_cluster(spec) as c:
        yield c


def _smbgw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _served(c: LocalCluster, address: str) -> list[str]:
    assert c.bus_url is not None
    rows = {a["address"]: a for a in asyncio.run(collect(c.bus_url))["addresses"]}
    return list(rows[address]["served_by"]) if address in rows else []


def _until(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout} s")
        time.sleep(0.05)


def _node_of(c: LocalCluster, server_guid: uuid.UUID) -> str:
    """Which node answered (its ServerGuid derives from its id, as node.py does)."""
    guids = {
        uuid.UUID(bytes=uuid.uuid5(uuid.NAMESPACE_URL, f"smbgw:{n.node_id}").bytes_le): n.node_id
        for n in c.nodes
    }
    return guids[server_guid]


def _one_line_error(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("smbgw drain: "), result.stderr
    assert words in lines[0], lines[0]


# -- refused ------------------------------------------------------------------------------------


def test_drain_of_an_unknown_node_exits_2(cluster: LocalCluster) -> None:
    _one_line_error(
        _smbgw("drain", "--bus", cluster.bus_url or "", "node9"),
        "no node node9 on the bus (nodes: node1, node2)",
    )


def test_drain_through_an_unreachable_bus_exits_2() -> None:
    _one_line_error(_smbgw("drain", "--bus", "redis://127.0.0.1:1", "node1"), "127.0.0.1:1")


# -- the planned move -----------------------------------------------------------------------


def test_a_drained_nodes_clients_and_address_move_to_another_node(cluster: LocalCluster) -> None:
    c = cluster
    assert c.bus_url is not None
    (h1, port), (h2, _) = c.endpoints
    address = f"{h1}:{port}"
    guid, lease_key, create_guid = uuid.uuid4(), os.urandom(16), uuid.uuid4()
    a = Client(h1, port, guid)
    f = committed(a, "db.dat", lease_key, create_guid)

    started = time.monotonic()
    result = _smbgw("drain", "--bus", c.bus_url, "node1")
    took = time.monotonic() - started
    print(f"\nsmbgw drain node1 took {took:.2f} s:\n{result.stdout}")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("asked node node1 (epoch "), lines
    assert lines[1] == (
        f"node node1 is draining: no new connections (stopped listening on {address})"
    ), lines
    assert f"{address} is served by node node2 now" in lines
    assert any(line.startswith("node node1 closed 1 client connection(s)") for line in lines)
    assert lines[-1].startswith("node node1 drained in "), lines
    assert took < 5, took  # the default node_ttl: a drain need not wait for a failover
    with pytest.raises(SMBException):
        a.conn.echo()  # node 1 closed it

    status = _smbgw("status", "--bus", c.bus_url).stdout
    assert any(line.startswith("  node1 ") and line.endswith("DRAINED")
               for line in status.splitlines()), status  # fmt: skip
    assert f"  {address}  served by node2 (taken over from node1)\n" in status, status

    # Meanwhile the handle waits on the bus for its client: nobody writes.
    b = Client(h2, port, uuid.uuid4())
    assert status_of(lambda: open_file(b, "db.dat", [], SHARE_ALL)) == STATUS_FILE_NOT_AVAILABLE
    b.close()

    # The client comes back to the address it knows, node 2's now.
    a2, (g, _, _), attempts = until_reclaimed(
        h1, port, guid, "db.dat", f, lease_key, create_guid, time.monotonic() + 10
    )
    assert _node_of(c, a2.conn.server_guid) == "node2"
    assert attempts == 1  # handed to the bus before the drain reported done
    assert g.file_id[:8] == f.file_id[:8]
    assert g.read(0, 16) == b"committed record"
    other = open_file(a2, "db.dat", [lease(lease_key)], SHARE_ALL,
                      access=FilePipePrinterAccessMask.GENERIC_READ)  # fmt: skip
    assert status_of(lambda: lock_range(other, 0, 10)) == STATUS_LOCK_NOT_GRANTED
    other.close()
    g.close()
    a2.close()
    a.close()

    # The rolling upgrade: stopped, node 1 leaves its address with node 2;
    # started again, it gets it back.
    c.nodes[0].proc.send_signal(signal.SIGTERM)
    assert c.nodes[0].proc.wait(timeout=10) == 0
    time.sleep(0.5)  # node 2's next look
    assert _served(c, address) == ["node2"]
    c.restart(0)
    _until("node1 serving its address again", lambda: _served(c, address) == ["node1"], 10)
    status = _smbgw("status", "--bus", c.bus_url).stdout
    assert "DRAIN" not in status, status


def test_a_drain_nobody_answers_exits_1(cluster: LocalCluster) -> None:
    """A frozen node is still registered but answers nothing."""
    node2 = cluster.nodes[1].proc
    os.kill(node2.pid, signal.SIGSTOP)
    try:
        result = _smbgw("drain", "--bus", cluster.bus_url or "", "--timeout", "1", "node2")
    finally:
        os.kill(node2.pid, signal.SIGCONT)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith("asked node node2 (epoch "), result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("smbgw drain: node node2 did not report drained within 1 s"), lines


# -- the choice ---------------------------------------------------------------------------------


def test_a_drained_node_is_an_owner_gone_and_no_taker() -> None:
    def rec(node: str) -> dict[str, Any]:
        return {"id": node, "address": f"10.0.0.{node[1:]}:445", "takeover": True}

    nodes = ["n1", "n2", "n3"]
    live = {n: rec(n) for n in nodes}
    assert assignment(AddressView(live, live)) == {}
    # n1 drains while n3 is dead: both addresses go to n2, none to n1.
    view = AddressView({n: live[n] for n in ("n1", "n2")}, live, frozenset({"n1"}))
    assert assignment(view) == {"10.0.0.1:445": "n2", "10.0.0.3:445": "n2"}


# -- separate hosts: the address itself moves ------------------------------------------------

MOVER = """#!/bin/sh
case "$1" in
  add) touch {marker} ;;
  remove) rm -f {marker} ;;
esac
"""


class _Host:
    """A host's listening sockets: the address is there only while ``marker`` is."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker
        self.bound: list[str] = []

    async def listen(self, host: str, port: int) -> None:
        if not self.marker.exists():
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
        self.bound.append(f"{host}:{port}")

    async def unlisten(self, host: str, port: int, drop_clients: bool = True) -> int:
        return 0

    def listening(self) -> list[str]:
        return self.bound


class _Bus:
    ttl = 1.0

    async def wait_registered(self, node_id: str) -> bool:
        return False


def test_a_drained_address_leaves_its_host_and_comes_back_at_start(tmp_path: Path) -> None:
    """With a takeover command, the drain removes the node's own address
    (the taker adds it elsewhere); started again, the node adds it back."""
    marker = tmp_path / "address-is-here"
    marker.touch()
    command = tmp_path / "move-address"
    command.write_text(MOVER.format(marker=marker))
    command.chmod(0o755)
    asyncio.run(release_own(str(command), "n1", "10.0.0.1", 445))
    assert not marker.exists()
    host = _Host(marker)
    with pytest.raises(OSError, match="Cannot assign"):
        asyncio.run(listen_own(host, _Bus(), "n1", "10.0.0.1", 445))  # type: ignore[arg-type]
    asyncio.run(listen_own(host, _Bus(), "n1", "10.0.0.1", 445, command=str(command)))  # type: ignore[arg-type]
    assert host.bound == ["10.0.0.1:445"] and marker.exists()
