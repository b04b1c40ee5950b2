"""The lock space survives a Redis Cluster master's death (issue 13).

A 3-master Redis Cluster with one replica each (real redis-server processes
on loopback, cluster-node-timeout 1 s) and two real node processes on it. A
pike client holds a file through node 1 (no sharing, a batch oplock, data
written, a byte locked); the master of the slot holding the file's record
is killed with SIGKILL and its replica promoted, either with the data
replicated (a clean failover: nothing to rebuild) or restarted empty first
(a failover to a replica that missed the writes: the slot's generation copy
is gone, oplock_bus/redis_slots.py, and the nodes recover). Either way an
smbprotocol client's open through node 2 is refused with
STATUS_SHARING_VIOLATION, the holder keeps writing on its handle and its
lock stands, and no client connection is dropped.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pike.model
import pike.ntstatus
import pytest
from smbprotocol.exceptions import SMBResponseException

from gateway.cluster import LocalCluster

from .redis_fixtures import RedisProc, start_cluster
from .test_bus_recovery import Holder, _logs, _start_cluster
from .test_cross_node import STATUS_SHARING_VIOLATION, Client

NAMESPACE = "smbgw:"  # the bus URL's default
LOCKED = 0x10000000
# Long enough that a failover (about 2 s with a 1 s node timeout) is not
# taken for this node's own loss (it fences itself at 0.6 of it).
NODE_TTL = 8.0


class Servers:
    """The cluster's servers by role, as CLUSTER NODES tells them."""

    def __init__(self, url: str, procs: list[RedisProc]) -> None:
        self.url = url
        self.procs = procs

    def server(self, line: list[str]) -> RedisProc:
        """The server of a CLUSTER NODES line (its address: host:port@bus)."""
        port = int(line[1].split(":")[1].split("@")[0])
        return next(p for p in self.procs if p.port == port)

    def live(self) -> RedisProc:
        return next(p for p in self.procs if p.proc is not None)

    def nodes(self) -> list[list[str]]:
        return [line.split() for line in self.live().cli("cluster", "nodes").splitlines() if line]

    def master_of(self, key: str) -> tuple[RedisProc, RedisProc]:
        """(the master serving ``key``'s slot, its replica)."""
        slot = int(self.live().cli("cluster", "keyslot", key))
        for f in self.nodes():
            if "master" not in f[2]:
                continue
            for r in f[8:]:
                lo, _, hi = r.partition("-")
                if int(lo) <= slot <= int(hi or lo):
                    rep = next(g for g in self.nodes() if g[3] == f[0])
                    return self.server(f), self.server(rep)
        raise AssertionError(f"no master serves slot {slot}")

    def record_holding(self, needle: str) -> str:
        """The name of the file record whose value mentions ``needle``."""
        for f in self.nodes():
            if "master" not in f[2] or "fail" in f[2]:
                continue
            server = self.server(f)
            for key in server.cli("--scan", "--pattern", f"{NAMESPACE}file:*").split():
                if needle in server.cli("get", key):
                    return key
        raise AssertionError(f"no record mentions {needle}")


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    url, procs = start_cluster(lambda name: tmp_path / name, replicas=1, node_timeout_ms=1000)
    try:
        yield Servers(url, procs)
    finally:
        for p in procs:
            p.stop()


def _wait_promoted(server: RedisProc, deadline: float) -> None:
    while "master" not in server.cli("role").split("\n", 1)[0]:
        assert time.monotonic() < deadline, f"{server.port} was not promoted"
        time.sleep(0.05)


def _replicated(master: RedisProc, replica: RedisProc) -> bool:
    def offset(server: RedisProc, field: str) -> int:
        for line in server.cli("info", "replication").splitlines():
            if line.startswith(field + ":"):
                return int(line.split(":")[1])
        return -1

    return offset(master, "master_repl_offset") == offset(replica, "slave_repl_offset")


@pytest.mark.parametrize("replica_has_data", [True, False], ids=["replicated", "wiped"])
def test_a_cluster_master_loss_keeps_the_holder(
    servers: Servers, tmp_path: Path, replica_has_data: bool
) -> None:
    cluster: LocalCluster
    cluster, _ = _start_cluster(
        tmp_path, servers.url, ["--break-timeout", "2", "--node-ttl", str(NODE_TTL)]
    )
    try:
        (h1, port), (h2, _) = cluster.endpoints
        # A file whose record is not on the master of {nodes}: the loss is
        # then found by the slot's copy alone (with {nodes}:gen gone too it
        # is the Sentinel case of test_bus_recovery.py).
        nodes_master, _ = servers.master_of(NAMESPACE + "{nodes}:gen")
        for _ in range(20):
            name = f"held-{uuid.uuid4().hex}.mdb"
            a = Holder(h1, port, name)
            a.write(b"before the failover")
            a.lock(LOCKED)
            master, replica = servers.master_of(servers.record_holding(str(LOCKED)))
            if master is not nodes_master:
                break
            a.close()
        else:
            pytest.fail("every file's record landed on the master of {nodes}")
        if replica_has_data:
            deadline = time.monotonic() + 5
            while not _replicated(master, replica):
                assert time.monotonic() < deadline, "the replica never caught up"
                time.sleep(0.02)
        killed_at = time.monotonic()
        master.kill()  # SIGKILL
        if not replica_has_data:
            # The replica loses what it had, and is promoted as it is.
            replica.kill()
            (replica.workdir / "dump.rdb").unlink(missing_ok=True)
            replica.start()
            replica.cli("cluster", "failover", "takeover")
        _wait_promoted(replica, time.monotonic() + 15)
        switched = time.monotonic() - killed_at

        b = Client(h2, port)
        with pytest.raises(SMBResponseException) as err:
            b.open(name)
        assert err.value.status == STATUS_SHARING_VIOLATION, hex(err.value.status)
        a.write(b"after the failover!")
        assert a.read(19) == b"after the failover!"
        with pytest.raises(pike.model.ResponseError) as lock_err:
            a.lock(LOCKED)  # its own lock is still there
        assert lock_err.value.response.status == pike.ntstatus.STATUS_LOCK_NOT_GRANTED
        logs = _logs(cluster)
        if replica_has_data:
            assert "the bus lost its state" not in logs, logs[-3000:]
        else:
            assert "a cluster slot lost its copy of the generation" in logs, logs[-3000:]
            assert "bus recovered under generation" in logs, logs[-3000:]
        assert "dropping every client connection" not in logs
        assert "Traceback" not in logs, logs[-3000:]
        a.close()
        b.open(name).close()  # once the holder closed, the other writer gets in
        b.close()
        print(f"replica promoted {switched:.2f} s after the master's death")
    finally:
        cluster.stop()
