"""CHANGE_NOTIFY (MS-SMB2 2.2.35-2.2.36, 3.3.5.19)."""

from __future__ import annotations

import asyncio
import struct

from ..context import Reply, RequestContext
from ..notify import Watch
from ..protocol.constants import AccessMask, NtStatusError, Status
from ..protocol.wire import check_size

_REQ = struct.Struct("<HHIQQII")
_RESP = struct.Struct("<HHI")
WATCH_TREE = 0x0001


async def handle_change_notify(ctx: RequestContext) -> Reply:
    check_size(ctx.body, 32, 32)
    _s, flags, out_len, _p, _v, completion_filter, _r = _REQ.unpack_from(ctx.body)
    op = ctx.open_at(8)
    if not op.is_dir:
        raise NtStatusError(Status.INVALID_PARAMETER)
    if not op.access & AccessMask.FILE_READ_DATA:
        raise NtStatusError(Status.ACCESS_DENIED)
    if out_len > ctx.node.config.max_io_size:
        raise NtStatusError(Status.INVALID_PARAMETER)
    watch = op.notify
    if watch is None:
        watch = Watch(op.host_path, bool(flags & WATCH_TREE), completion_filter, out_len)
        op.notify = watch
        ctx.node.notify_hub.add(watch)
    else:
        watch.max_output = out_len
    if watch.changes or watch.overflowed:
        status, data = watch.take()
    else:
        watch.waiter = asyncio.get_running_loop().create_future()
        ctx.go_async()
        try:
            status, data = await watch.waiter
        finally:
            watch.waiter = None
    if status != Status.SUCCESS:
        return Reply(status)  # the error body has this response's shape, with no data
    return Reply(Status.SUCCESS, _RESP.pack(9, 64 + 8, len(data)) + data)
