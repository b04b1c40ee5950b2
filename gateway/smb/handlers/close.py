"""CLOSE (MS-SMB2 2.2.15-2.2.16, 3.3.5.10)."""

from __future__ import annotations

import asyncio
import struct

from ...protocol.constants import CloseFlags, NtStatusError, Status
from ...protocol.fileinfo import FileInfo
from ...protocol.wire import check_size
from .. import opens, streams, writetime
from ..context import Reply, RequestContext

_CLOSE_RESP = struct.Struct("<HHIQQQQQQI")


async def handle_close(ctx: RequestContext) -> Reply:
    check_size(ctx.body, 24, 24)
    flags = struct.unpack_from("<H", ctx.body, 2)[0]
    op = ctx.open_at(8)
    if op.busy:
        # Requests still using the handle finish first (Samba bug 14769).
        ctx.go_async()
        await asyncio.wait(set(op.busy))
        if op.closed:
            raise NtStatusError(Status.FILE_CLOSED)
    info: FileInfo | None = None
    if flags & CloseFlags.POSTQUERY_ATTRIB and op.fd >= 0 and op.tree.fs is not None:
        writetime.closing(op)  # the times answered are those the file keeps
        try:
            info = streams.stat_open(op.tree.fs, op)
        except OSError:
            info = None
    await opens.close(ctx.node, op)
    if info is None:
        body = _CLOSE_RESP.pack(60, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    else:
        body = _CLOSE_RESP.pack(
            60, CloseFlags.POSTQUERY_ATTRIB, 0, info.creation_time, info.last_access_time,
            info.last_write_time, info.change_time, info.allocation_size, info.size,
            info.attributes,
        )  # fmt: skip
    return Reply(Status.SUCCESS, body)
