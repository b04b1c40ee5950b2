"""IOCTL / FSCTL (MS-SMB2 2.2.31-2.2.32, 3.3.5.15)."""

from __future__ import annotations

import asyncio
import socket
import struct

from ...fs import snapshots
from ...protocol.constants import IOCTL_IS_FSCTL, Dialect, Fsctl, NtStatusError, Status
from ...protocol.wire import check_size
from ..context import Disconnect, Reply, RequestContext
from . import copychunk, sparse

_REQ = struct.Struct("<HHIQQIIIIIIII")
_RESP = struct.Struct("<HHIQQIIIIII")
_IFACE = struct.Struct("<IIIIQ")
_NO_FILE = 0xFFFFFFFFFFFFFFFF
_RSS_CAPABLE = 0x1
# Samba's test hooks (libcli/smb/smb_constants.h): pad this IOCTL reply by 8
# bytes, pad every later READ reply by 8 bytes, go async and sleep on a handle.
FSCTL_SMBTORTURE_IOCTL_RESPONSE_BODY_PADDING8 = 0x83848013
FSCTL_SMBTORTURE_GLOBAL_READ_RESPONSE_BODY_PADDING8 = 0x83848023
FSCTL_SMBTORTURE_FSP_ASYNC_SLEEP = 0x83848043
# ... and treat the client as no longer acknowledging TCP (a blocked transport).
FSCTL_SMBTORTURE_FORCE_UNACKED_TIMEOUT = 0x83848003
_MAX_HOOK_OUTPUT = 0x10000


async def handle_ioctl(ctx: RequestContext) -> Reply:
    body = ctx.body
    check_size(body, 56, 57)
    (_s, _r, code, pid, vid, in_off, in_len, _max_in, _out_off, _out_len, max_out, flags,
     _r2) = _REQ.unpack_from(body)  # fmt: skip
    if flags != IOCTL_IS_FSCTL:
        raise NtStatusError(Status.NOT_SUPPORTED)
    start = in_off - 64
    ctx.check_payload(max(in_len, max_out))
    if in_len and (start < 56 or start + in_len > len(body)):
        raise NtStatusError(Status.INVALID_PARAMETER, "input outside the message")
    data = bytes(body[start : start + in_len]) if in_len else b""
    hooks = ctx.node.config.torture_hooks
    if code == Fsctl.VALIDATE_NEGOTIATE_INFO:
        out = _validate_negotiate(ctx, data)
    elif code == Fsctl.QUERY_NETWORK_INTERFACE_INFO:
        if (pid, vid) != (_NO_FILE, _NO_FILE):
            # 3.3.5.15.11; before the size check (smbtorture smb2.ioctl.bug14788).
            raise NtStatusError(Status.INVALID_PARAMETER, "interface query on a file")
        out = _interfaces(ctx)
    elif code == FSCTL_SMBTORTURE_GLOBAL_READ_RESPONSE_BODY_PADDING8 and hooks:
        if data:
            raise NtStatusError(Status.INVALID_PARAMETER)
        ctx.conn.read_body_padding = 8
        out = b""
    elif code == FSCTL_SMBTORTURE_IOCTL_RESPONSE_BODY_PADDING8 and hooks:
        if data:
            raise NtStatusError(Status.INVALID_PARAMETER)
        out = bytes([8]) * min(max_out, _MAX_HOOK_OUTPUT)
        return _reply(code, pid, vid, out, Status.SUCCESS, padding=8)
    elif code == FSCTL_SMBTORTURE_FORCE_UNACKED_TIMEOUT and hooks:
        if data or (pid, vid) != (_NO_FILE, _NO_FILE):
            raise NtStatusError(Status.INVALID_PARAMETER)
        ctx.conn.sends_before_unacked = 1  # this reply goes out, nothing after it
        out = b""
    elif code == FSCTL_SMBTORTURE_FSP_ASYNC_SLEEP and hooks:
        out = await _async_sleep(ctx, data)
        pid, vid = ctx.used_file_id or (pid, vid)
    elif code in (Fsctl.SRV_COPYCHUNK, Fsctl.SRV_COPYCHUNK_WRITE):
        dest = ctx.open_at(8)
        pid, vid = ctx.used_file_id or (pid, vid)
        try:
            with dest.using():
                out = await copychunk.copychunk(
                    ctx, dest, data, max_out, write_only=code == Fsctl.SRV_COPYCHUNK_WRITE
                )
        except copychunk.CopyError as e:
            return _reply(code, pid, vid, e.response, e.status)
    elif code == Fsctl.QUERY_ALLOCATED_RANGES:
        op = ctx.open_at(8)
        pid, vid = ctx.used_file_id or (pid, vid)
        out, status = await sparse.query_allocated_ranges(op, data, max_out)
        return _reply(code, pid, vid, out, status)
    elif code == Fsctl.LMR_REQUEST_RESILIENCY:
        out = _request_resiliency(ctx, data)
    elif code == Fsctl.DFS_GET_REFERRALS:
        # No DFS here (3.3.5.15.2), on IPC$ as on a share, as smbd with "host
        # msdfs = no". The _EX form is an unknown FSCTL to smbd, and to us.
        raise NtStatusError(Status.FS_DRIVER_REQUIRED, "no DFS")
    elif code == Fsctl.PIPE_TRANSCEIVE:
        op = ctx.open_at(8)
        if op.pipe is None:
            raise NtStatusError(Status.INVALID_DEVICE_REQUEST)
        op.pipe.write(data)
        out = op.pipe.read(max_out)
        if op.pipe.pending():
            return _reply(code, pid, vid, out, Status.BUFFER_OVERFLOW)
    else:
        out = await _file_fsctl(ctx, code, data, max_out)
        pid, vid = ctx.used_file_id or (pid, vid)
    if len(out) > max_out:
        raise NtStatusError(Status.BUFFER_TOO_SMALL)
    return _reply(code, pid, vid, out, Status.SUCCESS)


