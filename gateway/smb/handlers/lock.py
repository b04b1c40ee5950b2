"""LOCK: byte-range locks (MS-SMB2 2.2.26-2.2.27, 3.3.5.14; MS-FSA 2.1.5.8).

The LockSequence array of a durable or resilient handle is kept on the bus
too, written in the lock's own transaction (no extra round trip): a handle
taken over through another node, its own node dead or not, still knows
which LOCK a reconnected client replays (docs/operations.md).
"""

from __future__ import annotations

import struct

from oplock_bus.api import LockRange, LockSequence, Operation

from ...protocol.constants import Capabilities, Dialect, LockFlags, NtStatusError, Status
from ...protocol.wire import check_size
from ..buswait import run_bus_call
from ..context import Reply, RequestContext
from ..state import Open

_REQ = struct.Struct("<HHIQQ")
_ELEMENT = struct.Struct("<QQII")
_RESP = struct.pack("<HH", 4, 0)
_LOCK_FLAGS = {
    LockFlags.SHARED_LOCK,
    LockFlags.EXCLUSIVE_LOCK,
    LockFlags.SHARED_LOCK | LockFlags.FAIL_IMMEDIATELY,
    LockFlags.EXCLUSIVE_LOCK | LockFlags.FAIL_IMMEDIATELY,
}
STATUS_INVALID_LOCK_RANGE = 0xC00001A1


async def handle_lock(ctx: RequestContext) -> Reply:
    body = ctx.body
    check_size(body, 48, 48)
    _s, count, sequence, _p, _v = _REQ.unpack_from(body)
    if count == 0 or 24 + count * _ELEMENT.size > len(body):
        raise NtStatusError(Status.INVALID_PARAMETER, "bad LockCount")
    op = ctx.open_at(8)
    if op.is_dir or op.pipe is not None:
        raise NtStatusError(Status.INVALID_PARAMETER)
    bucket = _replay_bucket(ctx, op, sequence)
    if bucket is not None:
        number = sequence & 0xF
        if op.lock_sequences.get(bucket) == number:
            # A replay of a request that already succeeded: do nothing again.
            return Reply(Status.SUCCESS, _RESP)
        op.lock_sequences.pop(bucket, None)
    kept = (bucket, sequence & 0xF) if bucket is not None and (op.durable or op.resilient) else None
    reply = await _apply(ctx, op, count, kept)
    if bucket is not None:
        op.lock_sequences[bucket] = sequence & 0xF
    return reply


def _replay_bucket(ctx: RequestContext, op: Open, sequence: int) -> int | None:
    """The LockSequence bucket to check, or None when replay detection is off.

    Handles that survive a disconnect (resilient or durable) check it: a client
    replays a LOCK after reconnecting such a handle. With multichannel offered
    on a 3.x connection every handle does (MS-SMB2 3.3.5.14), as a client may
    replay on another channel of its session.
    """
    if ctx.conn.codec.dialect < Dialect.SMB2_1:
        return None
    multichannel = ctx.conn.server_capabilities & Capabilities.MULTI_CHANNEL
    if not (op.resilient or op.durable or multichannel):
        return None
    bucket = sequence >> 4
    return bucket if 1 <= bucket <= 64 else None


async def _apply(ctx: RequestContext, op: Open, count: int, sequence: LockSequence | None) -> Reply:
    """Apply the request; ``sequence`` goes to the bus with it (see above)."""
    body = ctx.body
    elements = [_ELEMENT.unpack_from(body, 24 + i * _ELEMENT.size) for i in range(count)]
    bus = ctx.node.bus
    if elements[0][2] & LockFlags.UNLOCK:
        # Unlocks apply one by one: an error stops the request but what was
        # unlocked before it stays unlocked (smbtorture smb2.lock.multiple-unlock).
        for offset, length, flags, _r in elements:
            if flags != LockFlags.UNLOCK:
                raise NtStatusError(Status.INVALID_PARAMETER, "lock in an unlock request")
            status = await bus.unlock(
                op.file_key, op.bus_open_id, [LockRange(offset, length, False)], sequence
            )
            if status != Status.SUCCESS:
                raise NtStatusError(status)
        return Reply(Status.SUCCESS, _RESP)
    ranges: list[LockRange] = []
    for offset, length, flags, _r in elements:
        if flags not in _LOCK_FLAGS:
            raise NtStatusError(Status.INVALID_PARAMETER, "bad lock flags")
        if count > 1 and not flags & LockFlags.FAIL_IMMEDIATELY:
            raise NtStatusError(Status.INVALID_PARAMETER, "several blocking locks")
        if length and offset + length - 1 > 0xFFFFFFFFFFFFFFFF:
            raise NtStatusError(STATUS_INVALID_LOCK_RANGE)
        ranges.append(LockRange(offset, length, bool(flags & LockFlags.EXCLUSIVE_LOCK)))
    wait = not elements[0][2] & LockFlags.FAIL_IMMEDIATELY
    await run_bus_call(ctx, bus.break_for(op.file_key, op.bus_open_id, Operation.LOCK))
    status = await run_bus_call(
        ctx, bus.lock(op.file_key, op.bus_open_id, ranges, wait=wait, sequence=sequence)
    )
    if status != Status.SUCCESS:
        raise NtStatusError(status)
    return Reply(Status.SUCCESS, _RESP)
