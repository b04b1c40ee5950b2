"""The rules engine: one file's state plus a request gives a new state and outputs.

Pure: no asyncio, no I/O, no clock (``now`` is passed in). Every backend
runs these same functions inside its atomic read-modify-write.

Sources: MS-FSA 2.1.5.1.2.2 (share access), 2.1.4.12 (check for oplock
break), 2.1.5.17 (oplock request); MS-SMB2 3.3.4.6/3.3.4.7 (breaks),
3.3.5.22 (acks), 3.3.6.1 (ack timeout); where those leave room, Samba's
open.c (delay_for_oplock) and the smbtorture tests it passes decide.
Byte-range locks live in :mod:`oplock_bus.brl` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace

from . import disconnected
from .access import FILE_WRITE_DATA, is_lease_stat_open, is_oplock_stat_open, share_conflict
from .api import (
    LEASE_FLAG_BREAK_IN_PROGRESS,
    LEASE_NONE,
    OPLOCK_BATCH,
    OPLOCK_EXCLUSIVE,
    OPLOCK_II,
    OPLOCK_LEASE,
    OPLOCK_NONE,
    STATUS_DELETE_PENDING,
    STATUS_FILE_CLOSED,
    STATUS_FILE_NOT_AVAILABLE,
    STATUS_INVALID_DEVICE_STATE,
    STATUS_INVALID_OPLOCK_PROTOCOL,
    STATUS_INVALID_PARAMETER,
    STATUS_OBJECT_NAME_NOT_FOUND,
    STATUS_REQUEST_NOT_ACCEPTED,
    STATUS_SHARING_VIOLATION,
    STATUS_SUCCESS,
    STATUS_UNSUCCESSFUL,
    AckResult,
    BreakNotice,
    Disposition,
    Leaving,
    NodeId,
    OpenId,
    OpenRequest,
    OpenResult,
    Operation,
)
from .brl import (
    LockOutcome,
    cancel_waiter,
    check_io,
    collect_waiter,
    grant_waiters,
    lock,
    unlock,
)
from .caching import (
    RWH,
    H,
    R,
    W,
    break_lease,
    break_oplock,
    caching_of,
    expire_breaks,
    lease_notice,
    lease_to_oplock,
    normalize_lease,
    oplock_notice,
    oplock_to_lease,
)
from .disconnected import (
    Released,
    any_disconnected,
    close_expired,
    drop_open,
    hit_by,
    lower_without_ack,
)
from .model import (
    FileState,
    LeaseEntry,
    OpenEntry,
    RangeSpec,
    lease_id,
    request_from_dict,
    request_to_dict,
    result_from_list,
    result_to_list,
)
from .ranges import lock_conflicts

__all__ = [
    "AckOutcome",
    "CloseOutcome",
    "LockOutcome",
    "OpenOutcome",
    "OperationOutcome",
    "ack_lease",
    "ack_oplock",
    "admit_waiting",
    "cancel_waiter",
    "check_io",
    "close",
    "close_disconnected",
    "collect_waiter",
    "disconnect",
    "evaluate_open",
    "evaluate_operation",
    "evaluate_waiting_open",
    "grant_waiters",
    "invariant_violations",
    "lock",
    "needs_record",
    "reconnect",
    "set_delete_pending",
    "unlock",
    "unrecorded_open",
]


@dataclass(frozen=True)
class OpenOutcome:
    state: FileState
    notices: tuple[BreakNotice, ...]
    result: OpenResult | None  # None: breaks are pending, wait and evaluate again
    wait_until: float | None = None  # the earliest deadline among the awaited breaks
    wake: bool = False  # something others may be waiting on changed
    released: Released | None = None  # disconnected opens the rule closed (see disconnected)


@dataclass(frozen=True)
class OperationOutcome:
    state: FileState | None
    notices: tuple[BreakNotice, ...]
    wait_until: float | None  # None: the operation may proceed
    wake: bool = False
    released: Released | None = None


@dataclass(frozen=True)
class AckOutcome:
    state: FileState | None
    notices: tuple[BreakNotice, ...]
    result: AckResult
    wake: bool = False


@dataclass(frozen=True)
class CloseOutcome:
    state: FileState | None  # None: nothing left, delete the record
    finished_waiters: tuple[str, ...]
    dropped_leases: tuple[str, ...]
    durable_keys: tuple[str, ...] = ()  # index entries of disconnected opens closed


@dataclass(frozen=True)
class DisconnectOutcome:
    state: FileState | None
    kept: bool  # disconnected rather than closed
    closed: CloseOutcome


def _fresh(state: FileState | None, file: str, now: float) -> tuple[FileState, bool]:
    st = state.clone() if state is not None else FileState(file=file)
    return st, expire_breaks(st, now)


# -- opens -----------------------------------------------------------------------


def evaluate_open(
    state: FileState | None,
    req: OpenRequest,
    *,
    now: float,
    break_timeout: float,
    first_attempt: bool,
) -> OpenOutcome:
    """Share check, breaks, grant (MS-FSA 2.1.5.1.2, 2.1.4.12, 2.1.5.17).

    A share-mode conflict first breaks handle caching (Batch oplocks, H
    leases) so clients can close cached handles, and is re-checked after
    the acks (smbtorture smb2.oplock.batch5: break to II, then sharing
    violation). Otherwise write caching is broken; an overwrite breaks to
    none. A Batch/Exclusive holder breaks to II whether or not the new open
    asked for an oplock (smb2.oplock.brl1), as Samba does.
    """
    st, expired = _fresh(state, req.file, now)
    if req.disposition == Disposition.OVERWRITE:
        # Truncating writes: breaks and share modes see write access
        # (Samba's open_access_mask; smbtorture batch13/exclusive5).
        req = replace(req, access=req.access | FILE_WRITE_DATA)
    if not any_disconnected(st):
        return _evaluate_open(st, req, now, break_timeout, first_attempt, expired)
    released = Released()
    expired |= close_expired(st, now, released)
    while True:
        trial = st.clone() if any_disconnected(st) else st
        out = _evaluate_open(trial, req, now, break_timeout, first_attempt, expired)
        hit, notices = hit_by(trial, list(out.notices))
        if out.result is not None and out.result.status == STATUS_SHARING_VIOLATION:
            hit += [
                o.open_id
                for o in trial.opens.values()
                if o.disconnected and o.persistent and share_conflict(req.access, req.share, [o])
            ]
        if not hit:
            return replace(out, notices=tuple(notices), released=released)
        if any(st.opens[i].persistent for i in hit):
            refused = OpenResult(STATUS_FILE_NOT_AVAILABLE)
            return OpenOutcome(st, (), refused, wake=expired, released=released)
        for open_id in set(hit):
            if st.opens[open_id].resilient:
                lower_without_ack(st, trial, open_id)
            else:
                drop_open(st, open_id, released)
        expired = True


def _evaluate_open(
    st: FileState,
    req: OpenRequest,
    now: float,
    break_timeout: float,
    first_attempt: bool,
    expired: bool,
) -> OpenOutcome:
    if req.open_id in st.opens:
        return OpenOutcome(st, (), OpenResult(STATUS_INVALID_PARAMETER), wake=expired)
    if st.delete_pending:
        return OpenOutcome(st, (), OpenResult(STATUS_DELETE_PENDING), wake=expired)
    own = lease_id(req.lease.key) if req.lease is not None else None
    stat_open = is_oplock_stat_open(req.access)
    violation = not stat_open and share_conflict(req.access, req.share, st.opens.values())

    notices: list[BreakNotice] = []
    deadlines: list[float] = []
    if not stat_open:
        _break_for_open(
            st, req, own, violation, first_attempt, now, break_timeout, notices, deadlines
        )
    if deadlines:
        return OpenOutcome(st, tuple(notices), None, min(deadlines), wake=expired)
    if violation:
        return OpenOutcome(st, tuple(notices), OpenResult(STATUS_SHARING_VIOLATION), wake=expired)
    result = _grant(st, req, own, stat_open)
    return OpenOutcome(st, tuple(notices), result, wake=expired)


def evaluate_waiting_open(
    state: FileState | None,
    req: OpenRequest,
    *,
    now: float,
    break_timeout: float,
    first_attempt: bool,
) -> OpenOutcome:
    """``evaluate_open`` for an opener that waits between evaluations.

    An open that must wait is stored with the state as pending, so that the
    transaction that unblocks it (an ack, a close) can grant it at once
    (``admit_waiting``); its opener then finds the result in the record. An
    open decided here leaves the pending list.
    """
    if state is not None:
        mine = state.opens.get(req.open_id)
        if mine is not None and mine.result is not None:
            return OpenOutcome(state, (), result_from_list(mine.result))
    out = evaluate_open(
        state, req, now=now, break_timeout=break_timeout, first_attempt=first_attempt
    )
    if out.result is None:
        if req.open_id not in out.state.pending:
            out.state.pending[req.open_id] = request_to_dict(req)
    else:
        out.state.pending.pop(req.open_id, None)
    return out


def admit_waiting(
    state: FileState, *, now: float, break_timeout: float
) -> tuple[FileState, list[OpenId]]:
    """Grant the pending opens, in arrival order, that can now go ahead
    without breaking anything more; stop at the first that cannot (its
    opener evaluates it again itself, as does every opener of a refused or
    still-waiting open). Saves the opener a round trip: it only reads."""
    st = state
    admitted: list[OpenId] = []
    for open_id, plain in state.pending.items():
        out = evaluate_open(
            st, request_from_dict(plain), now=now, break_timeout=break_timeout,
            first_attempt=False,
        )  # fmt: skip
        if out.result is None or out.result.status != STATUS_SUCCESS or out.notices:
            break
        if out.released:
            break  # closing a disconnected open is for the opener's own commit to finish
        st = out.state  # a copy: evaluate_open never changes its input
        del st.pending[open_id]
        st.opens[open_id].result = result_to_list(out.result)
        admitted.append(open_id)
    return st, admitted


def needs_record(req: OpenRequest) -> bool:
    """Whether an open must be stored in the file's shared record.

    An attribute-only open without a lease (and without an oplock, which
    only one that creates the file can get) that does not truncate takes
    part in no share check, breaks nothing and keeps no other open from
    caching: all it needs is a file that is not delete-pending. Storing it
    anyway made each such open and close a write to a record every node
    shares, which is what smb2.bench.path-contention-shared (stat opens of
    the share root) does.
    """
    return not (
        is_oplock_stat_open(req.access)
        and req.lease is None
        and (req.oplock == OPLOCK_NONE or not req.created)
        and req.disposition != Disposition.OVERWRITE  # breaks as a write would
        and not req.holds_record
        and not req.durable_ms  # it may have to outlive its connection here
    )


def unrecorded_open(state: FileState | None, req: OpenRequest) -> OpenResult:
    """The answer to an open that ``needs_record`` says stays out of the record."""
    if state is not None and state.delete_pending:
        return OpenResult(STATUS_DELETE_PENDING)
    return OpenResult(STATUS_SUCCESS)


def _break_for_open(
    st: FileState,
    req: OpenRequest,
    own: str | None,
    violation: bool,
    first_attempt: bool,
    now: float,
    timeout: float,
    notices: list[BreakNotice],
    deadlines: list[float],
) -> None:
    # Samba delay_for_oplock: the "delay mask" is what the new open cannot
    # live with; holders keep the rest.
    delay_mask = H if violation else W
    overwrite = req.disposition == Disposition.OVERWRITE

    def target_of(current: int) -> int:
        target = current & ~delay_mask
        if overwrite and not delay_mask & H:
            target &= ~(H | R)  # it will truncate anyway: straight to none
        return target

    for o in st.opens.values():
        if o.lease_id is not None or o.oplock == OPLOCK_NONE:
            continue
        current = oplock_to_lease(o.oplock)
        target = target_of(current)
        if not current & ~target:
            continue
        notices += break_oplock(st, o, target, now, timeout)
        if current & delay_mask:
            deadlines.append(o.break_deadline)
    if is_lease_stat_open(req.access):
        return  # leases ignore opens that only read attributes or the ACL
    for lease in st.leases.values():
        if lease.lease_id == own:
            continue
        was_breaking = lease.breaking
        current = lease.state
        target = target_of(current)
        if not current & ~target:
            if was_breaking:
                deadlines.append(lease.break_deadline)  # let the running break finish
            continue
        notices += break_lease(st, lease, target, now, timeout)
        if lease.breaking and (current & delay_mask or (was_breaking and not first_attempt)):
            deadlines.append(lease.break_deadline)


def _has_backing_locks(st: FileState, file_size: int | None) -> bool:
    if file_size is None:
        return bool(st.locks)
    return any(held.offset < file_size for held in st.locks)


def _grant(st: FileState, req: OpenRequest, own: str | None, stat_open: bool) -> OpenResult:
    others = [o for o in st.opens.values() if own is None or o.lease_id != own]
    others_caching = [caching_of(st, o) for o in others]
    got_handle = any(bits & H for bits in others_caching)
    got_oplock = any(o.lease_id is None and o.oplock != OPLOCK_NONE for o in others)
    # Any other oplock/lease, or any other non-stat open, rules out W
    # (Samba delay_for_oplock_fn "disallow_write_lease").
    no_write = any(
        o.lease_id is not None or o.oplock != OPLOCK_NONE or not is_oplock_stat_open(o.access)
        for o in others
    )
    if req.lease is not None:
        requested = req.lease.state & RWH
        granted = normalize_lease(requested)
    else:
        requested = oplock_to_lease(req.oplock)
        # Stat opens of existing files get no oplock (Samba open.c;
        # smbtorture batch8), but one that creates the file may (batch9).
        granted = LEASE_NONE if stat_open and not req.created else requested
    if req.is_directory:
        granted = LEASE_NONE
    if req.disposition != Disposition.OVERWRITE and _has_backing_locks(st, req.file_size):
        granted &= ~(R | H)  # MS-FSA 2.1.5.17: shared caching needs an unlocked file
    if no_write:
        granted &= ~W
    if any(bits & W for bits in others_caching):
        granted = LEASE_NONE  # never next to someone caching writes (stat opens break nothing)

    entry = OpenEntry(
        open_id=req.open_id,
        node_id=req.node_id,
        access=req.access,
        share=req.share,
        seq=st.next_seq,
        is_directory=req.is_directory,
        owner_data=dict(req.owner_data),
        epoch=req.epoch,
    )
    st.next_seq += 1
    st.opens[req.open_id] = entry
    if req.durable_ms and not req.is_directory:
        # Durable if persistent, or with the handle caching that lets the client
        # keep the handle (MS-SMB2 3.3.5.9.10); checked again when its node dies.
        entry.durable_ms = req.durable_ms
        entry.persistent = req.persistent
        entry.durable_key = req.durable_key
        entry.reclaim = dict(req.reclaim) if req.reclaim is not None else None
    if req.lease is None or req.is_directory:
        # Directory leases are not offered: the key was checked (the
        # coordinator binds it), the open gets no caching (smbtorture
        # lease.request: a directory open with a lease gets oplock none).
        if got_handle:
            granted = LEASE_NONE  # an oplock cannot sit beside a handle lease
        entry.oplock = lease_to_oplock(granted)
        return OpenResult(STATUS_SUCCESS, entry.oplock)

    if got_oplock:
        granted &= ~H
    granted = normalize_lease(granted)
    own = own or lease_id(req.lease.key)
    entry.oplock = OPLOCK_LEASE
    entry.lease_id = own
    flags = 0
    lease = st.leases.get(own)
    if lease is None:
        lease = LeaseEntry(
            lease_id=own,
            client_guid=req.lease.key.client_guid.hex(),
            key=req.lease.key.key.hex(),
            state=granted,
            # v2: the epoch moves with every state change, the grant included.
            epoch=req.lease.epoch + (1 if granted else 0),
            version=req.lease.version,
            parent_key=req.lease.parent_key.hex() if req.lease.parent_key else None,
        )
        st.leases[own] = lease
    elif lease.breaking:
        flags = LEASE_FLAG_BREAK_IN_PROGRESS
    elif lease.state & requested == lease.state and granted != lease.state and granted == requested:
        # Only a strict, fully grantable upgrade changes an existing lease
        # (smbtorture smb2.lease.upgrade2/upgrade3).
        lease.state = granted
        lease.epoch += 1
    lease.opens.append(req.open_id)
    return OpenResult(
        STATUS_SUCCESS, OPLOCK_LEASE, lease.state, lease.epoch & 0xFFFF, flags, lease.version
    )


# -- operations on an open file -------------------------------------------------------


def evaluate_operation(
    state: FileState | None,
    open_id: OpenId,
    op: Operation,
    *,
    now: float,
    break_timeout: float,
) -> OperationOutcome:
    """MS-FSA 2.1.4.12 for WRITE/LOCK/SET_SIZE (break to none) and
    RENAME/DELETE (break handle caching).

    Level II oplocks go to none with no ack, the operating open's own
    included (smbtorture smb2.oplock.brl1, levelii500); a lease is never
    broken by its own opens. Only breaks of write caching (or, for
    rename/delete, handle caching) are waited for.
    """
    if state is None:
        return OperationOutcome(None, (), None)
    st, expired = _fresh(state, state.file, now)
    if not any_disconnected(st):
        return _evaluate_operation(st, open_id, op, now, break_timeout, expired)
    released = Released()
    expired |= close_expired(st, now, released)
    while True:
        trial = st.clone() if any_disconnected(st) else st
        out = _evaluate_operation(trial, open_id, op, now, break_timeout, expired)
        hit, notices = hit_by(trial, list(out.notices))
        if not hit:
            # Only breaks that need no ack are dropped: they set no deadline.
            return replace(out, notices=tuple(notices), released=released)
        for victim in set(hit):
            if st.opens[victim].persistent or st.opens[victim].resilient:
                lower_without_ack(st, trial, victim)
            else:
                drop_open(st, victim, released)
        expired = True


def _evaluate_operation(
    st: FileState,
    open_id: OpenId,
    op: Operation,
    now: float,
    break_timeout: float,
    expired: bool,
) -> OperationOutcome:
    me = st.opens.get(open_id)
    own = me.lease_id if me is not None else None
    notices: list[BreakNotice] = []
    deadlines: list[float] = []
    if op in (Operation.WRITE, Operation.LOCK, Operation.SET_SIZE):
        for o in st.opens.values():
            if o.lease_id is not None:
                continue
            if o.oplock == OPLOCK_II:
                notices += break_oplock(st, o, LEASE_NONE, now, break_timeout)
            elif o.oplock in (OPLOCK_BATCH, OPLOCK_EXCLUSIVE) and o.open_id != open_id:
                notices += break_oplock(st, o, LEASE_NONE, now, break_timeout)
                deadlines.append(o.break_deadline)
        for lease in st.leases.values():
            if lease.lease_id == own or (lease.state == LEASE_NONE and not lease.breaking):
                continue
            current = lease.state
            notices += break_lease(st, lease, LEASE_NONE, now, break_timeout)
            if current & W and lease.breaking:
                deadlines.append(lease.break_deadline)
    else:
        for lease in st.leases.values():
            if lease.lease_id == own or not lease.state & H:
                continue
            notices += break_lease(st, lease, lease.state & ~H, now, break_timeout)
            if lease.breaking:
                deadlines.append(lease.break_deadline)
        if op == Operation.RENAME:
            for o in st.opens.values():
                if o.open_id != open_id and o.lease_id is None and o.oplock == OPLOCK_BATCH:
                    notices += break_oplock(st, o, LEASE_NONE, now, break_timeout)
                    deadlines.append(o.break_deadline)
    wait_until = min(deadlines) if deadlines else None
    return OperationOutcome(st, tuple(notices), wait_until, wake=expired)


# -- acknowledgements --------------------------------------------------------------


def ack_oplock(state: FileState | None, open_id: OpenId, level: int, *, now: float) -> AckOutcome:
    """MS-SMB2 3.3.5.22.1."""
    if state is None or open_id not in state.opens:
        return AckOutcome(state, (), AckResult(STATUS_FILE_CLOSED))
    st, expired = _fresh(state, state.file, now)
    o = st.opens[open_id]
    if not o.breaking:
        # Acking a Level II -> none break (which wants no ack) is what
        # smbtorture levelii500 expects to fail with INVALID_OPLOCK_PROTOCOL;
        # any other ack outside a break is the spec's INVALID_DEVICE_STATE.
        status = STATUS_INVALID_OPLOCK_PROTOCOL if o.unacked_break else STATUS_INVALID_DEVICE_STATE
        return AckOutcome(st, (), AckResult(status, o.oplock), wake=expired)
    bad = None
    if level == OPLOCK_LEASE:
        bad = STATUS_INVALID_PARAMETER
    elif level not in (OPLOCK_NONE, OPLOCK_II) or level > o.break_to:
        # Acking above the offered level: the break completes to none and
        # the ack fails (MS-SMB2 3.3.5.22.1; MS-FSA 2.1.5.18).
        bad = STATUS_INVALID_OPLOCK_PROTOCOL
    o.breaking = False
    if bad is not None:
        o.oplock = OPLOCK_NONE
        return AckOutcome(st, (), AckResult(bad, OPLOCK_NONE), wake=True)
    o.oplock = level
    notices: list[BreakNotice] = []
    if level > o.break_to_required:
        # A stricter break arrived meanwhile: II goes on to none, no ack.
        o.oplock = OPLOCK_NONE
        o.unacked_break = True
        notices.append(oplock_notice(st, o, OPLOCK_NONE, ack=False))
    return AckOutcome(st, tuple(notices), AckResult(STATUS_SUCCESS, level), wake=True)


def ack_lease(
    state: FileState | None, lid: str, ack: int, *, now: float, break_timeout: float
) -> AckOutcome:
    """MS-SMB2 3.3.5.22.2, with Samba's stepping when the break narrowed meanwhile."""
    if state is None or lid not in state.leases:
        return AckOutcome(state, (), AckResult(STATUS_OBJECT_NAME_NOT_FOUND))
    st, expired = _fresh(state, state.file, now)
    lease = st.leases[lid]
    if not lease.breaking:
        return AckOutcome(st, (), AckResult(STATUS_UNSUCCESSFUL), wake=expired)
    if ack & ~lease.break_to:
        return AckOutcome(st, (), AckResult(STATUS_REQUEST_NOT_ACCEPTED), wake=expired)
    lease.state = ack
    lease.breaking = False
    notices: list[BreakNotice] = []
    if ack & ~lease.break_to_required:
        # Break on from the acked state; while W or H remain the next step
        # keeps R, as Windows does (smbtorture smb2.lease.breaking3), and
        # the epoch does not move.
        if ack & (W | H):
            step = lease.break_to_required | R
            lease.breaking = True
            lease.break_to = step
            lease.break_deadline = now + break_timeout
            notices.append(lease_notice(st, lease, ack, step, ack=True))
        else:
            lease.state = LEASE_NONE
            notices.append(lease_notice(st, lease, ack, LEASE_NONE, ack=False))
    return AckOutcome(
        st, tuple(notices), AckResult(STATUS_SUCCESS, ack, lease.epoch & 0xFFFF), wake=True
    )


