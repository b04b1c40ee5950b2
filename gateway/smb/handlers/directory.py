"""QUERY_DIRECTORY (MS-SMB2 2.2.33-2.2.34, 3.3.5.18).

A pattern is at most 255 characters, a name component's length on NTFS
(OBJECT_NAME_INVALID beyond): the matcher's cost grows with the pattern, and
a client sent 8,000 characters of stars to freeze the node. A large listing
is matched off the event loop, so one client's query does not stall the rest.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import struct
import time
from collections.abc import Callable, Iterator

from ...fs import snapshots
from ...fs.vfs import ShareFS, compile_pattern
from ...protocol import infoclass
from ...protocol.constants import AccessMask, NtStatusError, QueryDirectoryFlags, Status
from ...protocol.fileinfo import FileInfo
from ...protocol.wire import check_size
from ..context import Reply, RequestContext

_REQ = struct.Struct("<HBBIQQHHI")
MAX_PATTERN = 255
_MATCH_INLINE = 512  # entries matched on the event loop; a larger listing goes to a thread
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
    ctx.check_payload(out_len)
    if out_len == 0 or out_len > ctx.node.config.max_io_size:
        raise NtStatusError(Status.INVALID_PARAMETER)
    pattern = "*"
    if name_len:
        start = name_off - 64
        if start < 32 or start + name_len > len(body) or name_len % 2:
            raise NtStatusError(Status.INVALID_PARAMETER)
        pattern = body[start : start + name_len].decode("utf-16-le", "replace")
        if len(pattern) > MAX_PATTERN:
            raise NtStatusError(Status.OBJECT_NAME_INVALID, "pattern longer than a name")
    restart = flags & (QueryDirectoryFlags.RESTART_SCANS | QueryDirectoryFlags.REOPEN)
    first = op.dir_entries is None or bool(restart)
    if first:
        listing = op.tree.fs.listdir(op.host_path)
        folder = op.tree.share.snapshots
        if folder is not None:  # the previous versions are no part of the tree
            hidden = snapshots.of_share(op.tree.fs, folder).hidden_names(op.host_path)
            listing = [entry for entry in listing if entry[0] not in hidden]
        match = compile_pattern(pattern)
        if len(listing) > _MATCH_INLINE:
            op.dir_entries = await asyncio.to_thread(_matching, listing, match)
        else:
            op.dir_entries = _matching(listing, match)
        op.dir_pattern = pattern
        op.dir_index = 0
    entries = op.dir_entries or []
    positions: list[int] = []
    remaining: Iterator[tuple[str, FileInfo]] = _entries_from(
        op.tree.fs, op.host_path, entries, op.dir_index, positions, refresh=not first
    )
    if flags & QueryDirectoryFlags.RETURN_SINGLE_ENTRY:
        remaining = itertools.islice(remaining, 1)
    data, count = infoclass.pack_directory(info_class, remaining, out_len)
    if not positions:
        if first:
            raise NtStatusError(Status.NO_SUCH_FILE)
        raise NtStatusError(Status.NO_MORE_FILES)
    if count == 0:
        raise NtStatusError(Status.INFO_LENGTH_MISMATCH)
    op.dir_index = positions[count - 1] + 1
    return Reply(Status.SUCCESS, _RESP.pack(9, 64 + 8, len(data)) + data)


_YIELD_EVERY = 32


def _matching(
    listing: list[tuple[str, FileInfo]], match: Callable[[str], bool]
) -> list[tuple[str, FileInfo]]:
    found = []
    for i, entry in enumerate(listing):
        if match(entry[0]):
            found.append(entry)
        if i % _YIELD_EVERY == _YIELD_EVERY - 1:
            # Off the event loop, but under the same GIL: hand it back now
            # and then rather than hold it for whole switch intervals, so the
            # other clients' requests keep their latency (a costly pattern
            # costs a name tens of microseconds).
            time.sleep(0)
    return found


def _entries_from(
    fs: ShareFS,
    directory: str,
    entries: list[tuple[str, FileInfo]],
    start: int,
    positions: list[int],
    *,
    refresh: bool,
) -> Iterator[tuple[str, FileInfo]]:
    """The listed entries from ``start`` on, appending the index of each one given.

    A listing resumed by a later query shows the directory as it is now: an
    entry deleted since the first query is left out and the others carry
    their current metadata (smb2.dir.fixed), as NTFS and Samba do.
    """
    for pos in range(start, len(entries)):
        name, info = entries[pos]
        if refresh and name not in (".", ".."):
            fresh = fs.listed_entry(os.path.join(directory, name))
            if fresh is None:
                continue
            info = fresh
        positions.append(pos)
        yield name, info
