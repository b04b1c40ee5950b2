"""Caching state arithmetic and the primitive break steps (MS-SMB2 3.3.4.6/3.3.4.7).

Oplocks are handled as lease bits, as Samba does: Batch = RWH,
Exclusive = RW, Level II = R. That makes one set of break rules serve both,
with the oplock-only restriction that an oplock can only go to II or none.
"""

from __future__ import annotations

from .api import (
    LEASE_HANDLE,
    LEASE_NONE,
    LEASE_READ,
    LEASE_WRITE,
    OPLOCK_BATCH,
    OPLOCK_EXCLUSIVE,
    OPLOCK_II,
    OPLOCK_NONE,
    BreakNotice,
)
from .model import FileState, LeaseEntry, OpenEntry

R, H, W = LEASE_READ, LEASE_HANDLE, LEASE_WRITE
RWH = R | W | H
VALID_LEASE_STATES = frozenset({LEASE_NONE, R, R | H, R | W, RWH})


def oplock_to_lease(level: int) -> int:
    return {OPLOCK_BATCH: RWH, OPLOCK_EXCLUSIVE: R | W, OPLOCK_II: R}.get(level, LEASE_NONE)


def lease_to_oplock(bits: int) -> int:
    if bits == RWH:
        return OPLOCK_BATCH
    if bits == R | W:
        return OPLOCK_EXCLUSIVE
    if bits & R and not bits & W:
        return OPLOCK_II
    return OPLOCK_NONE


def normalize_lease(bits: int) -> int:
    """The grantable states all contain R (MS-SMB2 3.3.5.9.8): W, H, WH become none."""
    bits &= RWH
    return bits if bits & R else LEASE_NONE


def caching_of(st: FileState, o: OpenEntry) -> int:
    """What an open may currently cache, as lease bits."""
    if o.lease_id is not None:
        lease = st.leases.get(o.lease_id)
        return lease.state if lease is not None else LEASE_NONE
    return oplock_to_lease(o.oplock)


def lease_target_open(st: FileState, lease: LeaseEntry) -> OpenEntry | None:
    """The open whose node is told about a lease break: the newest one.

    A lease belongs to (ClientGUID, LeaseKey) cluster-wide and its opens may
    live on several nodes; any of them can reach the client.
    """
    opens = [st.opens[i] for i in lease.opens if i in st.opens]
    # A connected open before any disconnected one (a durable open of a dead
    # node has no node to tell).
    return max(opens, key=lambda o: (not o.disconnected, o.seq)) if opens else None


def break_oplock(
    st: FileState, o: OpenEntry, target_bits: int, now: float, timeout: float
) -> list[BreakNotice]:
    """Lower a non-lease oplock towards ``target_bits`` (only R survives)."""
    current = oplock_to_lease(o.oplock)
    target_bits &= R
    if not current & ~target_bits:
        return []
    if o.oplock == OPLOCK_II:
        # MS-FSA 2.1.4.12: Level II goes to none at once and needs no ack.
        o.oplock = OPLOCK_NONE
        o.unacked_break = True
        return [oplock_notice(st, o, OPLOCK_NONE, ack=False)]
    level = OPLOCK_II if target_bits & R else OPLOCK_NONE
    if o.breaking:
        # One notice per break; a stricter target waits for the ack.
        o.break_to_required = min(o.break_to_required, level)
        return []
    o.breaking = True
    o.break_to = o.break_to_required = level
    o.break_deadline = now + timeout
    o.unacked_break = False
    return [oplock_notice(st, o, level, ack=True)]


def break_lease(
    st: FileState, lease: LeaseEntry, target: int, now: float, timeout: float
) -> list[BreakNotice]:
    """Lower a lease towards ``target``.

    During a break the new target only narrows where the lease must end up;
    the client hears about it after its ack (Samba's downgrade_lease, as in
    smbtorture smb2.lease.breaking3 / v2_breaking3).
    """
    if lease.breaking:
        lease.break_to_required &= target
        return []
    if not lease.state & ~target:
        return []
    lease.epoch += 1
    if lease.state == R:
        # Read-only caching goes to none with no ack (MS-SMB2 3.3.4.7).
        lease.state = LEASE_NONE
        return [lease_notice(st, lease, R, LEASE_NONE, ack=False)]
    lease.breaking = True
    lease.break_to = lease.break_to_required = target
    lease.break_deadline = now + timeout
    return [lease_notice(st, lease, lease.state, target, ack=True)]


def lease_notice(
    st: FileState, lease: LeaseEntry, current: int, new: int, *, ack: bool
) -> BreakNotice:
    target = lease_target_open(st, lease)
    return BreakNotice(
        file=st.file,
        node_id=target.node_id if target is not None else "",
        open_id=None,
        lease=lease.lease_key(),
        new_level=new,
        current_state=current,
        epoch=lease.epoch & 0xFFFF,
        version=lease.version,
        ack_required=ack,
        owner_data=dict(target.owner_data) if target is not None else {},
    )


def oplock_notice(st: FileState, o: OpenEntry, level: int, *, ack: bool) -> BreakNotice:
    return BreakNotice(
        file=st.file,
        node_id=o.node_id,
        open_id=o.open_id,
        lease=None,
        new_level=level,
        ack_required=ack,
        owner_data=dict(o.owner_data),
    )


def expire_breaks(st: FileState, now: float) -> bool:
    """Force unacknowledged breaks past their deadline to none.

    MS-SMB2 3.3.6.1: on the acknowledgment timer the server acknowledges
    the break itself with level none (oplocks and leases alike), as Samba's
    oplock/lease timeout handlers do.
    """
    changed = False
    for o in st.opens.values():
        if o.breaking and o.break_deadline <= now:
            o.breaking = False
            o.oplock = OPLOCK_NONE
            changed = True
    for lease in st.leases.values():
        if lease.breaking and lease.break_deadline <= now:
            lease.breaking = False
            lease.state = LEASE_NONE
            changed = True
    return changed
