"""Durable opens outlive their connection and their node (issue 12): on the
bus, against every store.

Node A's client holds a durable or persistent open; node A dies (the bus is
told, as liveness tells it, through ``drop_node``), or only the client's
connection drops (node A calls ``disconnect``). The open stays in the
record, disconnected, holding its share mode, lease and locks, until a client
takes it over through node B or its timeout runs out; what a disconnected
open cannot do is answer a break (see ``oplock_bus.disconnected``).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from oplock_bus.api import (
    LEASE_HANDLE,
    LEASE_READ,
    LEASE_WRITE,
    OPLOCK_BATCH,
    OPLOCK_LEASE,
    STATUS_FILE_NOT_AVAILABLE,
    STATUS_LOCK_NOT_GRANTED,
    STATUS_SHARING_VIOLATION,
    STATUS_SUCCESS,
    Leaving,
    LockRange,
    Operation,
)
from oplock_bus.coordinator import Coordinator
from tests.conftest_bus import SHARE_ALL, SHARE_NONE, Client, run, settle, started

R, H, W = LEASE_READ, LEASE_HANDLE, LEASE_WRITE
F = "vol:1"
LOCK = [LockRange(0, 10, True)]


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


async def _bus(backend: str) -> Coordinator:
    bus = await started(backend, break_timeout=5.0)
    assert isinstance(bus, Coordinator)
    return bus


async def _left_behind(bus: Coordinator, *, persistent: bool, lease: bool = True) -> Client:
    """Node A's client holds F (RWH lease or Batch, no sharing, a lock); A dies."""
    a = Client(bus, "A")
    got = await a.open(
        "h", share=SHARE_NONE, durable_ms=60_000, persistent=persistent,
        lease=a.lease(1, R | W | H) if lease else None,
        oplock=0 if lease else OPLOCK_BATCH,
    )  # fmt: skip
    assert got.status == STATUS_SUCCESS
    assert await bus.lock(F, a.oid("h"), LOCK, wait=False) == STATUS_SUCCESS
    assert await bus.drop_node("A") == 1
    return a


def test_a_dead_nodes_durable_open_is_taken_over_with_its_lease_and_lock(backend: str) -> None:
    async def body() -> None:
        bus = await _bus(backend)
        await _left_behind(bus, persistent=True)
        found = await bus.find_disconnected("h")
        assert found is not None and found.file == F and found.persistent
        assert found.reclaim == {"client": "A"}
        assert (found.oplock, found.lease_state) == (OPLOCK_LEASE, R | W | H)
        # Nobody else gets in meanwhile: not the file, not the range.
        c = Client(bus, "C", client_guid=b"other-client-guid")
        assert (await c.open("x", share=SHARE_ALL)).status == STATUS_FILE_NOT_AVAILABLE
        taken = await bus.reconnect(found, "B/h2", "B")
        assert taken is not None and taken.lease_state == R | W | H
        assert await bus.find_disconnected("h") is None  # taken once, not twice
        assert await bus.reconnect(found, "B/h3", "B") is None
        # The lock is the new open's now, and still holds against others.
        snap = (await bus.snapshot())["files"][F]
        assert [x["open_id"] for x in snap["locks"]] == ["B/h2"]
        assert snap["opens"]["B/h2"]["node_id"] == "B"
        assert await bus.check_io(F, "B/h2", 0, 10, True)
        # Connected again: an opener now waits for a break it can answer.
        assert (await c.open("y", share=SHARE_ALL)).status == STATUS_SHARING_VIOLATION
        await bus.stop()

    run(body())


def test_a_durable_open_that_would_need_a_break_is_closed(backend: str) -> None:
    async def body() -> None:
        bus = await _bus(backend)
        await _left_behind(bus, persistent=False, lease=False)
        assert await bus.find_disconnected("h") is not None
        c = Client(bus, "C")
        got = await asyncio.wait_for(c.open("x", share=SHARE_ALL), 2)  # no 5 s break wait
        assert got.status == STATUS_SUCCESS
        assert await bus.find_disconnected("h") is None
        assert await bus.lock(F, c.oid("x"), LOCK, wait=False) == STATUS_SUCCESS  # lock gone
        await bus.stop()

    run(body())


def test_an_open_that_breaks_nothing_leaves_it_alone(backend: str) -> None:
    async def body() -> None:
        bus = await _bus(backend)
        a = Client(bus, "A")
        lease = a.lease(1, R | H)
        got = await a.open("h", share=SHARE_ALL, durable_ms=60_000, lease=lease)
        assert got.lease_state == R | H
        await bus.drop_node("A")
        c = Client(bus, "C")
        assert (await c.open("x", share=SHARE_ALL)).status == STATUS_SUCCESS
        assert await bus.find_disconnected("h") is not None
        # A write by the new open breaks R and H, a break that wants an answer
        # nobody can give: the open goes, and the write does not wait.
        await asyncio.wait_for(bus.break_for(F, c.oid("x"), Operation.WRITE), 2)
        assert await bus.find_disconnected("h") is None
        await bus.stop()

    run(body())