# -- close, delete-pending ---------------------------------------------------------


def close(state: FileState | None, open_id: OpenId, *, now: float) -> CloseOutcome:
    """Forget an open: its locks and queued locks go, its pending break ends,
    a lease with no opens left is dropped."""
    if state is None:
        return CloseOutcome(state, (), ())
    if open_id not in state.opens:
        if open_id not in state.pending:
            return CloseOutcome(state, (), ())
        st = state.clone()  # a waiting open given up
        del st.pending[open_id]
        return CloseOutcome(None if st.is_idle() else st, (), ())
    st, _ = _fresh(state, state.file, now)
    released = Released()
    drop_open(st, open_id, released)
    return _closed(st, released)


def _closed(st: FileState, released: Released) -> CloseOutcome:
    return CloseOutcome(
        None if st.is_idle() else st,
        tuple(released.finished_waiters),
        tuple(released.dropped_leases),
        tuple(released.durable_keys),
    )


# -- durable opens of a dead node (see oplock_bus.disconnected) ---------------------------


def disconnect(
    state: FileState | None, open_id: OpenId, *, now: float, leaving: Leaving | None = None
) -> DisconnectOutcome:
    """The open's node or connection is gone: keep it disconnected (as
    ``leaving`` says, if its connection dropped) if it may be reclaimed,
    else close it."""
    if state is None or open_id not in state.opens:
        return DisconnectOutcome(state, False, CloseOutcome(state, (), ()))
    st, _ = _fresh(state, state.file, now)
    released = Released()
    kept = disconnected.disconnect(st, open_id, now, released, leaving)
    return DisconnectOutcome(st, kept, _closed(st, released))


