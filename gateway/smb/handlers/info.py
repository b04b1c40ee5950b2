"""QUERY_INFO and SET_INFO (MS-SMB2 2.2.37-2.2.40, 3.3.5.20-3.3.5.21)."""

from __future__ import annotations

import os
import struct

from oplock_bus.api import Operation

from ...fs import eas
from ...fs.vfs import status_from_oserror
from ...protocol import infoclass
from ...protocol.constants import (
    AccessMask,
    CompletionFilter,
    Dialect,
    FileAttributes,
    FileInfoClass,
    InfoType,
    NtStatusError,
    Status,
)
from ...protocol.fileinfo import FileInfo
from ...protocol.wire import check_size
from .. import security, streams, writetime
from ..buswait import run_bus_call
from ..context import Reply, RequestContext
from ..notify import basic_info_mask
from ..state import Open
from . import sparse

_QUERY = struct.Struct("<HBBIHHIIIQQ")
_QUERY_RESP = struct.Struct("<HHI")
_SET = struct.Struct("<HBBIHHIQQ")
_SET_RESP = struct.pack("<H", 2)

# Classes any handle may query (MS-FSA 2.1.5.11; smbtorture smb2.getinfo.getinfo_access);
# the others need FILE_READ_ATTRIBUTES, FileFullEaInformation FILE_READ_EA.
_UNRESTRICTED = frozenset({
    FileInfoClass.NAME, FileInfoClass.ACCESS, FileInfoClass.POSITION, FileInfoClass.MODE,
    FileInfoClass.ALIGNMENT, FileInfoClass.NORMALIZED_NAME, FileInfoClass.INTERNAL,
    FileInfoClass.EA, FileInfoClass.STANDARD, FileInfoClass.STREAM,
    FileInfoClass.ALTERNATE_NAME, FileInfoClass.COMPRESSION,
})  # fmt: skip


async def handle_query_info(ctx: RequestContext) -> Reply:
    body = ctx.body
    check_size(body, 40, 41)
    (_s, info_type, info_class, out_len, in_off, _r, in_len, additional, flags, _p, _v) = (
        _QUERY.unpack_from(body)
    )
    op = ctx.open_at(24)
    ctx.check_payload(max(out_len, in_len))
    if out_len > ctx.node.config.max_io_size:
        raise NtStatusError(Status.INVALID_PARAMETER)
    if info_type == InfoType.FILE:
        if (
            info_class == FileInfoClass.NORMALIZED_NAME
            and ctx.conn.codec.dialect < Dialect.SMB3_1_1
        ):
            raise NtStatusError(Status.NOT_SUPPORTED)  # 3.1.1 only (MS-SMB2 3.3.5.20.1)
        if info_class == FileInfoClass.FULL_EA:
            start = in_off - 64
            if in_len and (start < 40 or start + in_len > len(body)):
                raise NtStatusError(Status.INVALID_PARAMETER)
            status, data = _query_eas(op, bytes(body[start : start + in_len]), flags, out_len)
            return Reply(status, _QUERY_RESP.pack(9, 64 + 8, len(data)) + data)
        status, data = infoclass.fit_file_output(info_class, _file_info(op, info_class), out_len)
        return Reply(status, _QUERY_RESP.pack(9, 64 + 8, len(data)) + data)
    elif info_type == InfoType.FILESYSTEM:
        status, data = infoclass.fit_fs_output(info_class, _fs_info(ctx, op, info_class), out_len)
        return Reply(status, _QUERY_RESP.pack(9, 64 + 8, len(data)) + data)
    elif info_type == InfoType.SECURITY:
        if op.pipe is not None:
            raise NtStatusError(Status.INVALID_PARAMETER)
        data = security.query_security(op, additional)
        if len(data) > out_len:
            return Reply(Status.BUFFER_TOO_SMALL, _QUERY_RESP.pack(9, 64 + 8, 4) +
                         struct.pack("<I", len(data)))  # fmt: skip
    elif info_type == InfoType.QUOTA:
        raise NtStatusError(Status.NOT_SUPPORTED)
    else:
        raise NtStatusError(Status.INVALID_PARAMETER)
    return Reply(Status.SUCCESS, _QUERY_RESP.pack(9, 64 + 8, len(data)) + data)


def _stat(op: Open) -> FileInfo:
    fs = op.tree.fs
    if fs is None:
        raise NtStatusError(Status.INVALID_PARAMETER)
    try:
        return streams.stat_open(fs, op)
    except OSError as e:
        raise NtStatusError(status_from_oserror(e)) from None


