"""Sparse files: FSCTL_SET_SPARSE, FSCTL_SET_ZERO_DATA, FSCTL_QUERY_ALLOCATED_RANGES,
and FSCTL_FILE_LEVEL_TRIM, which gives ranges back the same way.

MS-FSCC 2.3.13/2.3.34/2.3.57/2.3.64 give the buffers, MS-FSA 2.1.5.10 the
semantics. The SPARSE attribute lives on the volume (a flag of the DOS xattr,
``ShareFS.set_sparse``), so every node shows it. The data side is the host
filesystem's own: zeroing a range of a sparse file punches a hole
(``fallocate(PUNCH_HOLE)``), zeroing a range of a non-sparse file keeps it
allocated (``FALLOC_FL_ZERO_RANGE``, or written zeros where that is missing),
clearing the attribute allocates the holes again, and the allocated ranges of a
sparse file are what ``SEEK_DATA``/``SEEK_HOLE`` find. A non-sparse file is
reported fully allocated up to its end, as NTFS does. A trimmed range's content
is undefined (MS-FSCC): its whole pages are zeroed the way ZERO_DATA does it,
and left as they are where the filesystem cannot deallocate.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import struct
from typing import Any

from oplock_bus.api import Operation

from ...fs.vfs import ShareFS, status_from_oserror
from ...protocol.constants import (
    AccessMask,
    CompletionFilter,
    FileAttributes,
    NtStatusError,
    Status,
)
from ...protocol.infoclass import FILE_SUPPORTS_SPARSE_FILES
from ..buswait import run_bus_call
from ..context import RequestContext
from ..state import Open

log = logging.getLogger(__name__)

_RANGE = struct.Struct("<qq")  # FILE_ALLOCATED_RANGE_BUFFER / FILE_ZERO_DATA_INFORMATION
_MAX_OFFSET = 0x7FFFFFFFFFFFFFFF
_SET_SPARSE_ACCESS = (
    AccessMask.FILE_WRITE_DATA | AccessMask.FILE_APPEND_DATA | AccessMask.FILE_WRITE_ATTRIBUTES
)
_ZERO_CHUNK = 1 << 20
_TRIM = struct.Struct("<II")  # Key, NumRanges
_TRIM_RANGE = struct.Struct("<QQ")  # Offset, Length
_TRIM_OUTPUT = struct.Struct("<I")  # NumRangesProcessed
_PAGE = 4096
_U64 = 1 << 64
STATUS_INTEGER_OVERFLOW = 0xC0000095

# fallocate(2) is not in os; mode bits from linux/falloc.h.
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
_fallocate: Any
try:
    _fallocate = ctypes.CDLL(None, use_errno=True).fallocate
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    _fallocate.restype = ctypes.c_int
except (OSError, AttributeError):  # pragma: no cover - no fallocate in this libc
    _fallocate = None


def fs_attributes(fs: ShareFS) -> int:
    """FileFsAttributeInformation bits of sparse support: only where the flag can be kept."""
    return FILE_SUPPORTS_SPARSE_FILES if fs.keeps_xattrs else 0


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2); OSError(EOPNOTSUPP) where the C library has none."""
    if _fallocate is None:
        raise OSError(errno.EOPNOTSUPP, "fallocate is not available")
    if _fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _unsupported(e: OSError) -> bool:
    return e.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def is_sparse(fs: ShareFS, op: Open) -> bool:
    return bool(fs.stat_fd(op.fd).attributes & FileAttributes.SPARSE_FILE)


def _fs(op: Open) -> ShareFS:
    if op.tree.fs is None or op.pipe is not None:
        raise NtStatusError(Status.INVALID_DEVICE_REQUEST)
    return op.tree.fs