def close_disconnected(state: FileState | None, open_id: OpenId, *, now: float) -> CloseOutcome:
    """Close ``open_id`` if it is still disconnected and its timeout ran out."""
    if state is None:
        return CloseOutcome(state, (), ())
    o = state.opens.get(open_id)
    if o is None or not o.disconnected or now < o.expires():
        return CloseOutcome(state, (), ())
    return close(state, open_id, now=now)


def reconnect(
    state: FileState | None, open_id: OpenId, new_id: OpenId, node_id: NodeId, epoch: int,
    *, now: float,
) -> tuple[FileState | None, OpenEntry | None]:  # fmt: skip
    """Hand the disconnected ``open_id`` to ``node_id`` as ``new_id``; the open
    as it is now, or None if it is gone, expired or taken meanwhile."""
    o = state.opens.get(open_id) if state is not None else None
    if state is None or o is None or not o.disconnected or now >= o.expires():
        return state, None
    st, _ = _fresh(state, state.file, now)
    disconnected.reconnect(st, open_id, new_id, node_id, epoch)
    return st, st.opens[new_id]


def set_delete_pending(state: FileState | None, pending: bool) -> FileState | None:
    if state is None:
        return None
    st = state.clone()
    st.delete_pending = pending
    return st


# -- bus recovery (oplock_bus.recovery) ----------------------------------------------------


