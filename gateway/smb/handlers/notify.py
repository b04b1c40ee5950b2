"""CHANGE_NOTIFY (MS-SMB2 2.2.35-2.2.36, 3.3.5.19)."""

from __future__ import annotations

import struct

from ...protocol.constants import AccessMask, NtStatusError, Status
from ...protocol.wire import check_size
from ..context import Reply, RequestContext
from ..notify import Watch, share_path
from ..state import Open

_REQ = struct.Struct("<HHIQQII")
_RESP = struct.Struct("<HHI")
WATCH_TREE = 0x0001


async def handle_change_notify(ctx: RequestContext) -> Reply:
    check_size(ctx.body, 32, 32)
    _s, flags, out_len, _p, _v, completion_filter, _r = _REQ.unpack_from(ctx.body)
    if out_len > ctx.node.config.max_io_size:
        raise NtStatusError(Status.INVALID_PARAMETER)
    ctx.check_payload(out_len)
    op = ctx.open_at(8)
    watch = op.notify
    if watch is None:
        watch = _new_watch(ctx, op, bool(flags & WATCH_TREE), completion_filter, out_len)
    if watch.ready():
        status, data = watch.take(out_len)
    elif ctx.related_follows:
        # The related requests after it would wait for a change that may never
        # come; Windows fails such a request instead (smb2.compound.interim2).
        raise NtStatusError(Status.INTERNAL_ERROR)
    else:
        waiter = watch.wait(out_len)
        ctx.go_async()
        try:
            status, data = await waiter
        finally:
            watch.forget(waiter)
    if status != Status.SUCCESS:
        return Reply(status)  # the error body has this response's shape, with no data
    return Reply(Status.SUCCESS, _RESP.pack(9, 64 + 8, len(data)) + data)


def _new_watch(
    ctx: RequestContext, op: Open, recursive: bool, completion_filter: int, out_len: int
) -> Watch:
    fs = op.tree.fs
    if not op.is_dir or fs is None:
        raise NtStatusError(Status.INVALID_PARAMETER)
    if not op.access & AccessMask.FILE_READ_DATA:  # FILE_LIST_DIRECTORY
        raise NtStatusError(Status.ACCESS_DENIED)
    directory = share_path(fs.root, op.host_path)
    if directory is None:
        raise NtStatusError(Status.INVALID_PARAMETER)
    share = op.tree.share.name
    watch = ctx.node.notify_hub.watch(share, directory, recursive, completion_filter, out_len)
    op.notify = watch
    return watch