def _file_info(op: Open, info_class: int) -> bytes:
    if op.pipe is not None:
        if info_class == FileInfoClass.STANDARD:
            return infoclass.file_standard(None, delete_pending=False, directory=False)
        raise NtStatusError(Status.INVALID_PARAMETER)
    if info_class == FileInfoClass.FULL_EA:
        _require(op, AccessMask.FILE_READ_EA)
    elif info_class not in _UNRESTRICTED:
        _require(op, AccessMask.FILE_READ_ATTRIBUTES)
    if info_class == FileInfoClass.STREAM:
        try:
            return streams.stream_information(op)
        except OSError as e:
            raise NtStatusError(status_from_oserror(e)) from None
    info = _stat(op)
    if info_class == FileInfoClass.NORMALIZED_NAME:
        name = _normalized_name(op)
    else:
        name = "\\" + op.smb_name if op.smb_name else "\\"
    ea_size = 0
    if info_class in (FileInfoClass.EA, FileInfoClass.ALL):
        ea_size = eas.ea_size(_read_eas(op))
    return infoclass.query_file_info(
        info_class,
        info,
        name=name,
        delete_pending=op.delete_on_close,
        access=op.access,
        position=op.position,
        mode=op.mode,
        ea_size=ea_size,
    )


def _read_eas(op: Open) -> list[eas.Ea]:
    try:
        return eas.read(op.meta_target)  # a stream's are its file's
    except OSError as e:
        raise NtStatusError(status_from_oserror(e)) from None


_SL_RETURN_SINGLE_ENTRY = 0x02


def _query_eas(op: Open, wanted: bytes, flags: int, out_len: int) -> tuple[int, bytes]:
    """FileFullEaInformation: the EAs named in the input buffer, else all of them, as
    many whole ones as the buffer holds (no EA index is kept between queries)."""
    if op.pipe is not None:
        raise NtStatusError(Status.INVALID_PARAMETER)
    _require(op, AccessMask.FILE_READ_EA)
    names = eas.parse_get(wanted)
    found = eas.select(_read_eas(op), names) if names else _read_eas(op)
    if not found:
        raise NtStatusError(Status.NO_EAS_ON_FILE)
    if flags & _SL_RETURN_SINGLE_ENTRY:
        found = found[:1]
    return eas.fit(found, out_len)


def _normalized_name(op: Open) -> str:
    """FileNormalizedNameInformation: the path from the share root as the volume
    spells it, whatever case the client opened it with; empty for the root. A
    stream's handle adds ``:name`` as stored, without its ``:$DATA`` type."""
    fs = op.tree.fs
    assert fs is not None
    rel = os.path.relpath(op.host_path, fs.root)
    base = "" if rel == "." else rel.replace("/", "\\")
    return base if op.stream is None else f"{base}:{op.stream.name}"


def _fs_info(ctx: RequestContext, op: Open, info_class: int) -> bytes:
    fs = op.tree.fs
    if fs is None:
        raise NtStatusError(Status.INVALID_PARAMETER)
    return infoclass.query_fs_info(
        info_class, fs, label=op.tree.share.name, fs_attributes=sparse.fs_attributes(fs)
    )


# -- SET_INFO ---------------------------------------------------------------------


async def handle_set_info(ctx: RequestContext) -> Reply:
    body = ctx.body
    check_size(body, 32, 33)
    _s, info_type, info_class, buf_len, buf_off, _r, additional, _p, _v = _SET.unpack_from(body)
    ctx.check_payload(buf_len)
    start = buf_off - 64
    if buf_len and (start < 32 or start + buf_len > len(body)):
        raise NtStatusError(Status.INVALID_PARAMETER)
    buf = bytes(body[start : start + buf_len])
    op = ctx.open_at(16)
    if op.pipe is not None or op.tree.fs is None:
        raise NtStatusError(Status.INVALID_PARAMETER)
    if op.tree.share.read_only:
        raise NtStatusError(Status.MEDIA_WRITE_PROTECTED)
    if info_type == InfoType.FILE:
        await _set_file_info(ctx, op, info_class, buf)
    elif info_type == InfoType.SECURITY:
        security.set_security(op, additional, buf)
        ctx.node.notify_change(op.tree, op.host_path, "modified", op.is_dir,
                               CompletionFilter.SECURITY)  # fmt: skip
    elif info_type == InfoType.FILESYSTEM:
        raise NtStatusError(Status.NOT_SUPPORTED)
    else:
        raise NtStatusError(Status.INVALID_PARAMETER)
    return Reply(Status.SUCCESS, _SET_RESP)


def _require(op: Open, mask: int) -> None:
    if not op.access & mask:
        raise NtStatusError(Status.ACCESS_DENIED)


