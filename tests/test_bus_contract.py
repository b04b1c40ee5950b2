"""The LockBus contract, run against every backend.

Several simulated nodes share one bus; their clients answer breaks the way
real ones do (ack, never answer, or close). Backends come from
``conftest_bus.BACKENDS``, so a Redis backend runs this same suite.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oplock_bus import make_bus, rules
from oplock_bus.api import (
    LEASE_HANDLE,
    LEASE_READ,
    LEASE_WRITE,
    OPLOCK_BATCH,
    OPLOCK_EXCLUSIVE,
    OPLOCK_II,
    OPLOCK_LEASE,
    OPLOCK_NONE,
    STATUS_INVALID_PARAMETER,
    STATUS_LOCK_NOT_GRANTED,
    STATUS_OBJECT_NAME_NOT_FOUND,
    STATUS_RANGE_NOT_LOCKED,
    STATUS_SHARING_VIOLATION,
    STATUS_SUCCESS,
    Disposition,
    LockBus,
    LockRange,
    OpenRequest,
    Operation,
)
from oplock_bus.coordinator import Coordinator
from oplock_bus.memory import InProcessBus, MemoryStore
from oplock_bus.model import FileState
from oplock_bus.redis_bus import RedisBus
from oplock_bus.store import Doc
from tests.conftest_bus import (
    BACKENDS,
    BREAK_TIMEOUT,
    DELETE,
    FILE_READ_ATTRIBUTES,
    FILE_READ_DATA,
    FILE_WRITE_DATA,
    RW,
    SHARE_ALL,
    SHARE_NONE,
    SHARE_RW,
    Client,
    run,
    settle,
    started,
)

R, H, W = LEASE_READ, LEASE_HANDLE, LEASE_WRITE
F = "vol:1"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


async def _quiet(bus: LockBus) -> dict[str, Any]:
    await settle()
    return await bus.snapshot()


# -- factory ----------------------------------------------------------------------------


def test_make_bus_schemes() -> None:
    assert isinstance(make_bus(None), InProcessBus)
    assert isinstance(make_bus("memory://"), InProcessBus)
    with pytest.raises(ValueError, match="unknown bus URL scheme"):
        make_bus("carrier-pigeon://coop")
    # Nothing connects before start(); a malformed Redis URL fails at once.
    assert isinstance(make_bus("redis://localhost:6379/0"), RedisBus)
    assert isinstance(make_bus("rediss://:pw@localhost/2?ssl_cert_reqs=none"), RedisBus)
    assert isinstance(make_bus("redis+sentinel://h1:26379,h2:26379/mymaster"), RedisBus)
    assert isinstance(make_bus("redis+cluster://h1:7000,h2:7001"), RedisBus)
    with pytest.raises(ValueError, match="service_name"):
        make_bus("redis+sentinel://h1:26379")
    with pytest.raises(ValueError, match="unknown bus URL option"):
        make_bus("redis://localhost/0?colour=blue")


# -- oplocks across nodes -----------------------------------------------------------------


def test_batch_break_to_level2_across_nodes(backend: str) -> None:
    async def body() -> None:
        bus = await started(backend)
        a, b = Client(bus, "A"), Client(bus, "B")
        assert (await a.open("h", oplock=OPLOCK_BATCH)).oplock == OPLOCK_BATCH
        got = await b.open("h", oplock=OPLOCK_BATCH)
        assert (got.status, got.oplock) == (STATUS_SUCCESS, OPLOCK_II)
        # The break reached node A before B's open completed, and A acked it
        # (the ack's commit wakes B and answers A at once: either may come first).
        assert [(n.open_id, n.new_level, n.ack_required) for n in a.notices] == [
            ("A/h", OPLOCK_II, True)
        ]
        await settle()
        assert a.acks == [STATUS_SUCCESS] and b.notices == []
        await bus.stop()

    run(body())


def test_unanswered_break_times_out(backend: str) -> None:
    async def body() -> None:
        bus = await started(backend)
        a, b = Client(bus, "A", policy="ignore"), Client(bus, "B")
        await a.open("h", oplock=OPLOCK_BATCH)
        t0 = time.monotonic()
        got = await b.open("h", oplock=OPLOCK_BATCH)
        waited = time.monotonic() - t0
        assert got.status == STATUS_SUCCESS and len(a.notices) == 1
        assert BREAK_TIMEOUT * 0.9 <= waited < BREAK_TIMEOUT * 8
        # MS-SMB2 3.3.6.1: the silent holder is forced to none, so B gets II.
        assert got.oplock == OPLOCK_II
        snap = await bus.snapshot()
        assert snap["files"][F]["opens"]["A/h"]["oplock"] == OPLOCK_NONE
        await bus.stop()

    run(body())


def test_holder_closing_on_break_lets_the_opener_in(backend: str) -> None:
    async def body() -> None:
        # smbtorture smb2.oplock.batch7
        bus = await started(backend)
        a, b = Client(bus, "A", policy="close"), Client(bus, "B")
        await a.open("h", share=SHARE_NONE, oplock=OPLOCK_BATCH)
        got = await b.open("h", share=SHARE_NONE, oplock=OPLOCK_BATCH)
        assert (got.status, got.oplock) == (STATUS_SUCCESS, OPLOCK_BATCH)
        await bus.stop()

    run(body())


def test_sharing_violation(backend: str) -> None:
    async def body() -> None:
        bus = await started(backend)
        a, b = Client(bus, "A"), Client(bus, "B")
        await a.open("h", share=SHARE_NONE, oplock=OPLOCK_EXCLUSIVE)
        got = await b.open("h", share=SHARE_ALL)
        assert got.status == STATUS_SHARING_VIOLATION
        assert a.notices == []  # smbtorture exclusive1: no break
        # A stat open takes no part in share modes.
        stat = await b.open("s", access=FILE_READ_ATTRIBUTES, share=SHARE_NONE)
        assert stat.status == STATUS_SUCCESS
        await bus.stop()

    run(body())


def test_batch_is_broken_before_a_sharing_violation(backend: str) -> None:
    async def body() -> None:
        # smbtorture batch5: the holder gets a chance to close its cached handle.
        bus = await started(backend)
        a, b = Client(bus, "A"), Client(bus, "B")
        await a.open("h", share=SHARE_NONE, oplock=OPLOCK_BATCH)
        got = await b.open("h", share=SHARE_NONE)
        assert got.status == STATUS_SHARING_VIOLATION
        assert [n.new_level for n in a.notices] == [OPLOCK_II]
        await bus.stop()

    run(body())


def test_write_breaks_level2_without_waiting(backend: str) -> None:
    async def body() -> None:
        # A long timeout, so that "did not wait for it" holds on a loaded machine.
        bus = await started(backend, break_timeout=3.0)
        a, b = Client(bus, "A", policy="ignore"), Client(bus, "B")
        await a.open("h", oplock=OPLOCK_II)
        assert (await b.open("h", oplock=OPLOCK_II)).oplock == OPLOCK_II
        t0 = time.monotonic()
        await bus.break_for(F, b.oid("h"), Operation.WRITE)
        assert time.monotonic() - t0 < 1.5  # nothing to wait for
        await settle()
        assert [(n.new_level, n.ack_required) for n in a.notices] == [(OPLOCK_NONE, False)]
        assert [(n.new_level, n.ack_required) for n in b.notices] == [(OPLOCK_NONE, False)]
        await bus.stop()

    run(body())


def test_write_waits_for_write_caching_to_be_flushed(backend: str) -> None:
    async def body() -> None:
        bus = await started(backend)
        a, b = Client(bus, "A"), Client(bus, "B")
        await a.open("h", share=SHARE_ALL, lease=a.lease(1, R | W | H))
        # An attribute-only open breaks nothing...
        await b.open("h", access=FILE_READ_ATTRIBUTES, share=SHARE_ALL)
        assert a.notices == []
        # ...but a write through it must wait until A flushed and acked.
        await bus.break_for(F, b.oid("h"), Operation.WRITE)
        assert [(n.current_state, n.new_level) for n in a.notices] == [(R | W | H, 0)]
        assert a.acks == [STATUS_SUCCESS]
        await bus.stop()

    run(body())


# -- leases ------------------------------------------------------------------------------------


def test_lease_break_to_rh_with_ack_and_epoch(backend: str) -> None:
    async def body() -> None:
        bus = await started(backend)
        a, b = Client(bus, "A"), Client(bus, "B")
        first = await a.open("h", lease=a.lease(1, R | W | H, version=2, epoch=5))
        assert (first.oplock, first.lease_state, first.lease_epoch) == (OPLOCK_LEASE, R | W | H, 6)
        second = await b.open("h", lease=b.lease(2, R | W | H, version=2))
        assert (second.oplock, second.lease_state) == (OPLOCK_LEASE, R | H)
        (n,) = a.notices
        assert n.lease == a.lease(1, 0).key and n.node_id == "A"
        assert (n.current_state, n.new_level, n.ack_required, n.epoch) == (
            R | W | H,
            R | H,
            True,
            7,
        )
        assert a.acks == [STATUS_SUCCESS]
        again = await a.open("h2", lease=a.lease(1, R | H, version=2))
        assert (again.lease_state, again.lease_epoch) == (R | H, 7)
        await bus.stop()

    run(body())


def test_one_lease_across_nodes(backend: str) -> None:
    async def body() -> None:
        # A lease belongs to (ClientGUID, LeaseKey) cluster-wide: the same client
        # reaching two nodes shares one lease, which never breaks itself.
        bus = await started(backend)
        guid = b"same-client-guid"
        a1 = Client(bus, "N1", client_guid=guid)
        a2 = Client(bus, "N2", client_guid=guid)
        other = Client(bus, "N3")
        await a1.open("h", lease=a1.lease(7, R | W | H))
        got = await a2.open("h", lease=a2.lease(7, R | W | H))
        assert got.lease_state == R | W | H and a1.notices == a2.notices == []
        assert await bus.lease_file(a1.lease(7, 0).key) == F
        # A different client breaks it; the notice goes to one node holding it.
        assert (await other.open("h", lease=other.lease(7, R | H))).lease_state == R | H
        assert len(a1.notices) + len(a2.notices) == 1
        await bus.close(F, a1.oid("h"))
        await bus.close(F, a2.oid("h"))
        assert await bus.lease_file(a1.lease(7, 0).key) is None
        await bus.stop()

    run(body())


def test_lease_key_bound_to_one_file(backend: str) -> None:
    async def body() -> None:
        bus = await started(backend)
        a = Client(bus, "A")
        assert (await a.open("h", "vol:1", lease=a.lease(1, R))).status == STATUS_SUCCESS
        # MS-SMB2 3.3.5.9.8: the same lease key on another file is refused.
        other_file = await a.open("g", "vol:2", lease=a.lease(1, R))
        assert other_file.status == STATUS_INVALID_PARAMETER
        await bus.close("vol:1", a.oid("h"))
        assert (await a.open("g", "vol:2", lease=a.lease(1, R))).status == STATUS_SUCCESS
        await bus.stop()

    run(body())


def test_lease_ack_for_unknown_lease(backend: str) -> None:
    async def body() -> None:
        bus = await started(backend)
        a = Client(bus, "A")
        result = await bus.ack_lease(a.lease(9, 0).key, 0)
        assert result.status == STATUS_OBJECT_NAME_NOT_FOUND
        await bus.stop()

    run(body())


def test_unanswered_lease_break_times_out(backend: str) -> None:
    async def body() -> None:
        bus = await started(backend)
        a, b = Client(bus, "A", policy="ignore"), Client(bus, "B")
        await a.open("h", lease=a.lease(1, R | W | H))
        got = await b.open("h", lease=b.lease(2, R | W | H))
        # Forced to none after the timeout (MS-SMB2 3.3.6.1); B gets what is left.
        assert got.lease_state == R | H and len(a.notices) == 1
        snap = await bus.snapshot()
        leases = snap["files"][F]["leases"]
        assert [x["state"] for x in leases.values()] == [0, R | H]
        await bus.stop()

    run(body())


# -- byte-range locks ---------------------------------------------------------------------------


async def _two_openers(bus: LockBus, n: int = 2) -> list[Client]:
    clients = [Client(bus, f"N{i}") for i in range(n)]
    for c in clients:
        assert (await c.open("h", share=SHARE_ALL)).status == STATUS_SUCCESS
    return clients


def test_blocking_lock_granted_on_unlock(backend: str) -> None:
    async def body() -> None:
        bus = await started(backend)
        a, b = await _two_openers(bus)
        assert await bus.lock(F, a.oid("h"), [LockRange(0, 10, True)], wait=False) == 0
        failed = await bus.lock(F, b.oid("h"), [LockRange(5, 1, True)], wait=False)
        assert failed == STATUS_LOCK_NOT_GRANTED
        waiter = asyncio.create_task(bus.lock(F, b.oid("h"), [LockRange(5, 1, True)], wait=True))
        await settle()
        assert not waiter.done()
        assert await bus.unlock(F, a.oid("h"), [LockRange(0, 10, True)]) == STATUS_SUCCESS
        assert await asyncio.wait_for(waiter, 1) == STATUS_SUCCESS
        assert not await bus.check_io(F, a.oid("h"), 5, 1, False)
        await bus.stop()

    run(body())


def test_three_waiters_granted_in_fifo_order(backend: str) -> None:
    async def body() -> None:
        bus = await started(backend)
        clients = await _two_openers(bus, 4)
        holder, waiters = clients[0], clients[1:]
        rng = [LockRange(100, 50, True)]
        assert await bus.lock(F, holder.oid("h"), rng, wait=False) == 0
        order: list[str] = []

        async def wait_for(c: Client) -> None:
            assert await bus.lock(F, c.oid("h"), rng, wait=True) == STATUS_SUCCESS
            order.append(c.node)

        tasks = []
        for c in waiters:
            tasks.append(asyncio.create_task(wait_for(c)))
            await settle()  # queue them in a known order
        current = holder
        for expected in waiters:
            await bus.unlock(F, current.oid("h"), rng)
            want = [c.node for c in waiters[: waiters.index(expected) + 1]]
            # The winner collects its grant with one more round trip, which a
            # loaded machine may delay past settle(): wait for it, then check
            # that nobody else won meanwhile.
            for _ in range(200):
                if len(order) >= len(want):
                    break
                await asyncio.sleep(0.01)
            await settle()
            # Exactly one waiter wins each release: the oldest.
            assert order == want
            current = expected
        await asyncio.gather(*tasks)
        await bus.stop()

    run(body())


def test_cancel_removes_a_waiter(backend: str) -> None:
    async def body() -> None:
        bus = await started(backend)
        a, b, c = await _two_openers(bus, 3)
        rng = [LockRange(0, 1, True)]
        await bus.lock(F, a.oid("h"), rng, wait=False)
        t_b = asyncio.create_task(bus.lock(F, b.oid("h"), rng, wait=True))
        await settle()
        t_c = asyncio.create_task(bus.lock(F, c.oid("h"), rng, wait=True))
        await settle()
        t_b.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t_b
        snap = await _quiet(bus)
        waiting = [w["open_id"] for w in snap["files"][F]["waiters"]]
        assert waiting == [c.oid("h")]
        await bus.unlock(F, a.oid("h"), rng)
        assert await asyncio.wait_for(t_c, 1) == STATUS_SUCCESS
        await bus.stop()

    run(body())


def test_close_releases_locks_and_fails_own_waiters(backend: str) -> None:
    async def body() -> None:
        bus = await started(backend)
        a, b, c = await _two_openers(bus, 3)
        rng = [LockRange(0, 8, True)]
        await bus.lock(F, a.oid("h"), rng, wait=False)
        t_b = asyncio.create_task(bus.lock(F, b.oid("h"), rng, wait=True))
        await settle()
        t_c = asyncio.create_task(bus.lock(F, c.oid("h"), rng, wait=True))
        await settle()
        # A closed open's pending lock ends with RANGE_NOT_LOCKED (lock.cancel-tdis).
        await bus.close(F, b.oid("h"))
        assert await asyncio.wait_for(t_b, 1) == STATUS_RANGE_NOT_LOCKED
        # Closing the holder releases its locks and wakes the next waiter.
        await bus.close(F, a.oid("h"))
        assert await asyncio.wait_for(t_c, 1) == STATUS_SUCCESS
        await bus.close(F, c.oid("h"))
        assert (await _quiet(bus))["files"] == {}
        await bus.stop()

    run(body())


def test_check_io(backend: str) -> None:
    async def body() -> None:
        bus = await started(backend)
        a, b = await _two_openers(bus)
        await bus.lock(F, a.oid("h"), [LockRange(0, 10, False)], wait=False)
        await bus.lock(F, a.oid("h"), [LockRange(20, 10, True)], wait=False)
        assert await bus.check_io(F, b.oid("h"), 0, 5, False)
        assert not await bus.check_io(F, b.oid("h"), 0, 5, True)
        assert not await bus.check_io(F, a.oid("h"), 0, 5, True)  # own shared lock
        assert await bus.check_io(F, a.oid("h"), 20, 5, True)  # own exclusive lock
        assert not await bus.check_io(F, b.oid("h"), 25, 10, False)
        assert await bus.check_io(F, b.oid("h"), 30, 10, True)
        await bus.stop()

    run(body())


def test_cancelled_open_leaves_no_trace(backend: str) -> None:
    async def body() -> None:
        bus = await started(backend, break_timeout=5.0)
        a, b = Client(bus, "A", policy="ignore"), Client(bus, "B")
        await a.open("h", lease=a.lease(1, R | W | H))
        waiting = asyncio.create_task(b.open("h", lease=b.lease(2, R)))
        await settle()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        snap = await _eventually(bus, lambda s: not s["files"][F]["pending"])
        assert list(snap["files"][F]["opens"]) == ["A/h"]
        assert snap["files"][F]["pending"] == {}  # given up: nobody to grant it to
        assert len(snap["leases"]) == 1
        await bus.stop()

    run(body())


async def _eventually(bus: LockBus, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The snapshot once ``done`` holds (clean-up runs in the background), or after 3 s."""
    deadline = time.monotonic() + 3.0
    while True:
        snap = await _quiet(bus)
        if done(snap) or time.monotonic() > deadline:
            return snap
        await asyncio.sleep(0.01)