def test_a_persistent_open_loses_caching_to_an_operation_without_waiting(backend: str) -> None:
    async def body() -> None:
        bus = await _bus(backend)
        a = Client(bus, "A")
        lease = a.lease(1, R | H)
        await a.open("h", share=SHARE_ALL, durable_ms=60_000, persistent=True, lease=lease)
        await bus.drop_node("A")
        c = Client(bus, "C")
        assert (await c.open("x", share=SHARE_ALL)).status == STATUS_SUCCESS
        await asyncio.wait_for(bus.break_for(F, c.oid("x"), Operation.RENAME), 2)
        found = await bus.find_disconnected("h")
        assert found is not None and found.lease_state == R  # kept, without H
        await bus.stop()

    run(body())


def test_without_handle_caching_a_durable_open_dies_with_its_node(backend: str) -> None:
    async def body() -> None:
        bus = await _bus(backend)
        a = Client(bus, "A")
        await a.open("h", share=SHARE_NONE, durable_ms=60_000, lease=a.lease(1, R))
        await bus.drop_node("A")
        assert await bus.find_disconnected("h") is None
        c = Client(bus, "C")
        assert (await c.open("x", share=SHARE_ALL)).status == STATUS_SUCCESS
        await bus.stop()

    run(body())


def test_an_unclaimed_open_expires(backend: str) -> None:
    async def body() -> None:
        bus = await _bus(backend)
        a = Client(bus, "A")
        await a.open("h", share=SHARE_NONE, durable_ms=300, persistent=True)
        assert await bus.lock(F, a.oid("h"), LOCK, wait=False) == STATUS_SUCCESS
        await bus.drop_node("A")
        c = Client(bus, "C")
        assert (await c.open("x", share=SHARE_ALL)).status == STATUS_FILE_NOT_AVAILABLE
        await asyncio.sleep(0.4)
        # The sweep any live node runs closes it, and forgets its index entry.
        assert await bus.sweep_disconnected() == 1
        assert await bus.store.keys("durable:") == []
        assert (await c.open("x", share=SHARE_ALL)).status == STATUS_SUCCESS
        assert await bus.lock(F, c.oid("x"), LOCK, wait=False) == STATUS_SUCCESS
        await bus.stop()

    run(body())


def test_an_expired_open_goes_at_the_next_open_even_before_a_sweep(backend: str) -> None:
    async def body() -> None:
        bus = await _bus(backend)
        a = Client(bus, "A")
        await a.open("h", share=SHARE_NONE, durable_ms=200, persistent=True)
        await bus.drop_node("A")
        await asyncio.sleep(0.3)
        c = Client(bus, "C")
        assert (await c.open("x", share=SHARE_ALL)).status == STATUS_SUCCESS
        assert await bus.find_disconnected("h") is None
        await settle()
        assert await bus.store.keys("durable:") == []
        await bus.stop()

    run(body())


def test_a_lock_against_a_disconnected_open_is_refused(backend: str) -> None:
    async def body() -> None:
        bus = await _bus(backend)
        a = Client(bus, "A")
        await a.open("h", share=SHARE_ALL, durable_ms=60_000, lease=a.lease(1, R | H))
        assert await bus.lock(F, a.oid("h"), LOCK, wait=False) == STATUS_SUCCESS
        await bus.drop_node("A")
        c = Client(bus, "C")
        assert (await c.open("x", share=SHARE_ALL)).status == STATUS_SUCCESS
        assert await bus.lock(F, c.oid("x"), LOCK, wait=False) == STATUS_LOCK_NOT_GRANTED
        await bus.stop()

    run(body())


def test_two_nodes_racing_for_one_open_get_it_once(backend: str) -> None:
    async def body() -> None:
        bus = await _bus(backend)
        await _left_behind(bus, persistent=True)
        found = await bus.find_disconnected("h")
        assert found is not None
        got = await asyncio.gather(*(bus.reconnect(found, f"N{i}/h", f"N{i}") for i in range(4)))
        assert sum(g is not None for g in got) == 1
        snap = (await bus.snapshot())["files"][F]
        assert len(snap["opens"]) == 1
        await bus.stop()

    run(body())


def test_a_dropped_connections_durable_open_waits_for_its_client(backend: str) -> None:
    async def body() -> None:
        bus = await _bus(backend)
        a = Client(bus, "A")
        await a.open("h", share=SHARE_NONE, durable_ms=60_000, lease=a.lease(1, R | W | H))
        assert await bus.lock(F, a.oid("h"), LOCK, wait=False) == STATUS_SUCCESS
        before = time.time()
        # Node A is alive; only its client's connection dropped (a resiliency
        # timeout of 5 s replaces the 60 s, the file position travels along).
        assert await bus.disconnect(F, a.oid("h"), Leaving(5_000, {"position": 4096}))
        found = await bus.find_disconnected("h")
        assert found is not None and found.reclaim == {"client": "A", "position": 4096}
        _, index = await bus.store.load("durable:{h}")
        assert index is not None and before + 5 <= index["expires"] <= time.time() + 5
        # Its client comes back through node B: lease and lock go with it.
        taken = await bus.reconnect(found, "B/h", "B")
        assert taken is not None and taken.lease_state == R | W | H
        snap = (await bus.snapshot())["files"][F]
        assert list(snap["opens"]) == ["B/h"]
        assert [lock["open_id"] for lock in snap["locks"]] == ["B/h"]
        await bus.stop()

    run(body())