@dataclass(frozen=True)
class ReassertOutcome:
    state: FileState | None
    reasserted: tuple[OpenId, ...]
    lost: tuple[OpenId, ...]  # given up: they conflicted with what others hold


def held_by(state: FileState, node_id: NodeId, epochs: Collection[int]) -> FileState:
    """What ``node_id`` holds in ``state`` under its registration ``epochs``:
    its opens (not its waiting ones: their openers evaluate again and queue
    anew), their leases, locks and queued locks, and the delete-pending flag
    it may have set."""
    mine = FileState(file=state.file, next_seq=state.next_seq, delete_pending=state.delete_pending)
    mine.opens = {
        k: o for k, o in state.opens.items() if o.node_id == node_id and o.epoch in epochs
    }
    mine.leases = {
        k: x for k, x in state.leases.items() if any(i in mine.opens for i in x.opens)
    }
    mine.locks = [x for x in state.locks if x.open_id in mine.opens]
    mine.waiters = [w for w in state.waiters if w.open_id in mine.opens]
    return mine.clone()


def reassert(
    state: FileState | None, mine: FileState, epoch: int, *, now: float
) -> ReassertOutcome:
    """Put back what a node holds (``held_by``) into the rebuilt record,
    under its new registration ``epoch``.

    Another node's re-assertion may already be there; this one's entries
    replace any of the same name (the record may be a stale replica's). If
    the rules held before the loss, nothing conflicts; if something does, the
    opens re-asserted here that take part give way, newest first, and are
    reported lost: no grant is ever held twice."""
    st, _ = _fresh(state, mine.file, now)
    before = set(invariant_violations(st))
    for open_id, o in mine.opens.items():
        st.opens[open_id] = replace(o, epoch=epoch, owner_data=dict(o.owner_data))
    st.next_seq = max(st.next_seq, mine.next_seq)
    for lid, lease in mine.leases.items():
        cur = st.leases.get(lid)
        if cur is None:
            st.leases[lid] = replace(lease, opens=[i for i in lease.opens if i in st.opens])
        else:
            cur.opens += [i for i in lease.opens if i in mine.opens and i not in cur.opens]
    held = {(x.open_id, x.offset, x.length, x.exclusive) for x in st.locks}
    st.locks += [
        x for x in mine.locks if (x.open_id, x.offset, x.length, x.exclusive) not in held
    ]
    queued = {w.waiter_id for w in st.waiters}
    st.waiters += [w for w in mine.waiters if w.waiter_id not in queued]
    st.delete_pending = st.delete_pending or mine.delete_pending
    expire_breaks(st, now)
    lost: list[OpenId] = []
    released = Released()
    newest_first = sorted(mine.opens, key=lambda i: -mine.opens[i].seq)
    while set(invariant_violations(st)) - before and newest_first:
        open_id = newest_first.pop(0)
        drop_open(st, open_id, released)
        lost.append(open_id)
    kept = tuple(i for i in mine.opens if i not in lost)
    return ReassertOutcome(None if st.is_idle() else st, kept, tuple(lost))