def test_open_cancelled_after_its_grant_is_closed(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway cancels a CREATE on CANCEL or disconnect; a grant already
    committed must not outlive it, or nobody could ever close that open."""

    async def body() -> None:
        bus = await started(backend)
        assert isinstance(bus, Coordinator)
        a = Client(bus, "A")
        granted = asyncio.Event()
        release = bus.leases.release

        async def late_release(lid: str, file: str) -> None:
            granted.set()  # the grant is committed; only lease bookkeeping is left
            await asyncio.sleep(0.05)
            await release(lid, file)

        monkeypatch.setattr(bus.leases, "release", late_release)
        opening = asyncio.create_task(a.open("h", lease=a.lease(1, R | W | H)))
        await granted.wait()
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        snap = await _eventually(bus, lambda s: F not in s["files"] and not s["leases"])
        assert F not in snap["files"] and snap["leases"] == {}, snap
        await bus.stop()

    run(body())


def test_open_cancelled_anywhere_is_granted_or_gone(backend: str) -> None:
    async def body() -> None:
        bus = await started(backend)
        a, b = Client(bus, "A"), Client(bus, "B")
        for steps in range(0, 90, 3):
            h = f"h{steps}"
            assert (await a.open(h, oplock=OPLOCK_BATCH)).status == STATUS_SUCCESS
            # Breaking A's batch oplock makes the open take every path: lease
            # binding, a commit that waits, break delivery, the grant, release.
            opening = asyncio.create_task(b.open(h, lease=b.lease(steps + 1, R)))
            for _ in range(steps):
                await asyncio.sleep(0)
            opening.cancel()
            try:
                got = await opening
            except asyncio.CancelledError:
                pass
            else:
                assert got.status == STATUS_SUCCESS
                await bus.close(F, b.oid(h))
            await bus.close(F, a.oid(h))
            snap = await _eventually(bus, lambda s: F not in s["files"] and not s["leases"])
            assert F not in snap["files"] and snap["leases"] == {}, (steps, snap)
        await bus.stop()

    run(body(), 60)


def test_delete_pending(backend: str) -> None:
    async def body() -> None:
        bus = await started(backend)
        a, b = Client(bus, "A"), Client(bus, "B")
        await a.open("h", access=RW | DELETE, share=SHARE_ALL)
        await bus.set_delete_pending(F, True)
        assert (await b.open("h", share=SHARE_ALL)).status == 0xC0000056
        await bus.set_delete_pending(F, False)
        assert (await b.open("h", share=SHARE_ALL)).status == STATUS_SUCCESS
        await bus.stop()

    run(body())


def test_attribute_only_opens_stay_out_of_the_record(backend: str) -> None:
    """A stat open conflicts with nothing, so no node's record holds it; it
    still sees delete-pending, and a lock on it puts it in the record."""

    async def body() -> None:
        bus = await started(backend)
        a, b = Client(bus, "A"), Client(bus, "B")
        stat = FILE_READ_ATTRIBUTES
        # Truncating is no stat open: it breaks a batch holder to none
        # (smb2.oplock.batch13).
        await b.open("b", share=SHARE_ALL, oplock=OPLOCK_BATCH)
        over = await a.open("o", access=stat, share=SHARE_ALL, disposition=Disposition.OVERWRITE)
        assert over.status == STATUS_SUCCESS
        assert [(n.open_id, n.new_level) for n in b.notices] == [("B/b", OPLOCK_NONE)]
        assert set((await _quiet(bus))["files"][F]["opens"]) == {"A/o", "B/b"}
        await bus.close(F, a.oid("o"))
        await bus.close(F, b.oid("b"))

        assert (await a.open("s", access=stat, share=SHARE_NONE)).status == STATUS_SUCCESS
        assert (await b.open("rw", share=SHARE_ALL)).status == STATUS_SUCCESS
        assert set((await _quiet(bus))["files"][F]["opens"]) == {"B/rw"}
        # An oplock is only for an open that created the file: asked for here, none.
        got = await a.open("s2", access=stat, share=SHARE_NONE, oplock=OPLOCK_BATCH)
        assert (got.status, got.oplock) == (STATUS_SUCCESS, OPLOCK_NONE)
        await bus.close(F, a.oid("s2"))
        assert (await b.open("del", access=RW | DELETE, share=SHARE_ALL)).status == 0
        await bus.set_delete_pending(F, True)
        assert (await a.open("s3", access=stat, share=SHARE_ALL)).status == 0xC0000056
        await bus.set_delete_pending(F, False)
        await bus.close(F, b.oid("del"))
        assert await bus.lock(F, a.oid("s"), [LockRange(0, 1, True)], wait=False) == 0
        assert set((await _quiet(bus))["files"][F]["opens"]) == {"A/s", "B/rw"}
        await bus.close(F, a.oid("s"))
        await bus.close(F, b.oid("rw"))
        assert (await _quiet(bus))["files"] == {}
        await bus.stop()

    run(body())


# -- a reference model under random workloads (hypothesis) ---------------------------------------

ACCESS = [FILE_READ_DATA, FILE_WRITE_DATA, RW, FILE_READ_ATTRIBUTES, RW | DELETE]
SHARE = [SHARE_NONE, 1, SHARE_RW, SHARE_ALL]
CACHING = ["", "s", "x", "b", "R", "RH", "RW", "RWH"]
OPLOCK_OF = {"s": OPLOCK_II, "x": OPLOCK_EXCLUSIVE, "b": OPLOCK_BATCH}
DATA = FILE_READ_DATA | FILE_WRITE_DATA | DELETE


@dataclass
class RefHandle:
    access: int
    share: int


@dataclass
class Reference:
    """What a correct bus must answer, computed the naive way."""

    handles: dict[str, RefHandle] = field(default_factory=dict)
    locks: list[tuple[str, int, int, bool]] = field(default_factory=list)

    @staticmethod
    def _points(offset: int, length: int) -> set[float]:
        # Bytes at even points, the gaps between bytes at odd points: a
        # zero-length range at N is the gap before byte N (MS-FSA 2.1.4.10).
        if length == 0:
            return set() if offset == 0 else {2 * offset - 1}
        return set(range(2 * offset, 2 * (offset + length - 1) + 1))

    def overlap(self, a: tuple[int, int], b: tuple[int, int]) -> bool:
        if a[1] == 0 and b[1] == 0:
            return False
        return bool(self._points(*a) & self._points(*b))

    def share_ok(self, access: int, share: int) -> bool:
        def needs(acc: int) -> int:
            bits = 0
            bits |= 1 if acc & FILE_READ_DATA else 0
            bits |= 2 if acc & FILE_WRITE_DATA else 0
            bits |= 4 if acc & DELETE else 0
            return bits

        if not access & DATA:
            return True
        for h in self.handles.values():
            if not h.access & DATA:
                continue
            if needs(access) & ~h.share or needs(h.access) & ~share:
                return False
        return True

    def lock_ok(self, hid: str, offset: int, length: int, exclusive: bool) -> bool:
        for owner, o, n, excl in self.locks:
            if not (excl or exclusive) or not self.overlap((o, n), (offset, length)):
                continue
            if owner == hid and excl and not exclusive:
                continue  # a shared lock may stack on the owner's exclusive one
            return False
        return True


def _check_caching(snapshot: dict[str, Any]) -> None:
    """No two conflicting caching grants: whoever caches writes caches alone."""
    files = snapshot["files"]
    assert isinstance(files, dict)
    for doc in files.values():
        holders = [o["oplock"] for o in doc["opens"].values() if o["lease_id"] is None]
        caching = [{1: R, 8: R | W, 9: R | W | H}.get(x, 0) for x in holders]
        caching += [lease["state"] for lease in doc["leases"].values()]
        caching = [c for c in caching if c]
        assert all(c in (R, R | H, R | W, R | W | H) for c in caching)
        if any(c & W for c in caching):
            assert len(caching) == 1, caching


@dataclass(frozen=True)
class OpenStep:
    client: int
    handle: int
    access: int
    share: int
    caching: str


@dataclass(frozen=True)
class CloseStep:
    client: int
    handle: int


@dataclass(frozen=True)
class LockStep:
    client: int
    handle: int
    offset: int
    length: int
    exclusive: bool
    unlock: bool


CLIENT, HANDLE = st.integers(0, 2), st.integers(0, 1)
LOCK_STEP = st.builds(
    LockStep, CLIENT, HANDLE, st.integers(0, 5), st.integers(0, 3), st.booleans(), st.booleans()
)
STEPS = st.lists(
    st.one_of(
        st.builds(
            OpenStep,
            CLIENT,
            HANDLE,
            st.sampled_from(ACCESS),
            st.sampled_from(SHARE),
            st.sampled_from(CACHING),
        ),
        st.builds(CloseStep, CLIENT, HANDLE),
        LOCK_STEP,
        LOCK_STEP,  # twice: locks need more steps than opens to get interesting
    ),
    max_size=30,
)


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=STEPS)
def test_bus_matches_reference_model(backend: str, steps: list[object]) -> None:
    async def body() -> None:
        bus = await started(backend)
        clients = [Client(bus, f"N{i}") for i in range(3)]
        ref = Reference()
        for step in steps:
            if isinstance(step, OpenStep):
                c = clients[step.client]
                hid = c.oid(str(step.handle))
                if hid in ref.handles:
                    continue
                lease = c.lease(1, _bits(step.caching)) if step.caching[:1] == "R" else None
                got = await c.open(
                    str(step.handle),
                    access=step.access,
                    share=step.share,
                    oplock=OPLOCK_OF.get(step.caching, OPLOCK_NONE),
                    lease=lease,
                )
                expect_ok = ref.share_ok(step.access, step.share)
                assert (got.status == STATUS_SUCCESS) == expect_ok, (step, hex(got.status))
                if expect_ok:
                    ref.handles[hid] = RefHandle(step.access, step.share)
            elif isinstance(step, CloseStep):
                hid = clients[step.client].oid(str(step.handle))
                if hid in ref.handles:
                    await bus.close(F, hid)
                    del ref.handles[hid]
                    ref.locks = [x for x in ref.locks if x[0] != hid]
            elif isinstance(step, LockStep):
                hid = clients[step.client].oid(str(step.handle))
                if hid not in ref.handles:
                    continue
                rng = [LockRange(step.offset, step.length, step.exclusive)]
                if step.unlock:
                    status = await bus.unlock(F, hid, rng)
                    mine = [x for x in ref.locks if x[:3] == (hid, step.offset, step.length)]
                    assert (status == STATUS_SUCCESS) == bool(mine)
                    if mine:
                        ref.locks.remove(mine[0])
                else:
                    status = await bus.lock(F, hid, rng, wait=False)
                    ok = ref.lock_ok(hid, step.offset, step.length, step.exclusive)
                    assert status == (STATUS_SUCCESS if ok else STATUS_LOCK_NOT_GRANTED), step
                    if ok:
                        ref.locks.append((hid, step.offset, step.length, step.exclusive))
            _check_caching(await _quiet(bus))
        for c in clients:
            assert all(s == STATUS_SUCCESS for s in c.acks)
        await bus.stop()

    run(body())


def _bits(state: str) -> int:
    return (R if "R" in state else 0) | (H if "H" in state else 0) | (W if "W" in state else 0)


def test_dead_node_releases_everything(backend: str) -> None:
    async def body() -> None:
        bus = await started(backend, break_timeout=5.0)
        assert isinstance(bus, Coordinator)
        a, b = Client(bus, "A", policy="ignore"), Client(bus, "B")
        await a.open("h", share=SHARE_ALL, oplock=OPLOCK_BATCH)
        waiting_open = asyncio.create_task(b.open("h", share=SHARE_ALL, oplock=OPLOCK_BATCH))
        await settle()
        assert not waiting_open.done()  # A never answers: B would wait 5 s
        assert await bus.drop_node("A") == 1
        got = await asyncio.wait_for(waiting_open, 1)
        assert (got.status, got.oplock) == (STATUS_SUCCESS, OPLOCK_BATCH)
        await bus.stop()

    run(body())


def test_the_ack_grants_the_waiting_open(backend: str) -> None:
    """A waiting open is in the record, so the transaction of the holder's
    ack grants it: the opener, once woken, only has to read its result."""

    async def body() -> None:
        bus = await started(backend, break_timeout=5.0)
        a, b = Client(bus, "A", policy="ignore"), Client(bus, "B")
        await a.open("h", share=SHARE_ALL, oplock=OPLOCK_BATCH)
        waiting = asyncio.create_task(b.open("h", share=SHARE_ALL, oplock=OPLOCK_BATCH))
        snap = await _eventually(bus, lambda s: "B/h" in s["files"][F]["pending"])
        assert list(snap["files"][F]["pending"]) == ["B/h"] and not waiting.done()
        assert (await bus.ack_oplock(F, a.oid("h"), OPLOCK_II)).status == STATUS_SUCCESS
        # Granted by the ack's own commit, before the opener ran again.
        doc = (await bus.snapshot())["files"][F]
        assert doc["pending"] == {} and "B/h" in doc["opens"]
        got = await asyncio.wait_for(waiting, 2)
        assert (got.status, got.oplock) == (STATUS_SUCCESS, OPLOCK_II)
        await bus.stop()

    run(body())


def test_a_dead_nodes_waiting_open_goes(backend: str) -> None:
    async def body() -> None:
        bus = await started(backend, break_timeout=5.0)
        assert isinstance(bus, Coordinator)
        a = Client(bus, "A", policy="ignore")
        await a.open("h", share=SHARE_ALL, oplock=OPLOCK_BATCH)
        # Node B wrote its waiting open, then died (no process left to withdraw it).
        req = OpenRequest("B/h", "B", F, RW, SHARE_ALL)

        def wait_in_record(st: FileState | None) -> tuple[FileState | None, None]:
            out = rules.evaluate_waiting_open(
                st, req, now=time.time(), break_timeout=5.0, first_attempt=True
            )
            return out.state, None

        await bus._apply(F, wait_in_record)
        assert list((await _quiet(bus))["files"][F]["pending"]) == ["B/h"]
        # Were it left, the break's end would grant the file to nobody.
        assert await bus.drop_node("B") == 1
        assert (await _quiet(bus))["files"][F]["pending"] == {}
        await bus.stop()

    run(body())


class _SlowStore(MemoryStore):
    """Commits take a while, as over a network: cancellation can land mid-way."""

    slow = False
    commits_without_yielding = False

    async def compare_and_set(self, key: str, token: str | None, doc: Doc | None) -> bool:
        if self.slow and key.startswith("file:"):
            await asyncio.sleep(0.02)
        return await super().compare_and_set(key, token, doc)


def test_cancellation_during_a_commit_is_undone() -> None:
    async def body() -> None:
        store = _SlowStore()
        bus = Coordinator(store, break_timeout=BREAK_TIMEOUT)
        await bus.start()
        a, b = Client(bus, "A"), Client(bus, "B")
        assert (await a.open("h", share=SHARE_ALL)).status == STATUS_SUCCESS
        store.slow = True
        opening = asyncio.create_task(b.open("h", share=SHARE_ALL, lease=b.lease(1, R)))
        locking = asyncio.create_task(bus.lock(F, a.oid("h"), [LockRange(0, 1, True)], wait=True))
        await asyncio.sleep(0.01)  # both are inside their commit now
        opening.cancel()
        locking.cancel()
        for task in (opening, locking):
            with pytest.raises(asyncio.CancelledError):
                await task
        await asyncio.sleep(0.1)  # the commits land after the cancellation...
        await bus.stop()  # ...and their undo finishes
        snap = await bus.snapshot()
        doc = snap["files"][F]
        assert list(doc["opens"]) == ["A/h"] and doc["locks"] == [] and doc["leases"] == {}
        assert snap["leases"] == {}

    run(body())