def sessionless_hook(body: bytes, hooks: bool) -> bool:
    """Whether ``body`` is an IOCTL that comes without a session: smbtorture
    sends FSCTL_SMBTORTURE_FORCE_UNACKED_TIMEOUT so (smbd lets it through
    likewise, only with its test hooks on)."""
    return (
        hooks
        and len(body) >= 8
        and struct.unpack_from("<I", body, 4)[0] == FSCTL_SMBTORTURE_FORCE_UNACKED_TIMEOUT
    )


def _reply(code: int, pid: int, vid: int, out: bytes, status: int, *, padding: int = 0) -> Reply:
    # Windows points OutputOffset past the body even when nothing follows;
    # pike reads from it regardless.
    out_off = 64 + 48 + padding
    resp = _RESP.pack(49, 0, code, pid, vid, 64 + 48, 0, out_off, len(out), 0, 0)
    return Reply(status, resp + bytes(padding) + out)


async def _async_sleep(ctx: RequestContext, data: bytes) -> bytes:
    """Samba's FSCTL_SMBTORTURE_FSP_ASYNC_SLEEP: go async on a handle for a while
    (one byte of milliseconds), so a CLOSE arriving meanwhile must wait for it."""
    if len(data) != 1:
        raise NtStatusError(Status.INVALID_PARAMETER)
    op = ctx.open_at(8)
    ctx.go_async()
    with op.using():
        await asyncio.sleep(data[0] / 1000)
    if op.closed:
        raise NtStatusError(Status.FILE_CLOSED)
    return b""


def _validate_negotiate(ctx: RequestContext, data: bytes) -> bytes:
    """Answer FSCTL_VALIDATE_NEGOTIATE_INFO; a mismatch means a downgrade attack."""
    conn = ctx.conn
    if len(data) < 24:
        raise NtStatusError(Status.INVALID_PARAMETER)
    caps, guid, sec_mode, count = struct.unpack_from("<I16sHH", data)
    if len(data) < 24 + 2 * count:
        raise NtStatusError(Status.INVALID_PARAMETER)
    dialects = struct.unpack_from(f"<{count}H", data, 24)
    if (
        caps != conn.client_capabilities
        or guid != conn.client_guid
        or sec_mode != conn.client_security_mode
        or tuple(dialects) != conn.client_dialects
    ):
        raise Disconnect("VALIDATE_NEGOTIATE_INFO does not match the negotiation")
    return struct.pack(
        "<I16sHH",
        conn.server_capabilities,
        ctx.node.server_guid,
        conn.server_security_mode,
        conn.codec.dialect,
    )


