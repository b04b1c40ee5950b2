"""Server-side copy: FSCTL_SRV_REQUEST_RESUME_KEY and FSCTL_SRV_COPYCHUNK(_WRITE).

MS-SMB2 2.2.31.1, 2.2.32.1, 2.2.32.3, 3.3.5.15.5 and 3.3.5.15.6. A resume key
names an open of this connection: its volatile id, then 16 random bytes kept on
the open (a key cannot be guessed, and dies with its handle). The copy takes
the source from any tree of the same session, so keys work across shares as on
Windows. Limits are Windows': 256 chunks of at most 1 MiB, 16 MiB per request;
a request beyond them gets STATUS_INVALID_PARAMETER with the limits in the
response. Every chunk is checked against the byte-range locks on the bus (read
on the source, write on the destination), so a lock taken through another node
stops the copy too, and the data moves with ``copy_file_range`` where the
kernel can (no copy through Python, reflinks on filesystems that have them).
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import os
import secrets
import struct
from dataclasses import dataclass

from oplock_bus.api import Operation

from ...fs.vfs import status_from_oserror
from ...protocol.constants import AccessMask, NtStatusError, Status
from .. import writetime
from ..buswait import run_bus_call
from ..context import RequestContext
from ..state import Open

MAX_CHUNKS = 256
MAX_CHUNK_SIZE = 1 << 20
MAX_TOTAL_SIZE = 16 << 20
STATUS_INVALID_VIEW_SIZE = 0xC000001F

_KEY_SIZE = 24
_RESUME_KEY_RESPONSE_SIZE = 32  # key, ContextLength, 4 bytes of (unused) context
_COPY_HEADER = struct.Struct("<24sII")  # SourceKey, ChunkCount, Reserved
_CHUNK = struct.Struct("<QQII")  # SourceOffset, TargetOffset, Length, Reserved
_RESPONSE = struct.Struct("<III")  # ChunksWritten, ChunkBytesWritten, TotalBytesWritten
RESPONSE_SIZE = _RESPONSE.size
_READ_ACCESS = AccessMask.FILE_READ_DATA | AccessMask.FILE_EXECUTE
_BUFFER = 1 << 20
# copy_file_range refuses these cases (other filesystem on older kernels, a
# filesystem without it, an overlapping range of one file): copy by hand.
_FALLBACK = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})


class CopyError(NtStatusError):
    """A failure answered with a SRV_COPYCHUNK_RESPONSE beside the status."""

    def __init__(self, status: int, response: bytes) -> None:
        super().__init__(status)
        self.response = response


def request_resume_key(op: Open, max_out: int) -> bytes:
    """FSCTL_SRV_REQUEST_RESUME_KEY: the key of the open, made at the first request."""
    if max_out < _RESUME_KEY_RESPONSE_SIZE:
        raise NtStatusError(Status.INVALID_PARAMETER, "no room for SRV_REQUEST_RESUME_KEY")
    if op.pipe is not None or op.tree.fs is None:
        raise NtStatusError(Status.INVALID_DEVICE_REQUEST)
    if not op.resume_key:
        op.resume_key = struct.pack("<Q", op.volatile_id) + secrets.token_bytes(16)
    return op.resume_key + bytes(_RESUME_KEY_RESPONSE_SIZE - _KEY_SIZE)


def _source(ctx: RequestContext, key: bytes) -> Open:
    vid = struct.unpack_from("<Q", key)[0]
    op = ctx.conn.opens.get(vid)
    if (
        op is None
        or op.closed
        or not op.resume_key
        or not hmac.compare_digest(op.resume_key, key)
        or op.tree.session is not ctx.session
    ):
        raise NtStatusError(Status.OBJECT_NAME_NOT_FOUND, "unknown resume key")
    return op


@dataclass(frozen=True, slots=True)
class Chunk:
    source_offset: int
    target_offset: int
    length: int


def limits_response() -> bytes:
    """What a request beyond the limits gets with STATUS_INVALID_PARAMETER (3.3.5.15.6.2)."""
    return _RESPONSE.pack(MAX_CHUNKS, MAX_CHUNK_SIZE, MAX_TOTAL_SIZE)


def parse_chunks(data: bytes) -> list[Chunk] | None:
    """The chunks of a SRV_COPYCHUNK_COPY, or None when it breaks a limit."""
    if len(data) < _COPY_HEADER.size:
        return None
    _key, count, _r = _COPY_HEADER.unpack_from(data)
    if count > MAX_CHUNKS or len(data) < _COPY_HEADER.size + count * _CHUNK.size:
        return None
    chunks = []
    for i in range(count):
        src, dst, length, _r = _CHUNK.unpack_from(data, _COPY_HEADER.size + i * _CHUNK.size)
        if length == 0 or length > MAX_CHUNK_SIZE:
            return None
        chunks.append(Chunk(src, dst, length))
    if sum(c.length for c in chunks) > MAX_TOTAL_SIZE:
        return None
    return chunks


async def copychunk(
    ctx: RequestContext, dest: Open, data: bytes, max_out: int, *, write_only: bool
) -> bytes:
    """FSCTL_SRV_COPYCHUNK (``write_only`` False) or FSCTL_SRV_COPYCHUNK_WRITE into ``dest``.

    Raises ``CopyError`` for failures that carry a response body.
    """
    if len(data) < _KEY_SIZE:
        if max_out < RESPONSE_SIZE:
            raise NtStatusError(Status.INVALID_PARAMETER)
        raise CopyError(Status.INVALID_PARAMETER, limits_response())
    source = _source(ctx, data[:_KEY_SIZE])
    if max_out < RESPONSE_SIZE:
        raise NtStatusError(Status.INVALID_PARAMETER, "no room for SRV_COPYCHUNK_RESPONSE")
    chunks = parse_chunks(data)
    if chunks is None:
        raise CopyError(Status.INVALID_PARAMETER, limits_response())
    if dest.pipe is not None or dest.tree.fs is None or dest.is_dir or source.is_dir:
        raise NtStatusError(Status.INVALID_DEVICE_REQUEST)
    if not source.access & _READ_ACCESS:
        raise NtStatusError(Status.ACCESS_DENIED, "source not opened for reading")
    if not dest.access & AccessMask.FILE_WRITE_DATA:
        raise NtStatusError(Status.ACCESS_DENIED, "destination not opened for writing")
    if not write_only and not dest.access & AccessMask.FILE_READ_DATA:
        # FSCTL_SRV_COPYCHUNK needs read access on the destination too (2.2.31).
        raise NtStatusError(Status.ACCESS_DENIED, "destination not opened for reading")
    if dest.tree.share.read_only:
        raise NtStatusError(Status.MEDIA_WRITE_PROTECTED)
    with source.using():
        return await _copy_chunks(ctx, source, dest, chunks)


async def _copy_chunks(ctx: RequestContext, source: Open, dest: Open, chunks: list[Chunk]) -> bytes:
    bus = ctx.node.bus
    await run_bus_call(ctx, bus.break_for(dest.file_key, dest.bus_open_id, Operation.WRITE))
    if source.closed or dest.closed:  # the connection went while the break was waited for
        raise NtStatusError(Status.FILE_CLOSED)
    # The destination's times move as a WRITE through it moves them (a stream's:
    # its base file's), not the way the kernel moves them.
    try:
        before = writetime.before_write(dest)
    except OSError as e:
        raise NtStatusError(status_from_oserror(e)) from None
    # Our own descriptors, so the worker thread never writes through a reused number.
    src_fd = os.dup(source.fd)
    try:
        dst_fd = os.dup(dest.fd)
    except OSError:
        os.close(src_fd)
        raise
    written = total = 0
    try:
        for chunk in chunks:
            status = await _check(ctx, source, dest, src_fd, chunk)
            if status == Status.SUCCESS:
                copied, error = await asyncio.to_thread(
                    _copy, src_fd, dst_fd, chunk, source.file_key == dest.file_key
                )
                if error == Status.SUCCESS and copied < chunk.length:
                    error = STATUS_INVALID_VIEW_SIZE  # the source shrank meanwhile
                if error != Status.SUCCESS:
                    total += copied
                    raise CopyError(error, _RESPONSE.pack(written, copied, total))
                written += 1
                total += copied
            else:
                raise CopyError(status, _RESPONSE.pack(written, 0, total))
    finally:
        os.close(src_fd)
        os.close(dst_fd)
        if total:
            if not dest.closed:
                writetime.after_write(dest, before)
            ctx.node.notify_change(dest.tree, dest.host_path, "modified", False)
    return _RESPONSE.pack(written, 0, total)


async def _check(ctx: RequestContext, source: Open, dest: Open, src_fd: int, c: Chunk) -> int:
    """SUCCESS, or why this chunk cannot be copied."""
    try:
        size = os.fstat(src_fd).st_size
    except OSError as e:
        return status_from_oserror(e)
    if c.source_offset + c.length > size:
        return STATUS_INVALID_VIEW_SIZE  # Windows and Samba: reading past the end of file
    bus = ctx.node.bus
    if not await bus.check_io(source.file_key, source.bus_open_id, c.source_offset, c.length,
                              False):  # fmt: skip
        return Status.FILE_LOCK_CONFLICT
    if not await bus.check_io(dest.file_key, dest.bus_open_id, c.target_offset, c.length, True):
        return Status.FILE_LOCK_CONFLICT
    return Status.SUCCESS


def _copy(src: int, dst: int, c: Chunk, same_file: bool) -> tuple[int, int]:
    """Copy one chunk: (bytes copied, SUCCESS or the NTSTATUS of the failure)."""
    done = 0
    try:
        overlap = same_file and (
            c.source_offset < c.target_offset + c.length
            and c.target_offset < c.source_offset + c.length
        )
        if not overlap:
            done = _copy_file_range(src, dst, c, done)
        while done < c.length:
            # Whole chunk read before it is written: an overlapping target reads
            # the source as it was (smbtorture copy_chunk_src_is_dest_overlap).
            data = os.pread(src, min(c.length - done, _BUFFER if not overlap else c.length),
                            c.source_offset + done)  # fmt: skip
            if not data:
                break
            view = memoryview(data)
            while view:
                n = os.pwrite(dst, view, c.target_offset + done)
                view = view[n:]
                done += n
    except OSError as e:
        return done, status_from_oserror(e)
    return done, Status.SUCCESS


def _copy_file_range(src: int, dst: int, c: Chunk, done: int) -> int:
    """Copy in the kernel as far as it goes; the caller copies what is left."""
    try:
        while done < c.length:
            n = os.copy_file_range(
                src, dst, c.length - done, c.source_offset + done, c.target_offset + done
            )
            if n == 0:
                break
            done += n
    except OSError as e:
        if e.errno not in _FALLBACK:
            raise
    return done
