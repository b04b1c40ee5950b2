"""The lock space survives Redis (issue 13): a Redis that comes back empty
costs clients a pause, not their handles, and grants nothing twice.

Two real node processes on one real redis-server. Redis is killed with
SIGKILL and started again, empty, on the same port, while a client holds a
file (no sharing, a batch oplock, data written, a byte locked) through node
1. The holder is a pike client (pike queues a break it was not asked to wait
for, where smbprotocol's receiver dies on one), the other writer an
smbprotocol client.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pike.model
import pike.smb2
import pytest
from smbprotocol.exceptions import SMBException, SMBResponseException
from smbprotocol.open import RequestedOplockLevel

from bench import persistent
from gateway.cluster import ClusterSpec, LocalCluster
from gateway.localsentinel import LocalSentinel

from .conftest import PASSWORD, USER, free_port, write_users
from .redis_fixtures import RedisProc, start_redis
from .test_cross_node import STATUS_SHARING_VIOLATION, Client

NODE_TTL = 5.0


class Holder:
    """A pike connection holding one file: no sharing, a batch oplock."""

    def __init__(self, host: str, port: int, name: str) -> None:
        self.conn = pike.model.Client().connect(host, port).negotiate()
        self.chan = self.conn.session_setup(f"{USER}%{PASSWORD}")
        self.tree = self.chan.tree_connect("share")
        self.handle = self.chan.create(
            self.tree, name, share=0, oplock_level=pike.smb2.SMB2_OPLOCK_LEVEL_BATCH
        ).result()
        assert self.handle.oplock_level == pike.smb2.SMB2_OPLOCK_LEVEL_BATCH

    def write(self, data: bytes) -> None:
        self.chan.write(self.handle, 0, data)

    def read(self, length: int) -> bytes:
        return bytes(self.chan.read(self.handle, length, 0))

    def lock(self, offset: int) -> None:
        self.chan.lock(
            self.handle,
            [
                (
                    offset,
                    1,
                    pike.smb2.SMB2_LOCKFLAG_EXCLUSIVE_LOCK
                    | pike.smb2.SMB2_LOCKFLAG_FAIL_IMMEDIATELY,
                )
            ],
        ).result()

    def close(self) -> None:
        self.chan.close(self.handle)
        self.chan.logoff()
        self.conn.close()


def _start_cluster(
    tmp_path: Path, bus: str, node_args: list[str], ca: bool = False
) -> tuple[LocalCluster, Path]:
    """Two nodes on ``bus`` sharing one fresh share; the caller stops them."""
    share = tmp_path / "share"
    share.mkdir()
    spec = ClusterSpec(
        nodes=2,
        port=free_port(),
        shares=[f"share={share}"],
        users=str(write_users(tmp_path / "users")),
        bus=bus,
        node_args=node_args,
        continuous_availability=ca,
        log_dir=tmp_path / "logs",
    )
    cluster = LocalCluster(spec)
    cluster.start()
    return cluster, share


@pytest.fixture
def redis_and_cluster(tmp_path: Path) -> Iterator[tuple[RedisProc, LocalCluster]]:
    redis = start_redis(tmp_path / "redis")
    cluster, share = _start_cluster(
        tmp_path,
        f"redis://127.0.0.1:{redis.port}/0",
        ["--break-timeout", "2", "--node-ttl", str(NODE_TTL)],
    )
    try:
        yield redis, cluster
    finally:
        cluster.stop()
        redis.stop()


def _logs(cluster: LocalCluster) -> str:
    return "".join(
        n.log_path.read_text(errors="replace") for n in cluster.nodes if n.log_path is not None
    )


def holder_still_holds(cluster: LocalCluster, a: Holder, name: str, locked: int) -> Client:
    """Through node 2 the file is refused, the holder writes on its handle and
    its lock at ``locked`` stands; the other writer's client, to end with."""
    (_, port), (h2, _) = cluster.endpoints
    b = Client(h2, port)
    with pytest.raises(SMBResponseException) as err:
        b.open(name)
    assert err.value.status == STATUS_SHARING_VIOLATION, hex(err.value.status)
    a.write(b"after the failover!")
    assert a.read(19) == b"after the failover!"
    with pytest.raises(pike.model.ResponseError) as lock_err:
        a.lock(locked)  # its own lock is still there
    assert lock_err.value.response.status == pike.ntstatus.STATUS_LOCK_NOT_GRANTED
    return b


def test_a_redis_restart_keeps_the_holder_and_refuses_the_other_writer(
    redis_and_cluster: tuple[RedisProc, LocalCluster],
) -> None:
    redis, cluster = redis_and_cluster
    (h1, port), (h2, _) = cluster.endpoints
    name = f"held-{uuid.uuid4().hex}.mdb"
    a = Holder(h1, port, name)
    a.write(b"before the restart")
    a.lock(0x10000000)

    redis.kill()
    redis.start()  # the same port, nothing in it
    # At once, before its node noticed: what it reads of the empty Redis must
    # not make the node forget what it holds.
    a.lock(0x10000001)

    b = Client(h2, port)
    started = time.monotonic()
    with pytest.raises(SMBResponseException) as err:
        b.open(name)
    refused_after = time.monotonic() - started
    assert err.value.status == STATUS_SHARING_VIOLATION, hex(err.value.status)

    # The holder never noticed: same connection, same handle, its lock.
    a.write(b"after the restart!")
    assert a.read(18) == b"after the restart!"
    with pytest.raises(pike.model.ResponseError) as lock_err:
        a.lock(0x10000000)  # its own lock is still there
    assert lock_err.value.response.status == pike.ntstatus.STATUS_LOCK_NOT_GRANTED
    b.open(f"other-{uuid.uuid4().hex}").close()  # node 2 grants again
    logs = _logs(cluster)
    assert "bus recovered under generation" in logs, logs[-3000:]
    assert "dropping every client connection" not in logs
    assert "Traceback" not in logs
    a.close()
    b.open(name).close()  # once the holder closed, the other writer gets in
    b.close()
    print(f"other writer refused after {refused_after:.2f} s (break timeout 2 s)")


