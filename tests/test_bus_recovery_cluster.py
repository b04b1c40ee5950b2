"""The lock space survives a Redis Cluster master's death (issue 13).

A 3-master Redis Cluster with one replica each (real redis-server processes
on loopback, cluster-node-timeout 1 s) and two real node processes on it. A
pike client holds a file through node 1 (no sharing, a batch oplock, data
written, a byte locked); the master of the slot holding the file's record
is killed with SIGKILL and its replica promoted:

- with the data replicated (a clean failover): the nodes see a replica
  serving slots (CLUSTER NODES, oplock_bus/redis_slots.py) and recover,
  which rebuilds what was there already;
- restarted empty first (the slot's generation copy is gone): the nodes
  recover;
- having missed the holder's open and lock (the replica stopped, its link
  cut, before the client opened), while it still has the slot's generation
  copy: only the promotion tells, and the recovery puts the open back.

Each time an smbprotocol client's open through node 2 is refused with
STATUS_SHARING_VIOLATION, the holder keeps writing on its handle and its
lock stands, and no client connection is dropped.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis._parsers.helpers import parse_cluster_nodes

from gateway.cluster import LocalCluster
from oplock_bus import redis_slots

from .redis_fixtures import HOST, RedisProc, start_cluster
from .test_bus_recovery import Holder, _logs, _start_cluster, holder_still_holds
from .test_cross_node import Client

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


def _recovered(cluster: LocalCluster, deadline: float) -> str:
    """The nodes' logs once both tell a recovery ended after the promotion."""
    while True:
        logs = _logs(cluster)
        if logs.count("bus recovered under generation") >= 2:
            return logs
        assert time.monotonic() < deadline, logs[-3000:]
        time.sleep(0.05)


def _hold_off_the_nodes_master(servers: Servers, host: str, port: int) -> tuple[Holder, str, str]:
    """A holder of a file whose record is not on the master of {nodes}:
    the loss is then found by that slot alone (with {nodes}:gen gone too it
    is the Sentinel case of test_bus_recovery.py). The holder, the file's
    name, its record's key."""
    nodes_master, _ = servers.master_of(NAMESPACE + "{nodes}:gen")
    for _ in range(20):
        name = f"held-{uuid.uuid4().hex}.mdb"
        a = Holder(host, port, name)
        a.write(b"before the failover")
        a.lock(LOCKED)
        key = servers.record_holding(str(LOCKED))
        master, _ = servers.master_of(key)
        if master is not nodes_master:
            return a, name, key
        a.close()
    pytest.fail("every file's record landed on the master of {nodes}")


def _check_the_end(cluster: LocalCluster, a: Holder, b: Client, name: str, logs: str) -> None:
    assert "dropping every client connection" not in logs
    assert "Traceback" not in logs, logs[-3000:]
    a.close()
    b.open(name).close()  # once the holder closed, the other writer gets in
    b.close()


@pytest.mark.parametrize("replica_has_data", [True, False], ids=["replicated", "wiped"])
def test_a_cluster_master_loss_keeps_the_holder(
    servers: Servers, tmp_path: Path, replica_has_data: bool
) -> None:
    cluster: LocalCluster
    cluster, _ = _start_cluster(
        tmp_path, servers.url, ["--break-timeout", "2", "--node-ttl", str(NODE_TTL)]
    )
    try:
        (h1, port), _ = cluster.endpoints
        a, name, key = _hold_off_the_nodes_master(servers, h1, port)
        master, replica = servers.master_of(key)
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

        b = holder_still_holds(cluster, a, name, LOCKED)
        logs = _logs(cluster)
        if replica_has_data:
            # Nothing was lost, but a promotion cannot tell that.
            assert "Redis Cluster replica" in logs, logs[-3000:]
        else:
            # Whichever a node meets first: the promotion, or the lost copy.
            assert (
                "a cluster slot lost its copy of the generation" in logs
                or "Redis Cluster replica" in logs
            ), logs[-3000:]
        assert "bus recovered under generation" in logs, logs[-3000:]
        _check_the_end(cluster, a, b, name, logs)
        print(f"replica promoted {switched:.2f} s after the master's death")
    finally:
        cluster.stop()