async def set_sparse(ctx: RequestContext, op: Open, data: bytes) -> bytes:
    """FSCTL_SET_SPARSE: no buffer means TRUE; a longer buffer is accepted (Windows)."""
    fs = _fs(op)
    if op.is_dir:
        raise NtStatusError(Status.INVALID_PARAMETER, "a directory cannot be sparse")
    if not op.access & _SET_SPARSE_ACCESS:
        raise NtStatusError(Status.ACCESS_DENIED)
    if op.tree.share.read_only:
        raise NtStatusError(Status.MEDIA_WRITE_PROTECTED)
    want = data[0] != 0 if data else True
    if is_sparse(fs, op) == want:
        return b""
    fs.set_sparse(op.fd, want)
    if not want:
        _fill_holes(op)
    ctx.node.notify_change(op.tree, op.host_path, "modified", False, CompletionFilter.ATTRIBUTES)
    return b""


def _fill_holes(op: Open) -> None:
    """Allocate the holes of a file that stops being sparse (best effort: the
    data reads the same either way, and a full volume must not fail the FSCTL)."""
    fd = op.fd
    reopened = -1
    try:
        size = os.fstat(fd).st_size
        if not size:
            return
        try:
            fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, size)
        except OSError as e:
            if e.errno != errno.EBADF:
                raise
            # Opened without write access (SET_SPARSE needs only WRITE_ATTRIBUTES).
            reopened = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_CLOEXEC)
            fallocate(reopened, FALLOC_FL_KEEP_SIZE, 0, size)
    except OSError as e:
        log.debug("holes of %s not allocated: %s", op.host_path, e)
    finally:
        if reopened >= 0:
            os.close(reopened)


def _range_request(op: Open, data: bytes, access: int) -> tuple[ShareFS, int, int]:
    """The share and the two signed 64-bit numbers of a FILE_ZERO_DATA_INFORMATION or
    FILE_ALLOCATED_RANGE_BUFFER, after the access the control needs (MS-FSA 2.1.5.10)."""
    fs = _fs(op)
    if not op.access & access:
        raise NtStatusError(Status.ACCESS_DENIED)
    if len(data) < _RANGE.size:
        raise NtStatusError(Status.INVALID_PARAMETER, "short range buffer")
    first, second = _RANGE.unpack_from(data)
    if op.is_dir or first < 0 or second < 0:
        raise NtStatusError(Status.INVALID_PARAMETER)
    return fs, first, second


async def set_zero_data(ctx: RequestContext, op: Open, data: bytes) -> bytes:
    """FSCTL_SET_ZERO_DATA: zero [FileOffset, BeyondFinalZero) without changing the size."""
    fs, start, end = _range_request(op, data, AccessMask.FILE_WRITE_DATA)
    if start > end:
        raise NtStatusError(Status.INVALID_PARAMETER, "FileOffset past BeyondFinalZero")
    if op.tree.share.read_only:
        raise NtStatusError(Status.MEDIA_WRITE_PROTECTED)
    if start == end:
        return b""
    bus = ctx.node.bus
    if not await bus.check_io(op.file_key, op.bus_open_id, start, end - start, True):
        raise NtStatusError(Status.FILE_LOCK_CONFLICT)
    await run_bus_call(ctx, bus.break_for(op.file_key, op.bus_open_id, Operation.WRITE))
    sparse = is_sparse(fs, op)
    try:
        end = min(end, os.fstat(op.fd).st_size)
        if start < end:
            zero_range(op.fd, start, end, punch=sparse)
    except OSError as e:
        raise NtStatusError(status_from_oserror(e)) from None
    ctx.node.notify_change(op.tree, op.host_path, "modified", False)
    return b""


def zero_range(fd: int, start: int, end: int, *, punch: bool) -> None:
    """Zero [start, end) inside the file: a hole if ``punch``, else allocated zeros."""
    mode = FALLOC_FL_KEEP_SIZE | (FALLOC_FL_PUNCH_HOLE if punch else FALLOC_FL_ZERO_RANGE)
    try:
        fallocate(fd, mode, start, end - start)
        return
    except OSError as e:
        if not _unsupported(e):
            raise
    zeros = bytes(min(_ZERO_CHUNK, end - start))
    pos = start
    while pos < end:
        pos += os.pwrite(fd, zeros[: end - pos], pos)