def SentinelSet(workdir: Path) -> LocalSentinel:  # noqa: N802 - read as the set it starts
    """A master, a replica and three Sentinels (quorum 2) on loopback, started
    (gateway/localsentinel.py, which the demo and the bench use too)."""
    return LocalSentinel(workdir).start()


def test_a_sentinel_failover_to_a_wiped_replica_keeps_the_holder(tmp_path: Path) -> None:
    sentinels = SentinelSet(tmp_path / "redis")
    cluster, share = _start_cluster(
        tmp_path, sentinels.url, ["--break-timeout", "2"]
    )  # node_ttl: the default 5 s
    try:
        (h1, port), (h2, _) = cluster.endpoints
        name = f"held-{uuid.uuid4().hex}.mdb"
        a = Holder(h1, port, name)
        a.write(b"before the failover")
        a.lock(0x10000000)
        killed_at = time.monotonic()
        sentinels.master.kill()
        # The replica loses what it had before it is promoted.
        sentinels.replica.kill()
        sentinels.replica.start()
        deadline = time.monotonic() + 15
        while sentinels.master_port() != sentinels.replica.port:
            assert time.monotonic() < deadline, "no failover"
            time.sleep(0.05)
        switched = time.monotonic() - killed_at

        b = holder_still_holds(cluster, a, name, 0x10000000)
        logs = _logs(cluster)
        assert "bus recovered under generation" in logs, logs[-3000:]
        assert "dropping every client connection" not in logs
        a.close()
        b.open(name).close()
        b.close()
        print(f"Sentinel switched {switched:.2f} s after the master's death")
    finally:
        cluster.stop()
        sentinels.stop()


def test_a_disconnected_persistent_handle_survives_a_redis_restart_with_aof(
    tmp_path: Path,
) -> None:
    """A handle whose node died lives only in Redis: with the AOF fsynced on
    every write (docs/operations.md), a Redis restart keeps it reclaimable."""
    redis = start_redis(tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always")
    cluster, share = _start_cluster(
        tmp_path, f"redis://127.0.0.1:{redis.port}/0", ["--node-ttl", "1"], ca=True
    )
    try:
        (h1, port), (h2, _) = cluster.endpoints
        guid, lease_key, create_guid = uuid.uuid4(), os.urandom(16), uuid.uuid4()
        a = persistent.Client(h1, port, guid)
        f = persistent.committed(a, "db.dat", lease_key, create_guid)
        os.kill(cluster.nodes[0].proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while "durable:" not in redis.cli("--scan", "--pattern", "*durable:*"):
            assert time.monotonic() < deadline, "node 1's handle never reached the bus"
            time.sleep(0.1)

        redis.kill()
        redis.start()  # the AOF brings the disconnected handle back

        a2, (g, _, _), _ = persistent.until_reclaimed(
            h2, port, guid, "db.dat", f, lease_key, create_guid, time.monotonic() + 10
        )
        assert g.read(0, 16) == b"committed record"
        g.close()
        a2.close()
    finally:
        cluster.stop()
        redis.stop()


def test_a_node_frozen_through_the_recovery_never_writes_again(tmp_path: Path) -> None:
    """Node 1 is stopped (SIGSTOP) while Redis restarts empty: the recovery
    waits for it for node_ttl, then goes on without it, and its file goes to
    the next opener. Resumed, node 1 must not act on its old grant: its
    client's write fails and the other writer's data stays."""
    redis = start_redis(tmp_path / "redis")
    cluster, share = _start_cluster(
        tmp_path, f"redis://127.0.0.1:{redis.port}/0", ["--break-timeout", "2", "--node-ttl", "2"]
    )
    node1 = cluster.nodes[0].proc
    try:
        (h1, port), (h2, _) = cluster.endpoints
        name = f"held-{uuid.uuid4().hex}.mdb"
        a = Client(h1, port)  # never sent a break here: smbprotocol will do
        held = a.open(name, share=0, oplock=RequestedOplockLevel.SMB2_OPLOCK_LEVEL_BATCH)
        held.write(b"A's old grant", 0)
        os.kill(node1.pid, signal.SIGSTOP)
        try:
            redis.kill()
            redis.start()
            b = Client(h2, port)
            started = time.monotonic()
            taken = b.open(name, share=0)  # waits for the recovery, then gets it
            waited = time.monotonic() - started
            taken.write(b"B's new record", 0)
        finally:
            os.kill(node1.pid, signal.SIGCONT)
        with pytest.raises(SMBException):
            held.write(b"A overwrites!", 0)
        time.sleep(1.0)
        assert (share / name).read_bytes() == b"B's new record"
        taken.close()
        b.close()
        assert waited < 6.0, f"the other writer waited {waited:.1f} s"
        logs = _logs(cluster)
        assert "fence" in logs
    finally:
        cluster.stop()
        redis.stop()