# Windows caps resiliency at 5 minutes and refuses more (MS-SMB2 3.3.5.15.9).
_MAX_RESILIENCY_MS = 300_000
_DEFAULT_RESILIENCY_MS = 120_000


def _request_resiliency(ctx: RequestContext, data: bytes) -> bytes:
    """Keep the handle across a disconnect, as a durable one (3.3.5.15.9)."""
    if ctx.conn.codec.dialect < Dialect.SMB2_1:
        raise NtStatusError(Status.INVALID_DEVICE_REQUEST)
    if len(data) < 8:
        raise NtStatusError(Status.INVALID_PARAMETER, "short NETWORK_RESILIENCY_REQUEST")
    timeout = struct.unpack_from("<I", data)[0]
    if timeout > _MAX_RESILIENCY_MS:
        raise NtStatusError(Status.INVALID_PARAMETER, "resiliency timeout too long")
    op = ctx.open_at(8)
    if op.pipe is not None or op.tree.is_ipc:
        raise NtStatusError(Status.INVALID_DEVICE_REQUEST)
    op.resilient = True
    op.resilient_timeout_ms = timeout or _DEFAULT_RESILIENCY_MS
    return b""


def _interfaces(ctx: RequestContext) -> bytes:
    host = ctx.conn.local_address
    try:
        packed = socket.inet_aton(host)
    except OSError:
        packed = bytes(4)
    # SOCKADDR_STORAGE: family, port 0, IPv4 address, zero padding to 128 bytes.
    sockaddr = struct.pack("<HH4s", socket.AF_INET, 0, packed).ljust(128, b"\x00")
    return _IFACE.pack(0, 1, _RSS_CAPABLE, 0, 10_000_000_000) + sockaddr


_FILE_FSCTLS = {
    Fsctl.SRV_ENUMERATE_SNAPSHOTS, Fsctl.GET_REPARSE_POINT, Fsctl.GET_COMPRESSION,
    Fsctl.SET_COMPRESSION, Fsctl.SET_SPARSE, Fsctl.CREATE_OR_GET_OBJECT_ID,
    Fsctl.SRV_REQUEST_RESUME_KEY, Fsctl.SET_ZERO_DATA, Fsctl.FILE_LEVEL_TRIM,
}  # fmt: skip


async def _file_fsctl(ctx: RequestContext, code: int, data: bytes, max_out: int) -> bytes:
    if code not in _FILE_FSCTLS:
        # Unknown controls are refused before the FileId is looked at, as
        # Windows and Samba do (IPC$ answers FS_DRIVER_REQUIRED).
        tree = ctx.require_tree()
        raise NtStatusError(
            Status.FS_DRIVER_REQUIRED if tree.is_ipc else Status.INVALID_DEVICE_REQUEST
        )
    op = ctx.open_at(8)
    if code == Fsctl.SRV_ENUMERATE_SNAPSHOTS:
        folder, fs = op.tree.share.snapshots, op.tree.fs
        found = [] if folder is None or fs is None else snapshots.of_share(fs, folder).tokens()
        return snapshots.snapshot_array(found, max_out)
    if code == Fsctl.GET_REPARSE_POINT:
        raise NtStatusError(Status.NOT_A_REPARSE_POINT)
    if code == Fsctl.GET_COMPRESSION:
        return struct.pack("<H", 0)
    if code == Fsctl.SET_COMPRESSION:
        if len(data) < 2:
            raise NtStatusError(Status.INVALID_PARAMETER)
        if struct.unpack_from("<H", data)[0] != 0:
            raise NtStatusError(Status.NOT_SUPPORTED)
        return b""
    if code == Fsctl.SET_SPARSE:
        return await sparse.set_sparse(ctx, op, data)
    if code == Fsctl.SET_ZERO_DATA:
        return await sparse.set_zero_data(ctx, op, data)
    if code == Fsctl.FILE_LEVEL_TRIM:
        return await sparse.file_level_trim(ctx, op, data, max_out)
    if code == Fsctl.SRV_REQUEST_RESUME_KEY:
        return copychunk.request_resume_key(op, max_out)
    # FSCTL_CREATE_OR_GET_OBJECT_ID: the object id is the file id (inode, volume).
    vol, _, ino = op.file_key.partition(":")
    object_id = struct.pack("<QQ", int(ino, 16), int(vol, 16))
    return object_id + bytes(48)
