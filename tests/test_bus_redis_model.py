"""Random interleavings from several nodes on one Redis, against a reference.

Three bus instances (three nodes) share a lock space. Hypothesis draws
batches of operations: opens with oplocks or leases, closes, byte-range
locks (blocking ones wait in the background), unlocks. A batch runs
concurrently; its clients answer breaks as they arrive (or, on one node,
never: the break timeout decides). After every batch the lock space must
hold: no two conflicting caching grants, no overlapping exclusive ranges,
no two opens whose share modes exclude each other. A batch of one
operation is also checked exactly against the naive reference model of
``test_bus_contract``. In the end every handle closes and every waiter must
have been granted or refused.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oplock_bus import rules
from oplock_bus.api import (
    OPLOCK_NONE,
    STATUS_LOCK_NOT_GRANTED,
    STATUS_SUCCESS,
    LockBus,
    LockRange,
    OpenRequest,
)
from tests.conftest_bus import Client, make_test_bus, run, settle
from tests.redis_fixtures import isolated, shared_url
from tests.test_bus_contract import (
    ACCESS,
    CACHING,
    OPLOCK_OF,
    SHARE,
    Reference,
    RefHandle,
    _bits,
    _check_caching,
)

F = "vol:1"
NODES = 3
BREAK_TIMEOUT = 0.3


@dataclass(frozen=True)
class Open:
    node: int
    handle: int
    access: int
    share: int
    caching: str


@dataclass(frozen=True)
class Close:
    node: int
    handle: int


@dataclass(frozen=True)
class Lock:
    node: int
    handle: int
    offset: int
    length: int
    exclusive: bool
    wait: bool


@dataclass(frozen=True)
class Unlock:
    node: int
    handle: int
    offset: int
    length: int


NODE, HANDLE = st.integers(0, NODES - 1), st.integers(0, 1)
OFFSET, LENGTH = st.integers(0, 5), st.integers(0, 3)
OP = st.one_of(
    st.builds(Open, NODE, HANDLE, st.sampled_from(ACCESS), st.sampled_from(SHARE),
              st.sampled_from(CACHING)),
    st.builds(Close, NODE, HANDLE),
    st.builds(Lock, NODE, HANDLE, OFFSET, LENGTH, st.booleans(), st.booleans()),
    st.builds(Lock, NODE, HANDLE, OFFSET, LENGTH, st.booleans(), st.booleans()),
    st.builds(Unlock, NODE, HANDLE, OFFSET, LENGTH),
)  # fmt: skip
BATCHES = st.lists(st.lists(OP, min_size=1, max_size=3), min_size=1, max_size=12)
# One node's client never answers a break: the opener must still get in.
SILENT = st.sampled_from([None, 0, 1, 2])


def reference_of(snapshot: dict[str, Any]) -> Reference:
    doc = snapshot["files"].get(F, {"opens": {}, "locks": []})
    ref = Reference()
    for oid, o in doc["opens"].items():
        ref.handles[oid] = RefHandle(o["access"], o["share"])
    ref.locks = [(x["open_id"], x["offset"], x["length"], x["exclusive"]) for x in doc["locks"]]
    return ref


def check_invariants(snapshot: dict[str, Any]) -> None:
    _check_caching(snapshot)
    doc = snapshot["files"].get(F)
    if doc is None:
        return
    ref = Reference()
    locks = doc["locks"]
    for i, a in enumerate(locks):
        for b in locks[i + 1 :]:
            if not (a["exclusive"] or b["exclusive"]):
                continue
            if not ref.overlap((a["offset"], a["length"]), (b["offset"], b["length"])):
                continue
            # Only a shared lock stacked on its own open's exclusive one may overlap.
            same = a["open_id"] == b["open_id"] and not (a["exclusive"] and b["exclusive"])
            assert same, f"overlapping exclusive ranges: {a} {b}"
    opens = list(doc["opens"].items())
    for i, (oid, o) in enumerate(opens):
        ref.handles = {k: RefHandle(v["access"], v["share"]) for k, v in opens[:i]}
        assert ref.share_ok(o["access"], o["share"]), f"share modes violated by {oid}"


class Harness:
    def __init__(self, buses: list[LockBus], silent: int | None) -> None:
        self.clients = [
            Client(bus, f"N{i}", policy="ignore" if i == silent else "ack")
            for i, bus in enumerate(buses)
        ]
        self.buses = buses
        self.open: set[str] = set()
        # Open, but kept out of the shared record (rules.needs_record) until
        # a lock or unlock on the handle puts it there.
        self.unrecorded: set[str] = set()
        # Opens in flight: a client cannot use a handle before its CREATE
        # returned, so an operation on one waits for it.
        self.opening: dict[str, asyncio.Future[None]] = {}
        self.waiters: list[asyncio.Task[int]] = []

    def oid(self, node: int, handle: int) -> str:
        return self.clients[node].oid(str(handle))

    async def handle(self, node: int, handle: int) -> str | None:
        """The handle's open id once no open of it is in flight; None if not open."""
        oid = self.oid(node, handle)
        pending = self.opening.get(oid)
        if pending is not None:
            await asyncio.shield(pending)
        return oid if oid in self.open else None

    def recorded(self) -> set[str]:
        return self.open - self.unrecorded

    async def run_op(self, op: object, ref: Reference | None) -> None:
        if isinstance(op, Open):
            await self._open(op, ref)
        elif isinstance(op, Close):
            oid = await self.handle(op.node, op.handle)
            if oid is not None:
                self.open.discard(oid)
                self.unrecorded.discard(oid)
                await self.buses[op.node].close(F, oid)
        elif isinstance(op, Lock):
            await self._lock(op, ref)
        elif isinstance(op, Unlock):
            oid = await self.handle(op.node, op.handle)
            if oid is not None:
                self.unrecorded.discard(oid)
                rng = [LockRange(op.offset, op.length, True)]
                status = await self.buses[op.node].unlock(F, oid, rng)
                if ref is not None:
                    mine = [x for x in ref.locks if x[:3] == (oid, op.offset, op.length)]
                    assert (status == STATUS_SUCCESS) == bool(mine), (op, hex(status))

    async def _open(self, op: Open, ref: Reference | None) -> None:
        c = self.clients[op.node]
        oid = c.oid(str(op.handle))
        if oid in self.open:
            return
        self.open.add(oid)  # claimed now: a concurrent step must not reuse the handle
        done = self.opening[oid] = asyncio.get_running_loop().create_future()
        try:
            bits = _bits(op.caching)
            lease = c.lease(op.node * 2 + op.handle, bits) if op.caching[:1] == "R" else None
            oplock = OPLOCK_OF.get(op.caching, OPLOCK_NONE)
            got = await c.open(
                str(op.handle), F, access=op.access, share=op.share, oplock=oplock, lease=lease
            )
            if ref is not None:
                assert (got.status == STATUS_SUCCESS) == ref.share_ok(op.access, op.share), op
            if got.status != STATUS_SUCCESS:
                self.open.discard(oid)
            elif not rules.needs_record(
                OpenRequest(oid, c.node, F, op.access, op.share, oplock=oplock, lease=lease)
            ):
                self.unrecorded.add(oid)
        finally:
            del self.opening[oid]
            done.set_result(None)

    async def _lock(self, op: Lock, ref: Reference | None) -> None:
        oid = await self.handle(op.node, op.handle)
        if oid is None:
            return
        self.unrecorded.discard(oid)
        rng = [LockRange(op.offset, op.length, op.exclusive)]
        bus = self.buses[op.node]
        if op.wait:
            task = asyncio.create_task(bus.lock(F, oid, rng, wait=True))
            self.waiters.append(task)
            await asyncio.sleep(0.01)
            return
        status = await bus.lock(F, oid, rng, wait=False)
        if ref is not None:
            ok = ref.lock_ok(oid, op.offset, op.length, op.exclusive)
            assert status == (STATUS_SUCCESS if ok else STATUS_LOCK_NOT_GRANTED), (op, hex(status))


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batches=BATCHES, silent=SILENT)
def test_nodes_on_one_redis_match_the_reference(
    batches: list[list[object]], silent: int | None
) -> None:
    async def body() -> None:
        url = isolated(shared_url("redis"))
        buses = [make_test_bus("redis", BREAK_TIMEOUT, url=url) for _ in range(NODES)]
        for bus in buses:
            await bus.start()
        try:
            await check(buses)
        finally:
            # Also when failing: hypothesis replays the example in a new loop.
            await asyncio.gather(*(bus.stop() for bus in buses), return_exceptions=True)

    async def check(buses: list[LockBus]) -> None:
        h = Harness(buses, silent)
        for batch in batches:
            ref = reference_of(await buses[0].snapshot()) if len(batch) == 1 else None
            await asyncio.wait_for(
                asyncio.gather(*(h.run_op(op, ref) for op in batch)), BREAK_TIMEOUT * 10
            )
            await settle()
            snap = await buses[0].snapshot()
            check_invariants(snap)
            # No lost update: exactly the opens that succeeded are registered
            # (those that need to be).
            assert set(snap["files"].get(F, {"opens": {}})["opens"]) == h.recorded()
        # Every waiter is granted or refused once the handles are gone.
        for oid in sorted(h.open):
            node = int(oid.split("/")[0][1:])
            await buses[node].close(F, oid)
        if h.waiters:
            done, pending = await asyncio.wait(h.waiters, timeout=3)
            assert not pending, f"{len(pending)} lock waiters never decided"
            for task in done:
                assert isinstance(task.result(), int)  # granted, or refused once closed
        await settle()
        snap = await buses[0].snapshot()
        assert F not in snap["files"], snap["files"].get(F)
        for c in h.clients:
            assert all(s == STATUS_SUCCESS for s in c.acks), c.acks

    run(body(), 60)