def test_a_dropped_connection_closes_an_open_without_handle_caching(backend: str) -> None:
    async def body() -> None:
        bus = await _bus(backend)
        a = Client(bus, "A")
        await a.open("h", share=SHARE_NONE, durable_ms=60_000, lease=a.lease(1, R))
        assert not await bus.disconnect(F, a.oid("h"))
        assert await bus.find_disconnected("h") is None
        c = Client(bus, "C")
        assert (await c.open("x", share=SHARE_NONE)).status == STATUS_SUCCESS
        await bus.stop()

    run(body())


def test_a_durable_attribute_open_is_recorded_so_it_can_wait(backend: str) -> None:
    async def body() -> None:
        bus = await _bus(backend)
        a = Client(bus, "A")
        # Attribute-only opens stay out of the record, except a durable one.
        await a.open("h", access=0x80, share=SHARE_ALL, durable_ms=60_000, persistent=True)
        assert await bus.disconnect(F, a.oid("h"))
        assert await bus.find_disconnected("h") is not None
        await bus.stop()

    run(body())


def test_a_resilient_open_loses_caching_to_an_opener_but_stays(backend: str) -> None:
    async def body() -> None:
        bus = await _bus(backend)
        a = Client(bus, "A")
        # Not durable: resilient only (FSCTL_LMR_REQUEST_RESILIENCY), so its
        # node says what a reconnect checks when the connection drops.
        await a.open("h", share=SHARE_ALL, lease=a.lease(1, R | W | H))
        leaving = Leaving(10_000, {"client": "A"}, resilient=True, durable_key="h")
        assert await bus.disconnect(F, a.oid("h"), leaving)
        c = Client(bus, "C", client_guid=b"other-client-guid")
        got = await c.open("x", share=SHARE_ALL, lease=c.lease(2, R | W))
        # Granted at once, but only R: A still caches R and H (pike's
        # durable.test_resiliency_reconnect_before_timeout, as Windows).
        assert (got.status, got.lease_state) == (STATUS_SUCCESS, R)
        found = await bus.find_disconnected("h")
        assert found is not None and found.lease_state == R | H
        await bus.stop()

    run(body())


def test_a_disconnected_open_is_found_by_the_create_that_made_it(backend: str) -> None:
    async def body() -> None:
        bus = await _bus(backend)
        a = Client(bus, "A")
        await a.open("h", share=SHARE_NONE, durable_ms=300, persistent=True)
        assert await bus.disconnect(F, a.oid("h"), Leaving(replay_key="client:create"))
        found = await bus.find_replayable("client:create")
        assert found is not None and found.open_id == a.oid("h")
        assert await bus.find_replayable("client:other") is None
        assert await bus.reconnect(found, "B/h", "B") is not None
        # Connected again: a replay is the new node's business now.
        assert await bus.find_replayable("client:create") is None
        assert await bus.store.keys("replay:") == []
        await bus.stop()

    run(body())


def test_a_replay_index_entry_goes_with_its_expired_open(backend: str) -> None:
    async def body() -> None:
        bus = await _bus(backend)
        a = Client(bus, "A")
        await a.open("h", share=SHARE_NONE, durable_ms=200, persistent=True)
        assert await bus.disconnect(F, a.oid("h"), Leaving(replay_key="client:create"))
        await asyncio.sleep(0.3)
        await bus.sweep_disconnected()
        assert await bus.find_replayable("client:create") is None
        assert await bus.store.keys("replay:") == []
        await bus.stop()

    run(body())


def test_the_in_process_bus_sweeps_what_nobody_reclaims() -> None:
    async def body() -> None:
        bus = await _bus("memory")
        a = Client(bus, "A")
        await a.open("h", share=SHARE_NONE, durable_ms=200, persistent=True)
        assert await bus.disconnect(F, a.oid("h"))
        await asyncio.sleep(1.5)  # nobody opens the file: the sweep closes it
        assert await bus.store.keys("durable:") == []
        assert (await bus.snapshot())["files"] == {}
        await bus.stop()

    run(body())


def test_the_index_entry_records_when_it_expires(backend: str) -> None:
    async def body() -> None:
        bus = await _bus(backend)
        before = time.time()
        await _left_behind(bus, persistent=True)
        _, doc = await bus.store.load("durable:{h}")
        assert doc is not None and doc["file"] == F
        assert before + 60 <= doc["expires"] <= time.time() + 60
        await bus.stop()

    run(body())
