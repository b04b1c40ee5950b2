"""READ, WRITE and FLUSH (MS-SMB2 2.2.17-2.2.22, 3.3.5.11-3.3.5.13)."""

from __future__ import annotations

import os
import struct

from oplock_bus.api import Operation

from ...fs.vfs import status_from_oserror
from ...protocol.constants import AccessMask, NtStatusError, Status
from ...protocol.wire import check_size
from .. import writetime
from ..buswait import run_bus_call
from ..context import Reply, RequestContext
from ..state import Open

_READ_REQ = struct.Struct("<HBBIQQQIIIHH")
_READ_RESP = struct.Struct("<HBBIII")
_WRITE_REQ = struct.Struct("<HHIQQQIIHHI")
_WRITE_RESP = struct.Struct("<HHIIHH")
_READ_ACCESS = AccessMask.FILE_READ_DATA | AccessMask.FILE_EXECUTE
_WRITE_ACCESS = AccessMask.FILE_WRITE_DATA | AccessMask.FILE_APPEND_DATA
_MAX_OFFSET = 0x7FFFFFFFFFFFFFFF
_MAX_FILE_SIZE = 0xFFFFFFF0000


def _data_open(ctx: RequestContext, offset: int) -> Open:
    op = ctx.open_at(offset)
    if op.is_dir:
        raise NtStatusError(Status.INVALID_DEVICE_REQUEST)
    return op


async def handle_read(ctx: RequestContext) -> Reply:
    body = ctx.body
    check_size(body, 48, 49)
    (_s, _pad, _flags, length, offset, _p, _v, minimum, _chan, _rem, _co, _cl) = (
        _READ_REQ.unpack_from(body)
    )
    op = _data_open(ctx, 16)
    if length > ctx.node.config.max_io_size:
        raise NtStatusError(Status.INVALID_PARAMETER, "read larger than MaxReadSize")
    ctx.check_payload(length)
    if op.pipe is not None:
        data = op.pipe.read(length)
        if not data:
            raise NtStatusError(Status.END_OF_FILE)
        # More of the same RPC message waits: the client must read again.
        status = Status.BUFFER_OVERFLOW if op.pipe.pending() else Status.SUCCESS
        return Reply(status, _READ_RESP.pack(17, 0x50, 0, len(data), 0, 0) + data)
    if not op.access & _READ_ACCESS:
        raise NtStatusError(Status.ACCESS_DENIED)
    if offset > _MAX_OFFSET or offset + length > _MAX_OFFSET:
        raise NtStatusError(Status.INVALID_PARAMETER)
    if length and not await ctx.node.bus.check_io(
        op.file_key, op.bus_open_id, offset, length, False
    ):
        raise NtStatusError(Status.FILE_LOCK_CONFLICT)
    pad = ctx.conn.read_body_padding
    start = _READ_RESP.size + pad
    # The data is read once, behind the room its response fields take, and
    # the reply is sent from this buffer (gateway.protocol.wire.encode_parts).
    out = bytearray(start + length)
    try:
        got = os.preadv(op.fd, [memoryview(out)[start:]], offset) if length else 0
    except OSError as e:
        raise NtStatusError(status_from_oserror(e)) from None
    if (length and not got) or got < minimum:
        raise NtStatusError(Status.END_OF_FILE)
    if got < length:
        del out[start + got :]
    op.position = offset + got  # FilePositionInformation follows reads
    _READ_RESP.pack_into(out, 0, 17, 0x50 + pad, 0, got, 0, 0)
    return Reply(Status.SUCCESS, out)


async def handle_write(ctx: RequestContext) -> Reply:
    body = ctx.body
    check_size(body, 48, 49)
    (_s, data_off, length, offset, _p, _v, _chan, _rem, _co, _cl, _flags) = _WRITE_REQ.unpack_from(
        body
    )
    start = data_off - 64
    if length and (start < 48 or start + length > len(body)):
        raise NtStatusError(Status.INVALID_PARAMETER, "write data outside the message")
    if length > ctx.node.config.max_io_size:
        raise NtStatusError(Status.INVALID_PARAMETER, "write larger than MaxWriteSize")
    ctx.check_payload(length)
    op = _data_open(ctx, 16)
    data = memoryview(body)[start : start + length]
    if op.pipe is not None:
        op.pipe.write(bytes(data))
        return Reply(Status.SUCCESS, _WRITE_RESP.pack(17, 0, length, 0, 0, 0))
    if op.snapshot is not None:  # granted no write access, but answered as smbd does
        raise NtStatusError(Status.MEDIA_WRITE_PROTECTED, "a previous version")
    if not op.access & _WRITE_ACCESS:
        raise NtStatusError(Status.ACCESS_DENIED)
    if op.tree.share.read_only:
        raise NtStatusError(Status.MEDIA_WRITE_PROTECTED)
    if not op.access & AccessMask.FILE_WRITE_DATA:
        # FILE_APPEND_DATA alone writes at the end of the file, whatever the
        # offset asked (NtWriteFile; Windows, as Wine's tests check it).
        offset = os.fstat(op.fd).st_size
    elif offset > _MAX_OFFSET or (length and offset + length > _MAX_FILE_SIZE):
        # Samba's limit too: offsets past MAXFILESIZE are refused, not DISK_FULL.
        raise NtStatusError(Status.INVALID_PARAMETER)
    bus = ctx.node.bus
    if length and not await bus.check_io(op.file_key, op.bus_open_id, offset, length, True):
        raise NtStatusError(Status.FILE_LOCK_CONFLICT)
    await run_bus_call(ctx, bus.break_for(op.file_key, op.bus_open_id, Operation.WRITE))
    try:
        written = writetime.write(op, data, offset) if length else 0
    except OSError as e:
        raise NtStatusError(status_from_oserror(e)) from None
    ctx.node.notify_change(op.tree, op.host_path, "modified", False)
    return Reply(Status.SUCCESS, _WRITE_RESP.pack(17, 0, written, 0, 0, 0))


async def handle_flush(ctx: RequestContext) -> Reply:
    check_size(ctx.body, 24, 24)
    op = ctx.open_at(8)
    if op.pipe is None and not op.is_dir:
        if not op.access & (_WRITE_ACCESS):
            raise NtStatusError(Status.ACCESS_DENIED)
        try:
            os.fsync(op.fd)
            writetime.update_now(op)
        except OSError as e:
            raise NtStatusError(status_from_oserror(e)) from None
    return Reply(Status.SUCCESS, struct.pack("<HH", 4, 0))