def _get_on_replica(replica: RedisProc, key: str) -> bytes | None:
    """``key`` as the replica has it (a replica answers reads after READONLY)."""
    with redis.Redis(HOST, replica.port, single_connection_client=True) as conn:
        conn.execute_command("READONLY")
        value: bytes | None = conn.get(key)
        return value


def test_a_promoted_replica_that_missed_the_last_writes_is_rebuilt(
    servers: Servers, tmp_path: Path
) -> None:
    cluster: LocalCluster
    cluster, _ = _start_cluster(
        tmp_path, servers.url, ["--break-timeout", "2", "--node-ttl", str(NODE_TTL)]
    )
    stopped: RedisProc | None = None
    try:
        (h1, port), _ = cluster.endpoints
        # The file's slot gets its generation copy, which the replica keeps.
        first, name, key = _hold_off_the_nodes_master(servers, h1, port)
        first.close()
        master, replica = servers.master_of(key)
        deadline = time.monotonic() + 5
        while not _replicated(master, replica):
            assert time.monotonic() < deadline, "the replica never caught up"
            time.sleep(0.02)
        # The replica stops, its link is cut: what comes next it never gets
        # (the bytes already in its socket were sent before the cut).
        assert replica.proc is not None
        stopped = replica
        os.kill(replica.proc.pid, signal.SIGSTOP)
        assert "1" in master.cli("client", "kill", "type", "replica")
        a = Holder(h1, port, name)
        a.write(b"before the failover")
        a.lock(LOCKED)
        assert str(LOCKED) in master.cli("get", key)
        master.kill()  # SIGKILL
        os.kill(replica.proc.pid, signal.SIGCONT)
        stopped = None
        missed = _get_on_replica(replica, key)
        assert str(LOCKED).encode() not in (missed or b""), missed  # the write is lost there
        killed_at = time.monotonic()
        replica.cli("cluster", "failover", "takeover")
        _wait_promoted(replica, time.monotonic() + 15)
        # The nodes look at who serves the slots with each heartbeat (0.5 s);
        # a request in between would be decided on what the replica has.
        logs = _recovered(cluster, time.monotonic() + 10)
        recovered = time.monotonic() - killed_at

        b = holder_still_holds(cluster, a, name, LOCKED)
        assert "Redis Cluster replica" in logs, logs[-3000:]
        assert "a cluster slot lost its copy" not in logs, logs[-3000:]  # the copy was there
        assert str(LOCKED) in replica.cli("get", key)  # put back by node 1
        _check_the_end(cluster, a, b, name, _logs(cluster))
        print(f"recovered {recovered:.2f} s after the takeover began")
    finally:
        if stopped is not None and stopped.proc is not None:
            os.kill(stopped.proc.pid, signal.SIGCONT)
        cluster.stop()


def _view(*lines: str) -> redis_slots.Topology:
    """A Topology from CLUSTER NODES lines, parsed as redis-py parses them."""
    return redis_slots.Topology.parse(parse_cluster_nodes("\n".join(lines)))


def test_only_a_promotion_counts_and_an_older_view_is_not_taken() -> None:
    a, b, c = "a" * 40, "b" * 40, "c" * 40
    before = _view(
        f"{a} {HOST}:1@2 master - 0 0 1 connected 0-8191",
        f"{b} {HOST}:3@4 slave {a} 0 0 1 connected",
        f"{c} {HOST}:5@6 master - 0 0 2 connected 8192-16383",
    )
    promoted = _view(
        f"{a} {HOST}:1@2 master,fail - 0 0 1 disconnected",
        f"{b} {HOST}:3@4 master - 0 0 3 connected 0-8191",
        f"{c} {HOST}:5@6 master - 0 0 2 connected 8192-16383",
    )
    assert promoted.newer(before)
    assert promoted.promoted(before) == {b: a}
    # A server that has not heard of it yet: older, not taken.
    assert not before.newer(promoted)
    # Slots moved from one master to another: no promotion.
    resharded = _view(
        f"{a} {HOST}:1@2 master - 0 0 1 connected 0-4095",
        f"{b} {HOST}:3@4 slave {a} 0 0 1 connected",
        f"{c} {HOST}:5@6 master - 0 0 4 connected 4096-16383",
    )
    assert resharded.newer(before)
    assert resharded.promoted(before) == {}