# -- invariants (used by tests and by the stores' debug checks) -------------------------


def invariant_violations(st: FileState) -> list[str]:
    """What must never be true of a committed state."""
    problems: list[str] = []
    holders: list[tuple[str, int]] = []
    for o in st.opens.values():
        if o.lease_id is None and o.oplock not in (
            OPLOCK_NONE,
            OPLOCK_II,
            OPLOCK_EXCLUSIVE,
            OPLOCK_BATCH,
        ):
            problems.append(f"{o.open_id}: bad oplock {o.oplock}")
        if o.lease_id is None and o.oplock != OPLOCK_NONE:
            holders.append((o.open_id, oplock_to_lease(o.oplock)))
    for lease in st.leases.values():
        if lease.state not in (0, R, R | H, R | W, RWH):
            problems.append(f"{lease.lease_id}: bad lease state {lease.state}")
        if lease.state:
            holders.append((lease.lease_id, lease.state))
        if not lease.opens:
            problems.append(f"{lease.lease_id}: lease without opens")
    writers = [name for name, bits in holders if bits & W]
    if writers and len(holders) > 1:
        problems.append(f"write caching by {writers} beside {len(holders) - 1} other holder(s)")
    opens = list(st.opens.values())
    for i, a in enumerate(opens):
        if is_oplock_stat_open(a.access):
            continue
        if share_conflict(a.access, a.share, opens[i + 1 :]):
            problems.append(f"{a.open_id}: share modes conflict")
    for i, held in enumerate(st.locks):
        for other in st.locks[i + 1 :]:
            spec = RangeSpec(other.offset, other.length, other.exclusive)
            if held.open_id != other.open_id and lock_conflicts(held, other.open_id, spec):
                problems.append(f"locks of {held.open_id} and {other.open_id} overlap")
    return problems
