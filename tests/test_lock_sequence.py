"""A replayed LOCK is not applied twice, whichever node it reaches (MS-SMB2
3.3.5.14, Open.LockSequenceArray; issue 12 item 3), and a reconnect that
overtakes the hand-over of its handle waits for it.

A client holds a durable (v2) or persistent handle through node 1 of a
two-node cluster on a continuously available share and takes a shared lock
with LockSequence (index 1, number 1). Its connection drops, or node 1 is
killed with SIGKILL; the client reclaims the handle through node 2 and sends
the same LOCK again, as a client does that never saw the answer. The replay
succeeds without taking a second lock: the range unlocks once, and a second
unlock is RANGE_NOT_LOCKED. A LOCK with a new sequence number is applied.

Shared locks make a second application visible: the same open may hold the
same shared range twice, and each unlock removes one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from smbprotocol.exceptions import SMBResponseException
from smbprotocol.open import Open, SMB2LockElement

from bench.persistent import (
    PERSISTENT,
    Client,
    durable_open,
    reclaim,
    until_reclaimed,
)
from gateway.cluster import LocalCluster
from oplock_bus.api import STATUS_LOCK_NOT_GRANTED, STATUS_SUCCESS, Leaving, LockRange
from oplock_bus.coordinator import Coordinator

from .conftest import local_spec, signalled_cluster
from .conftest_bus import SHARE_ALL, run, started
from .conftest_bus import Client as BusClient

NODE_TTL = 1.0
STATUS_RANGE_NOT_LOCKED = 0xC000007E
SHARED_FAIL_IMMEDIATELY = 0x01 | 0x10
UNLOCK = 0x04


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    args = ["--break-timeout", "5", "--node-ttl", str(NODE_TTL)]
    with signalled_cluster(local_spec(tmp_path, node_args=args, ca=True)) as c:
        yield c


def lock(f: Open, flags: int, index: int, number: int) -> int:
    """A LOCK of bytes 0-9 with LockSequence (``index``, ``number``); its status.

    The sequence is set by hand: smbprotocol packs the two fields the other
    way round (number in the top bits), where MS-SMB2 2.2.26 puts the number
    in the low 4 bits and the index above it."""
    element = SMB2LockElement()
    element["offset"] = 0
    element["length"] = 10
    element["flags"] = flags
    request, receive = f.lock([element], send=False)
    request["lock_sequence"] = index << 4 | number
    session = f.tree_connect.session
    sent = f.connection.send(request, session.session_id, f.tree_connect.tree_connect_id)
    try:
        receive(sent)
    except SMBResponseException as e:
        return int(e.status)
    return 0


@pytest.mark.parametrize(
    ("how", "persistent"),
    [("drop", False), ("drop", True), ("kill", True), ("kill", False)],
    ids=["durable-drop", "persistent-drop", "persistent-kill", "durable-kill"],
)
def test_a_replayed_lock_is_applied_once_through_another_node(
    cluster: LocalCluster, how: str, persistent: bool
) -> None:
    (h1, port), (h2, _) = cluster.endpoints
    guid, lease_key, create_guid = uuid.uuid4(), os.urandom(16), uuid.uuid4()
    a = Client(h1, port, guid)
    f, flags, _ = durable_open(a, "ledger.dat", lease_key, create_guid, persistent)
    assert bool(flags & PERSISTENT) == persistent
    assert lock(f, SHARED_FAIL_IMMEDIATELY, 1, 1) == 0
    if how == "kill":
        os.kill(cluster.nodes[0].proc.pid, signal.SIGKILL)
    a.conn.disconnect(close=False)  # no LOGOFF: the handle must outlive it

    b, (g, _, _), _ = until_reclaimed(
        h2, port, guid, "ledger.dat", f, lease_key, create_guid, time.monotonic() + 15,
        persistent=persistent,
    )  # fmt: skip
    try:
        assert lock(g, SHARED_FAIL_IMMEDIATELY, 1, 1) == 0  # the replay: answered, not applied
        assert lock(g, UNLOCK, 2, 1) == 0
        assert lock(g, UNLOCK, 2, 2) == STATUS_RANGE_NOT_LOCKED  # one lock, not two
        assert lock(g, SHARED_FAIL_IMMEDIATELY, 1, 2) == 0  # a new number: applied
        assert lock(g, UNLOCK, 2, 3) == 0
        g.close()
    finally:
        b.close()


def test_a_reconnect_overtaking_the_hand_over_waits_for_it(tmp_path: Path) -> None:
    """The client's reconnect reaches node 2 before node 1 has seen the
    connection drop (node 1 is frozen for 0.5 s meanwhile): node 2 waits for
    the handle to be handed over instead of answering NOT_FOUND at once."""
    args = ["--node-ttl", "5"]  # the freeze must not get node 1 declared dead
    with signalled_cluster(local_spec(tmp_path, node_args=args, ca=True)) as c:
        (h1, port), (h2, _) = c.endpoints
        guid, lease_key, create_guid = uuid.uuid4(), os.urandom(16), uuid.uuid4()
        a = Client(h1, port, guid)
        f, _, _ = durable_open(a, "slow.dat", lease_key, create_guid, persistent=False)
        b = Client(h2, port, guid)
        pid = c.nodes[0].proc.pid
        os.kill(pid, signal.SIGSTOP)
        a.conn.disconnect(close=False)
        resume = threading.Timer(0.5, os.kill, (pid, signal.SIGCONT))
        resume.start()
        started = time.monotonic()
        try:
            g, _, _ = reclaim(b, "slow.dat", f, lease_key, create_guid, persistent=False)
        finally:
            resume.join()
        assert 0.4 < time.monotonic() - started < 2.5
        assert lock(g, SHARED_FAIL_IMMEDIATELY, 1, 1) == 0
        g.close()
        b.close()


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_the_bus_keeps_each_durable_opens_lock_sequences(backend: str) -> None:
    """What the gateway relies on, on each store: the array goes with the
    lock's own transaction, a refused request forgets its entry, a blocking
    one records it once granted, and it reaches whoever takes the open over;
    the open is seen connected until its node hands it over."""
    f, rng = "vol:seq", [LockRange(0, 10, True)]

    async def body() -> None:
        bus = await started(backend)
        assert isinstance(bus, Coordinator)
        a, c = BusClient(bus, "A"), BusClient(bus, "C", client_guid=b"other-client-guid")
        got = await a.open("h", file=f, share=SHARE_ALL, durable_ms=60_000, persistent=True)
        assert got.status == STATUS_SUCCESS
        assert (await c.open("x", file=f, share=SHARE_ALL)).status == STATUS_SUCCESS
        h, taken_by_c = a.oid("h"), [LockRange(20, 5, True)]
        assert await bus.lock(f, h, rng, wait=False, sequence=(1, 1)) == STATUS_SUCCESS
        assert await bus.lock(f, h, [LockRange(40, 5, True)], wait=False, sequence=(2, 3)) == 0
        assert await bus.lock(f, c.oid("x"), taken_by_c, wait=False) == STATUS_SUCCESS
        # Refused: its entry is no longer valid (a replay of 2/3 must run again).
        refused = await bus.lock(f, h, taken_by_c, wait=False, sequence=(2, 4))
        assert refused == STATUS_LOCK_NOT_GRANTED
        # Granted after a wait: recorded then.
        waiting = asyncio.ensure_future(bus.lock(f, h, taken_by_c, wait=True, sequence=(3, 7)))
        await asyncio.sleep(0.1)
        assert await bus.unlock(f, c.oid("x"), taken_by_c) == STATUS_SUCCESS
        assert await asyncio.wait_for(waiting, 5) == STATUS_SUCCESS
        assert await bus.find_connected(f, "h") == h
        assert await bus.drop_node("A") == 1
        assert await bus.find_connected(f, "h") is None
        found = await bus.find_disconnected("h")
        assert found is not None and found.lock_sequences == {1: 1, 3: 7}
        taken = await bus.reconnect(found, "B/h", "B")
        assert taken is not None and taken.lock_sequences == {1: 1, 3: 7}
        # At a hand-over the node's array replaces the bus's copy.
        left = Leaving(lock_sequences={4: 2})
        assert await bus.disconnect(f, "B/h", left)
        again = await bus.find_disconnected("h")
        assert again is not None and again.lock_sequences == {4: 2}
        await bus.stop()

    run(body())