async def query_allocated_ranges(op: Open, data: bytes, max_out: int) -> tuple[bytes, int]:
    """FSCTL_QUERY_ALLOCATED_RANGES: (ranges that fit, SUCCESS or BUFFER_OVERFLOW)."""
    fs, offset, length = _range_request(op, data, AccessMask.FILE_READ_DATA)
    if offset + length > _MAX_OFFSET:
        raise NtStatusError(Status.INVALID_PARAMETER, "range past the largest offset")
    try:
        ranges = allocated_ranges(op.fd, offset, length, sparse=is_sparse(fs, op))
    except OSError as e:
        raise NtStatusError(status_from_oserror(e)) from None
    if not ranges:
        return b"", Status.SUCCESS
    fit = max_out // _RANGE.size
    if fit == 0:
        raise NtStatusError(Status.BUFFER_TOO_SMALL)
    out = b"".join(_RANGE.pack(o, n) for o, n in ranges[:fit])
    return out, Status.SUCCESS if fit >= len(ranges) else Status.BUFFER_OVERFLOW


def allocated_ranges(fd: int, offset: int, length: int, *, sparse: bool) -> list[tuple[int, int]]:
    """The allocated (offset, length) ranges of [offset, offset + length), cut at the end
    of file; a non-sparse file is one allocated range."""
    end = min(offset + length, os.fstat(fd).st_size)
    if offset >= end:
        return []
    if not sparse:
        return [(offset, end - offset)]
    ranges: list[tuple[int, int]] = []
    pos = offset
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole up to the end of file
                break
            raise
        if data >= end:
            break
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        ranges.append((data, min(hole, end) - data))
        pos = hole
    return ranges


async def file_level_trim(ctx: RequestContext, op: Open, data: bytes, max_out: int) -> bytes:
    """FSCTL_FILE_LEVEL_TRIM: the storage need not keep these ranges (MS-FSA 2.1.5.10.6)."""
    fs = _fs(op)
    if not op.access & AccessMask.FILE_WRITE_DATA:
        raise NtStatusError(Status.ACCESS_DENIED)
    if op.is_dir or len(data) < _TRIM.size or max_out < _TRIM_OUTPUT.size:
        raise NtStatusError(Status.INVALID_PARAMETER)
    _key, count = _TRIM.unpack_from(data)
    if count == 0 or len(data) < _TRIM.size + count * _TRIM_RANGE.size:
        raise NtStatusError(Status.INVALID_PARAMETER, "no or truncated FILE_LEVEL_TRIM_RANGEs")
    ranges = [
        _TRIM_RANGE.unpack_from(data, _TRIM.size + i * _TRIM_RANGE.size) for i in range(count)
    ]
    if any(offset + length >= _U64 for offset, length in ranges):
        raise NtStatusError(STATUS_INTEGER_OVERFLOW)
    if op.tree.share.read_only:
        raise NtStatusError(Status.MEDIA_WRITE_PROTECTED)
    bus = ctx.node.bus
    for offset, length in ranges:
        if length and not await bus.check_io(op.file_key, op.bus_open_id, offset, length, True):
            raise NtStatusError(Status.FILE_LOCK_CONFLICT)
    await run_bus_call(ctx, bus.break_for(op.file_key, op.bus_open_id, Operation.WRITE))
    punch = FALLOC_FL_PUNCH_HOLE if is_sparse(fs, op) else FALLOC_FL_ZERO_RANGE
    try:
        size = os.fstat(op.fd).st_size
        for offset, length in ranges:
            # Whole pages only, as NTFS trims them.
            start = -(-offset // _PAGE) * _PAGE
            end = min((offset + length) // _PAGE * _PAGE, size)
            if start < end:
                try:
                    fallocate(op.fd, FALLOC_FL_KEEP_SIZE | punch, start, end - start)
                except OSError as e:
                    if not _unsupported(e):
                        raise
    except OSError as e:
        raise NtStatusError(status_from_oserror(e)) from None
    ctx.node.notify_change(op.tree, op.host_path, "modified", False)
    return _TRIM_OUTPUT.pack(count)
