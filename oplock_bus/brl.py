"""Byte-range lock rules on a file's state (MS-FSA 2.1.5.8, MS-SMB2 3.3.5.14).

Pure functions: each takes a state and returns a new one plus the decision.
Blocking requests queue FIFO; a release grants queued requests in order,
and a request never overtakes an earlier one it conflicts with, so among
waiters contending for the same bytes exactly one wins per release.
"""

from __future__ import annotations

from dataclasses import dataclass

from .api import (
    STATUS_FILE_CLOSED,
    STATUS_INVALID_LOCK_RANGE,
    STATUS_LOCK_NOT_GRANTED,
    STATUS_RANGE_NOT_LOCKED,
    STATUS_SUCCESS,
    OpenId,
)
from .model import ByteRangeLock, FileState, LockWaiter, RangeSpec
from .ranges import io_conflicts, lock_conflicts, range_valid, spec_conflicts


@dataclass(frozen=True)
class LockOutcome:
    state: FileState | None
    status: int | None  # None: queued, wait for the waiter's channel
    finished_waiters: tuple[str, ...] = ()
    waiter_id: str = ""  # set when the request was queued


def _fits(locks: list[ByteRangeLock], open_id: OpenId, ranges: list[RangeSpec]) -> bool:
    # Elements of one request are taken in order, so later ones must also
    # fit with the earlier ones (Samba smbd_do_locks_try).
    trial = list(locks)
    for r in ranges:
        if any(lock_conflicts(held, open_id, r) for held in trial):
            return False
        trial.append(ByteRangeLock(open_id, r.offset, r.length, r.exclusive))
    return True


def _behind_queue(waiters: list[LockWaiter], open_id: OpenId, ranges: list[RangeSpec]) -> bool:
    return any(
        spec_conflicts(earlier, w.open_id, open_id, r)
        for w in waiters
        if w.status is None
        for earlier in w.ranges
        for r in ranges
    )


def _take(st: FileState, open_id: OpenId, ranges: list[RangeSpec]) -> None:
    st.locks.extend(ByteRangeLock(open_id, r.offset, r.length, r.exclusive) for r in ranges)


def grant_waiters(st: FileState) -> list[str]:
    """Grant queued requests, oldest first, that no lock or earlier waiter blocks."""
    finished: list[str] = []
    blocked: list[tuple[OpenId, RangeSpec]] = []
    for w in st.waiters:
        if w.status is not None:
            continue
        overtakes = any(
            spec_conflicts(spec, other, w.open_id, r) for other, spec in blocked for r in w.ranges
        )
        if not overtakes and _fits(st.locks, w.open_id, w.ranges):
            _take(st, w.open_id, w.ranges)
            w.status = STATUS_SUCCESS
            finished.append(w.waiter_id)
        else:
            blocked.extend((w.open_id, r) for r in w.ranges)
    return finished


def lock(
    state: FileState | None,
    open_id: OpenId,
    ranges: list[RangeSpec],
    *,
    wait: bool,
    waiter_id: str,
) -> LockOutcome:
    """All ranges or none. SMB2 always answers a refused lock with
    STATUS_LOCK_NOT_GRANTED (smbtorture smb2.lock.errorcode); the SMB1 rule
    (0xEF000000 / repeated failure gives FILE_LOCK_CONFLICT) does not apply."""
    if state is None or open_id not in state.opens:
        return LockOutcome(state, STATUS_FILE_CLOSED)
    if not ranges or any(not range_valid(r.offset, r.length) for r in ranges):
        return LockOutcome(state, STATUS_INVALID_LOCK_RANGE)
    st = state.clone()
    if wait and _behind_queue(st.waiters, open_id, ranges):
        st.waiters.append(LockWaiter(waiter_id, open_id, list(ranges)))
        return LockOutcome(st, None, waiter_id=waiter_id)
    if _fits(st.locks, open_id, ranges):
        _take(st, open_id, ranges)
        return LockOutcome(st, STATUS_SUCCESS)
    if not wait:
        return LockOutcome(state, STATUS_LOCK_NOT_GRANTED)
    st.waiters.append(LockWaiter(waiter_id, open_id, list(ranges)))
    return LockOutcome(st, None, waiter_id=waiter_id)


def unlock(state: FileState | None, open_id: OpenId, ranges: list[RangeSpec]) -> LockOutcome:
    """Each element must match one of the open's locks exactly; elements are
    processed in order and the first miss stops with STATUS_RANGE_NOT_LOCKED
    (earlier ones stay unlocked, as in Samba's smbd_do_unlocking)."""
    if state is None or open_id not in state.opens:
        return LockOutcome(state, STATUS_FILE_CLOSED)
    st = state.clone()
    status = STATUS_SUCCESS
    removed = False
    for r in ranges:
        if not range_valid(r.offset, r.length):
            status = STATUS_INVALID_LOCK_RANGE
            break
        index = next(
            (
                i
                for i, held in enumerate(st.locks)
                if held.open_id == open_id and held.offset == r.offset and held.length == r.length
            ),
            None,
        )
        if index is None:
            status = STATUS_RANGE_NOT_LOCKED
            break
        del st.locks[index]
        removed = True
    finished = grant_waiters(st) if removed else []
    return LockOutcome(st, status, tuple(finished))


def check_io(
    state: FileState | None, open_id: OpenId, offset: int, length: int, write: bool
) -> bool:
    if state is None:
        return True
    return not any(io_conflicts(held, open_id, offset, length, write) for held in state.locks)


def collect_waiter(state: FileState | None, waiter_id: str) -> LockOutcome:
    """The waiter's decision, removing its record once decided.

    A record that vanished means its open was closed: the pending lock
    fails with STATUS_RANGE_NOT_LOCKED (smbtorture smb2.lock.cancel-tdis).
    """
    if state is None:
        return LockOutcome(None, STATUS_RANGE_NOT_LOCKED)
    for i, w in enumerate(state.waiters):
        if w.waiter_id != waiter_id:
            continue
        if w.status is None:
            return LockOutcome(state, None)
        st = state.clone()
        del st.waiters[i]
        return LockOutcome(st, w.status)
    return LockOutcome(state, STATUS_RANGE_NOT_LOCKED)


def cancel_waiter(state: FileState | None, waiter_id: str) -> LockOutcome:
    """Withdraw a blocking request; if it was granted meanwhile, give the locks back."""
    if state is None:
        return LockOutcome(None, None)
    st = state.clone()
    index = next((i for i, w in enumerate(st.waiters) if w.waiter_id == waiter_id), None)
    if index is None:
        return LockOutcome(state, None)
    w = st.waiters.pop(index)
    if w.status == STATUS_SUCCESS:
        for r in w.ranges:
            for i, held in enumerate(st.locks):
                same = (held.open_id, held.offset, held.length, held.exclusive)
                if same == (w.open_id, r.offset, r.length, r.exclusive):
                    del st.locks[i]
                    break
    return LockOutcome(st, None, tuple(grant_waiters(st)))


def release_open(st: FileState, open_id: OpenId) -> list[str]:
    """Drop an open's locks and queued requests (in place); grant what that frees."""
    st.locks = [held for held in st.locks if held.open_id != open_id]
    gone = [w.waiter_id for w in st.waiters if w.open_id == open_id]
    st.waiters = [w for w in st.waiters if w.open_id != open_id]
    return gone + grant_waiters(st)
