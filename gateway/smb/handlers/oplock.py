"""OPLOCK_BREAK: the notifications a node sends and the acknowledgements it
handles, oplock and lease (MS-SMB2 2.2.23-2.2.25, 3.3.4.6-3.3.4.7, 3.3.5.22)."""

from __future__ import annotations

import struct

from oplock_bus.api import BreakNotice, LeaseKey

from ...protocol.constants import NtStatusError, OplockLevel, Status
from .. import opens
from ..context import Reply, RequestContext
from ..state import Open

# The oplock break notification and its acknowledgement share one layout.
_OPLOCK_BREAK = struct.Struct("<HBBIQQ")
_LEASE_BREAK = struct.Struct("<HHI16sIIIII")
_LEASE_ACK = struct.Struct("<HHI16sIQ")
LEASE_BREAK_ACK_REQUIRED = 0x01


def oplock_break(op: Open, new_level: int) -> bytes:
    """The Oplock Break Notification body for ``op`` (2.2.23.1): to II or to none."""
    level = OplockLevel.II if new_level == OplockLevel.II else OplockLevel.NONE
    return _OPLOCK_BREAK.pack(24, level, 0, 0, op.persistent_id, op.volatile_id)


def lease_break(notice: BreakNotice) -> bytes:
    """The Lease Break Notification body (2.2.23.2); only a v2 lease has an epoch."""
    assert notice.lease is not None
    flags = LEASE_BREAK_ACK_REQUIRED if notice.ack_required else 0
    epoch = notice.epoch if notice.version == 2 else 0
    return _LEASE_BREAK.pack(
        44, epoch, flags, notice.lease.key, notice.current_state, notice.new_level, 0, 0, 0
    )


async def handle_oplock_break(ctx: RequestContext) -> Reply:
    body = ctx.body
    if len(body) < 2:
        raise NtStatusError(Status.INVALID_PARAMETER)
    size = struct.unpack_from("<H", body, 0)[0]
    if size == 24 and len(body) >= 24:
        return await _oplock_ack(ctx)
    if size == 36 and len(body) >= 36:
        return await _lease_ack(ctx)
    raise NtStatusError(Status.INVALID_PARAMETER)


async def _oplock_ack(ctx: RequestContext) -> Reply:
    _s, level, _r, _r2, _p, _v = _OPLOCK_BREAK.unpack_from(ctx.body)
    if ctx.session is None:
        raise NtStatusError(Status.USER_SESSION_DELETED)
    op = ctx.open_at(8)
    if level not in (OplockLevel.NONE, OplockLevel.II):
        raise NtStatusError(Status.INVALID_PARAMETER)
    # Timed on receipt: what the bus takes to record the ack is not the client's latency.
    ctx.node.break_clock.acked_oplock(op.bus_open_id)
    result = await ctx.node.bus.ack_oplock(op.file_key, op.bus_open_id, level)
    if result.status != Status.SUCCESS:
        raise NtStatusError(result.status)
    op.oplock_level = result.level
    body = _OPLOCK_BREAK.pack(24, result.level, 0, 0, op.persistent_id, op.volatile_id)
    return Reply(Status.SUCCESS, body)


async def _lease_ack(ctx: RequestContext) -> Reply:
    _s, _r, _flags, key, state, _dur = _LEASE_ACK.unpack_from(ctx.body)
    if ctx.session is None:
        raise NtStatusError(Status.USER_SESSION_DELETED)
    ctx.node.break_clock.acked_lease(ctx.conn.client_guid, key)
    result = await ctx.node.bus.ack_lease(LeaseKey(ctx.conn.client_guid, key), state)
    if result.status != Status.SUCCESS:
        raise NtStatusError(result.status)
    opens.set_lease_state(ctx.node, ctx.conn.client_guid, key, result.level, result.epoch or None)
    return Reply(Status.SUCCESS, _LEASE_ACK.pack(36, 0, 0, key, result.level, 0))