async def _set_file_info(ctx: RequestContext, op: Open, info_class: int, buf: bytes) -> None:
    fs = op.tree.fs
    assert fs is not None
    bus = ctx.node.bus
    try:
        if info_class == FileInfoClass.BASIC:
            _require(op, AccessMask.FILE_WRITE_ATTRIBUTES)
            basic = infoclass.parse_basic(buf)
            if op.is_dir and basic.file_attributes & FileAttributes.TEMPORARY:
                raise NtStatusError(Status.INVALID_PARAMETER)  # as NTFS refuses it
            writetime.update_now(op)  # even all-zero times flush a due one (Windows)
            fs.set_basic(op.host_path, basic, fd=op.fd, is_dir=op.is_dir)
            writetime.basic_set(op, basic)
            mask = basic_info_mask(basic)
            ctx.node.notify_change(op.tree, op.host_path, "modified", op.is_dir, mask)
        elif info_class == FileInfoClass.RENAME:
            await _rename(ctx, op, buf)
        elif info_class in (FileInfoClass.DISPOSITION, FileInfoClass.DISPOSITION_EX):
            _require(op, AccessMask.DELETE)
            delete = infoclass.parse_disposition(buf, ex=info_class == FileInfoClass.DISPOSITION_EX)
            if delete:
                info = _stat(op)
                if info.attributes & FileAttributes.READONLY:
                    raise NtStatusError(Status.CANNOT_DELETE)
                if op.is_dir and fs.listdir_names(op.host_path):
                    raise NtStatusError(Status.DIRECTORY_NOT_EMPTY)
                await run_bus_call(
                    ctx, bus.break_for(op.file_key, op.bus_open_id, Operation.DELETE)
                )
            op.delete_on_close = delete
            await bus.set_delete_pending(op.file_key, delete)
        elif info_class == FileInfoClass.END_OF_FILE:
            _require(op, AccessMask.FILE_WRITE_DATA)
            size = infoclass.parse_end_of_file(buf)
            await run_bus_call(ctx, bus.break_for(op.file_key, op.bus_open_id, Operation.SET_SIZE))
            writetime.set_end_of_file(op, size)
            ctx.node.notify_change(op.tree, op.host_path, "modified", False)
        elif info_class == FileInfoClass.ALLOCATION:
            _require(op, AccessMask.FILE_WRITE_DATA)
            size = infoclass.parse_allocation(buf)
            # Any allocation change breaks others' caching, growing or not (smb2.oplock.batch12).
            await run_bus_call(ctx, bus.break_for(op.file_key, op.bus_open_id, Operation.SET_SIZE))
            if size < os.fstat(op.fd).st_size:
                writetime.set_end_of_file(op, size)
                ctx.node.notify_change(op.tree, op.host_path, "modified", False)
        elif info_class == FileInfoClass.POSITION:
            op.position = infoclass.parse_position(buf)
        elif info_class == FileInfoClass.MODE:
            op.mode = infoclass.parse_mode(buf)
        elif info_class == FileInfoClass.FULL_EA:
            _require(op, AccessMask.FILE_WRITE_EA)
            changes = eas.parse_full(buf)
            target = op.meta_target
            eas.write(target, eas.merged(eas.read(target), changes))
            ctx.node.notify_change(op.tree, op.host_path, "modified", op.is_dir,
                                   CompletionFilter.EA)  # fmt: skip
        else:
            raise NtStatusError(Status.INVALID_INFO_CLASS)
    except OSError as e:
        raise NtStatusError(status_from_oserror(e)) from None


async def _rename(ctx: RequestContext, op: Open, buf: bytes) -> None:
    _require(op, AccessMask.DELETE)
    fs = op.tree.fs
    assert fs is not None
    replace, target = infoclass.parse_rename(buf)
    if op.stream is not None or target.startswith(":"):
        await streams.rename(ctx, op, target, replace)
        return
    target = target.lstrip("\\")
    new_path, existing = fs.lookup(target)
    replacing = existing is not None and os.path.realpath(new_path) != os.path.realpath(
        op.host_path
    )
    if existing is not None and not replacing:
        # A change of case only: the lookup found this very file under its
        # old spelling; the new spelling is what the client asked for.
        asked = target.replace("/", "\\").split("\\")[-1]
        new_path = os.path.join(os.path.dirname(new_path), asked)
    if replacing:
        if not replace:
            raise NtStatusError(Status.OBJECT_NAME_COLLISION)
        if existing is not None and existing.is_dir:
            raise NtStatusError(Status.ACCESS_DENIED)
    security.check_rename(op, new_path, replacing)
    node = ctx.node
    parent = os.path.dirname(op.host_path)
    if any(o.is_dir and o.host_path == parent and o.access & AccessMask.DELETE
           for o in node.opens.values()):  # fmt: skip
        # Windows refuses to rename out of a directory someone holds open for DELETE.
        raise NtStatusError(Status.SHARING_VIOLATION)
    if op.is_dir:
        prefix = op.host_path.rstrip("/") + "/"
        if any(o.host_path.startswith(prefix) for o in node.opens.values()):
            raise NtStatusError(Status.ACCESS_DENIED)  # a directory with open children
    drop_replaced_streams = await streams.before_base_rename(
        ctx, op, new_path if replacing else None
    )
    await run_bus_call(ctx, node.bus.break_for(op.file_key, op.bus_open_id, Operation.RENAME))
    old = op.host_path
    fs.rename(old, new_path, replace=replace)
    drop_replaced_streams()
    for other in node.opens.values():
        if other.file_key == op.file_key and other.host_path == old:
            other.host_path = new_path
            other.smb_name = target
    op.host_path = new_path
    op.smb_name = target
    node.notify_rename(op.tree, old, new_path, op.is_dir)
