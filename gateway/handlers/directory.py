"""QUERY_DIRECTORY (MS-SMB2 2.2.33-2.2.34, 3.3.5.18)."""

from __future__ import annotations

import struct

from ..context import Reply, RequestContext
from ..protocol import infoclass
from ..protocol.constants import AccessMask, NtStatusError, QueryDirectoryFlags, Status
from ..protocol.wire import check_size
from ..vfs import wildcard_match

_REQ = struct.Struct("<HBBIQQHHI")
_RESP = struct.Struct("<HHI")


async def handle_query_directory(ctx: RequestContext) -> Reply:
    body = ctx.body
    check_size(body, 32, 33)
    _s, info_class, flags, _index, _p, _v, name_off, name_len, out_len = _REQ.unpack_from(body)
    op = ctx.open_at(8)
    if not op.is_dir or op.tree.fs is None:
        raise NtStatusError(Status.INVALID_PARAMETER)
    if not op.access & AccessMask.FILE_READ_DATA:
        raise NtStatusError(Status.ACCESS_DENIED)
    if info_class not in infoclass.DIRECTORY_CLASSES:
        raise NtStatusError(Status.INVALID_INFO_CLASS)
    if out_len == 0 or out_len > ctx.node.config.max_io_size:
        raise NtStatusError(Status.INVALID_PARAMETER)
    pattern = "*"
    if name_len:
        start = name_off - 64
        if start < 32 or start + name_len > len(body) or name_len % 2:
            raise NtStatusError(Status.INVALID_PARAMETER)
        pattern = body[start : start + name_len].decode("utf-16-le", "replace")
    restart = flags & (QueryDirectoryFlags.RESTART_SCANS | QueryDirectoryFlags.REOPEN)
    first = op.dir_entries is None or bool(restart)
    if first:
        listing = op.tree.fs.listdir(op.host_path)
        op.dir_entries = [e for e in listing if wildcard_match(pattern, e[0])]
        op.dir_pattern = pattern
        op.dir_index = 0
    entries = op.dir_entries or []
    remaining = entries[op.dir_index :]
    if not remaining:
        if first:
            raise NtStatusError(Status.NO_SUCH_FILE)
        raise NtStatusError(Status.NO_MORE_FILES)
    if flags & QueryDirectoryFlags.RETURN_SINGLE_ENTRY:
        remaining = remaining[:1]
    data, count = infoclass.pack_directory(info_class, remaining, out_len)
    if count == 0:
        raise NtStatusError(Status.INFO_LENGTH_MISMATCH)
    op.dir_index += count
    return Reply(Status.SUCCESS, _RESP.pack(9, 64 + 8, len(data)) + data)
