"""CREATE and CLOSE (MS-SMB2 2.2.13-2.2.16, 3.3.5.9-3.3.5.10)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from oplock_bus import api as bus_api
from oplock_bus.api import Operation

from .. import durable, eas, security, streams, writetime
from ..context import Reply, RequestContext
from ..protocol.constants import (
    FILE_ALL_ACCESS,
    FILE_GENERIC_EXECUTE,
    FILE_GENERIC_READ,
    FILE_GENERIC_WRITE,
    AccessMask,
    CloseFlags,
    CreateAction,
    CreateDisposition,
    CreateOptions,
    Dialect,
    FileAttributes,
    ImpersonationLevel,
    NtStatusError,
    OplockLevel,
    Status,
)
from ..protocol.wire import check_size
from ..rpc.srvsvc import SrvsvcPipe
from ..state import Open
from ..vfs import FileInfo, status_from_oserror

if TYPE_CHECKING:
    from ..node import Node

log = logging.getLogger("smbgw.create")

_REQ = struct.Struct("<HBBIQQIIIIIHHII")
_RESP = struct.Struct("<HBBIQQQQQQIIQQII")
_CLOSE_REQ = struct.Struct("<HHIQQ")
_CLOSE_RESP = struct.Struct("<HHIQQQQQQI")
_CTX_HDR = struct.Struct("<IHHHHI")

LEASE_FLAG_BREAK_IN_PROGRESS = 0x02
LEASE_FLAG_PARENT_LEASE_KEY_SET = 0x04
_VALID_OPTIONS = 0x00FFFFFF
_PIPE_NAMES = {"srvsvc"}


@dataclass
class CreateRequest:
    oplock: int
    impersonation: int
    access: int
    attributes: int
    share: int
    disposition: int
    options: int
    name: str
    contexts: dict[bytes, bytes] = field(default_factory=dict)


def parse_contexts(body: bytes, offset: int, length: int) -> dict[bytes, bytes]:
    """Create contexts by name (MS-SMB2 2.2.13.2); malformed chains are refused."""
    out: dict[bytes, bytes] = {}
    if not length:
        return out
    start = offset - 64
    if start < _REQ.size or start + length > len(body) or start % 8:
        raise NtStatusError(Status.INVALID_PARAMETER, "create contexts outside the message")
    pos = start
    end = start + length
    while True:
        if pos + _CTX_HDR.size > end:
            raise NtStatusError(Status.INVALID_PARAMETER, "truncated create context")
        nxt, name_off, name_len, _r, data_off, data_len = _CTX_HDR.unpack_from(body, pos)
        if name_off + name_len > end - pos or (data_len and data_off + data_len > end - pos):
            raise NtStatusError(Status.INVALID_PARAMETER, "create context outside the chain")
        name = bytes(body[pos + name_off : pos + name_off + name_len])
        data = bytes(body[pos + data_off : pos + data_off + data_len]) if data_len else b""
        if name in out:
            raise NtStatusError(Status.INVALID_PARAMETER, "duplicate create context")
        out[name] = data
        if nxt == 0:
            return out
        if nxt % 8 or pos + nxt >= end:
            raise NtStatusError(Status.INVALID_PARAMETER, "bad create context chain")
        pos += nxt


def build_contexts(items: list[tuple[bytes, bytes]]) -> bytes:
    chunks: list[bytes] = []
    for i, (name, data) in enumerate(items):
        name_off = _CTX_HDR.size
        data_off = (name_off + len(name) + 7) & ~7
        size = data_off + len(data)
        padded = (size + 7) & ~7 if i != len(items) - 1 else size
        nxt = padded if i != len(items) - 1 else 0
        chunk = (
            _CTX_HDR.pack(nxt, name_off, len(name), 0, data_off if data else 0, len(data))
            + name
            + b"\x00" * (data_off - name_off - len(name))
            + data
        )
        chunks.append(chunk + b"\x00" * (padded - len(chunk)))
    return b"".join(chunks)


def parse_create(body: bytes) -> CreateRequest:
    check_size(body, 56, 57)
    (
        _s, _sec, oplock, imp, _flags, _res, access, attrs, share, disp, options,
        name_off, name_len, ctx_off, ctx_len,
    ) = _REQ.unpack_from(body)  # fmt: skip
    if name_len:
        start = name_off - 64
        if start < _REQ.size or start + name_len > len(body) or name_len % 2:
            raise NtStatusError(Status.INVALID_PARAMETER, "name outside the message")
        try:
            name = body[start : start + name_len].decode("utf-16-le")
        except UnicodeDecodeError:
            raise NtStatusError(Status.OBJECT_NAME_INVALID) from None
    else:
        name = ""
    return CreateRequest(
        oplock=oplock,
        impersonation=imp,
        access=access,
        attributes=attrs,
        share=share,
        disposition=disp,
        options=options,
        name=name,
        contexts=parse_contexts(body, ctx_off, ctx_len),
    )


def map_generic(access: int) -> int:
    """Generic rights to file rights (MS-SMB2 3.3.5.9 / MS-DTYP 2.4.3)."""
    if access & AccessMask.GENERIC_ALL:
        access |= FILE_ALL_ACCESS
    if access & AccessMask.GENERIC_READ:
        access |= FILE_GENERIC_READ
    if access & AccessMask.GENERIC_WRITE:
        access |= FILE_GENERIC_WRITE
    if access & AccessMask.GENERIC_EXECUTE:
        access |= FILE_GENERIC_EXECUTE
    return access & ~0xF0000000


def _validate(req: CreateRequest) -> None:
    if req.impersonation > ImpersonationLevel.DELEGATE:
        raise NtStatusError(Status.BAD_IMPERSONATION_LEVEL)
    if req.disposition > CreateDisposition.OVERWRITE_IF:
        raise NtStatusError(Status.INVALID_PARAMETER, "bad CreateDisposition")
    if req.options & ~_VALID_OPTIONS:
        raise NtStatusError(Status.INVALID_PARAMETER, "reserved CreateOptions")
    opts = req.options
    if opts & CreateOptions.DIRECTORY_FILE and opts & CreateOptions.NON_DIRECTORY_FILE:
        raise NtStatusError(Status.INVALID_PARAMETER)
    if opts & CreateOptions.DIRECTORY_FILE and req.disposition not in (
        CreateDisposition.CREATE,
        CreateDisposition.OPEN,
        CreateDisposition.OPEN_IF,
    ):
        raise NtStatusError(Status.INVALID_PARAMETER, "directory with overwrite")
    if req.share & ~0x7 or req.attributes & ~0x7FB7 and req.attributes != 0:
        raise NtStatusError(Status.INVALID_PARAMETER)
    if req.oplock not in (0x00, 0x01, 0x08, 0x09, 0xFF):
        raise NtStatusError(Status.INVALID_PARAMETER, "bad RequestedOplockLevel")
    if req.access & 0x0CE0FE00 or req.access == 0:
        # Reserved bits, or no access at all (MS-SMB2 3.3.5.9).
        raise NtStatusError(Status.ACCESS_DENIED)
    if opts & CreateOptions.DELETE_ON_CLOSE and not req.access & (
        AccessMask.DELETE | AccessMask.GENERIC_ALL
    ):
        raise NtStatusError(Status.INVALID_PARAMETER, "delete-on-close without DELETE")


async def handle_create(ctx: RequestContext) -> Reply:
    tree = ctx.require_tree()
    req = parse_create(ctx.body)
    ask, reclaim = durable.parse(req.contexts, ctx.conn.codec.dialect)
    if reclaim is not None and tree.fs is not None:
        # A reconnect names the handle; the rest of the request is not checked.
        return await _reconnect(ctx, req, reclaim)
    _validate(req)
    if tree.fs is None:
        return _open_pipe(ctx, req)
    return await _open_file(ctx, req, ask)


def _open_pipe(ctx: RequestContext, req: CreateRequest) -> Reply:
    name = req.name.lstrip("\\").lower()
    if name not in _PIPE_NAMES:
        raise NtStatusError(Status.OBJECT_NAME_NOT_FOUND)
    node = ctx.node
    tree = ctx.require_tree()
    shares = [(s.name, 0, s.comment) for s in node.config.shares]
    pipe = SrvsvcPipe(shares, node.config.server_name)
    op = Open(
        persistent_id=node.next_id(),
        volatile_id=node.next_id(),
        tree=tree,
        smb_name=name,
        host_path="",
        is_dir=False,
        access=map_generic(req.access),
        share_access=req.share,
        create_options=req.options,
        pipe=pipe,
        connection=ctx.conn,
    )
    ctx.conn.opens[op.volatile_id] = op
    body = _RESP.pack(89, 0, 0, CreateAction.OPENED, 0, 0, 0, 0, 4096, 0, 0x80, 0,
                      op.persistent_id, op.volatile_id, 0, 0)  # fmt: skip
    return Reply(Status.SUCCESS, body, file_id=op.file_id)


def _granted_access(req: CreateRequest, maximal: int, info: FileInfo | None) -> int:
    maximal_here = maximal
    if info is not None and info.attributes & FileAttributes.READONLY:
        maximal_here &= ~(AccessMask.FILE_WRITE_DATA | AccessMask.FILE_APPEND_DATA)
    if req.access & AccessMask.MAXIMUM_ALLOWED:
        # Rights named beside MAXIMUM_ALLOWED must still be granted (smb2.acls.MXAC-NOT-GRANTED).
        wanted = map_generic(req.access & ~AccessMask.MAXIMUM_ALLOWED)
        if wanted & ~maximal_here & ~AccessMask.SYNCHRONIZE:
            raise NtStatusError(Status.ACCESS_DENIED)
        return maximal_here | wanted
    wanted = map_generic(req.access)
    if wanted & ~maximal_here & ~AccessMask.SYNCHRONIZE:
        raise NtStatusError(Status.ACCESS_DENIED)
    return wanted


def _open_flags(access: int, is_dir: bool) -> int:
    if is_dir:
        return os.O_RDONLY | os.O_DIRECTORY
    writes = AccessMask.FILE_WRITE_DATA | AccessMask.FILE_APPEND_DATA
    if access & writes:
        return os.O_RDWR
    return os.O_RDONLY


def _open_fd(path: str, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
    except PermissionError:
        if flags & os.O_RDWR:
            raise NtStatusError(Status.ACCESS_DENIED) from None
        # Metadata-only opens of an unreadable file still work.
        return os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)


async def _open_file(
    ctx: RequestContext, req: CreateRequest, ask: durable.DurableAsk | None, retry: bool = True
) -> Reply:
    node = ctx.node
    tree = ctx.require_tree()
    fs = tree.fs
    assert fs is not None
    ext_a = req.contexts.get(b"ExtA")
    new_eas = eas.parse_full(ext_a) if ext_a is not None else None  # kept if it creates
    stream = streams.parse(fs, req.name, req.options)
    path, info = fs.lookup(req.name) if stream is None else (stream.path, stream.info)
    # A stream is checked against its file's descriptor and attributes.
    acl_path, acl_info = (path, info) if stream is None else (stream.base_path, stream.base_info)
    disp = req.disposition
    opts = req.options
    if info is None and disp in (CreateDisposition.OPEN, CreateDisposition.OVERWRITE):
        raise NtStatusError(Status.OBJECT_NAME_NOT_FOUND)
    if info is not None and disp == CreateDisposition.CREATE:
        raise NtStatusError(Status.OBJECT_NAME_COLLISION)
    if info is not None:
        if info.is_dir and opts & CreateOptions.NON_DIRECTORY_FILE:
            raise NtStatusError(Status.FILE_IS_A_DIRECTORY)
        if not info.is_dir and opts & CreateOptions.DIRECTORY_FILE:
            raise NtStatusError(Status.NOT_A_DIRECTORY)
        if info.is_dir and disp not in (
            CreateDisposition.OPEN,
            CreateDisposition.OPEN_IF,
        ):
            raise NtStatusError(Status.INVALID_PARAMETER, "overwrite of a directory")
    maximal, new_sd = security.check_open(
        fs, tree.session, acl_path, None if acl_info is None else acl_info.is_dir, req.access,
        bool(opts & CreateOptions.DIRECTORY_FILE), req.contexts.get(b"SecD"), tree.maximal_access,
        overwrite=disp in (CreateDisposition.SUPERSEDE, CreateDisposition.OVERWRITE,
                           CreateDisposition.OVERWRITE_IF),
    )  # fmt: skip
    access = _granted_access(req, maximal, acl_info)
    if tree.share.read_only and (disp != CreateDisposition.OPEN or info is None):
        if info is None or disp != CreateDisposition.OPEN_IF:
            raise NtStatusError(Status.MEDIA_WRITE_PROTECTED)
    created = False
    if info is None:
        if opts & CreateOptions.DELETE_ON_CLOSE and req.attributes & FileAttributes.READONLY:
            # MS-FSA 2.1.5.1.2.1: refused before anything is created.
            raise NtStatusError(Status.CANNOT_DELETE)
        is_dir = bool(opts & CreateOptions.DIRECTORY_FILE)
        try:
            if stream is not None:
                path = stream.create(req.attributes, new_sd)
            elif is_dir:
                os.mkdir(path, 0o777)
            else:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o666))
            created = True
        except FileExistsError:
            if disp == CreateDisposition.CREATE:
                raise NtStatusError(Status.OBJECT_NAME_COLLISION) from None
            # Someone created it meanwhile: open it as existing, checked against its descriptor.
            return await _open_file(ctx, req, ask, retry)
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise NtStatusError(Status.OBJECT_PATH_NOT_FOUND) from None
            raise NtStatusError(status_from_oserror(e)) from None
        if created and new_sd is not None and stream is None:
            try:
                security.store_new(fs, path, new_sd)
            except OSError:
                _remove_created(path, is_dir)
                raise
    try:
        fd = _open_fd(path, _open_flags(access, bool(opts & CreateOptions.DIRECTORY_FILE)))
    except IsADirectoryError:
        if opts & CreateOptions.NON_DIRECTORY_FILE:
            raise NtStatusError(Status.FILE_IS_A_DIRECTORY) from None
        fd = _open_fd(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise NtStatusError(status_from_oserror(e)) from None
    op: Open | None = None
    try:
        info = fs.stat_fd(fd) if stream is None else stream.stat(fs, fd)
        op = Open(
            persistent_id=node.next_id(),
            volatile_id=node.next_id(),
            tree=tree,
            smb_name=req.name,
            host_path=path,
            is_dir=info.is_dir,
            access=access,
            share_access=req.share,
            create_options=opts,
            file_key=info.file_key,
            fd=fd,
            connection=ctx.conn,
            client_guid=ctx.conn.client_guid,
        )
        op.bus_open_id = f"{node.node_id}/{op.persistent_id}"
        if stream is not None:
            stream.attach(op, info)
        # Directories still pass their lease key: the bus checks it is not bound
        # to another file, and grants directories nothing.
        lease_req = _lease_request(ctx, req)
        oplock = req.oplock if not info.is_dir or lease_req is not None else 0
        if oplock == OplockLevel.LEASE and lease_req is None:
            oplock = 0
        overwrite = created is False and disp in (
            CreateDisposition.OVERWRITE,
            CreateDisposition.OVERWRITE_IF,
            CreateDisposition.SUPERSEDE,
        )
        bus_req = bus_api.OpenRequest(
            open_id=op.bus_open_id,
            node_id=node.node_id,
            file=op.file_key,
            access=access,
            share=req.share,
            oplock=oplock,
            lease=lease_req,
            disposition=bus_api.Disposition.OVERWRITE if overwrite else bus_api.Disposition.OPEN,
            is_directory=info.is_dir,
            file_size=info.size,
            created=created,
        )
        if lease_req is not None:
            # Known before the bus answers: a break of this lease decided by
            # another open while ours is in flight must find its holder.
            op.lease_key = lease_req.key.key
            op.lease_version = lease_req.version
        node.opens[op.bus_open_id] = op
        result = await streams.bus_open(ctx, op, bus_req)
    except BaseException:
        if op is not None:
            node.opens.pop(op.bus_open_id, None)
        os.close(fd)
        raise
    if result.status != Status.SUCCESS:
        node.opens.pop(op.bus_open_id, None)
        os.close(fd)
        if created:
            _remove_created(path, info.is_dir)
        raise NtStatusError(result.status)
    if retry and _unlinked(fd):
        # The open we waited for deleted the file as it closed (delete on
        # close of a purged durable handle, say): start again by name.
        await node.close_open(op)
        return await _open_file(ctx, req, ask, retry=False)
    op.oplock_level = result.oplock
    if result.oplock != OplockLevel.LEASE:
        op.lease_key = None
    if lease_req is not None and result.oplock == OplockLevel.LEASE:
        node.set_lease_state(
            op.client_guid, lease_req.key.key, result.lease_state, result.lease_epoch
        )
    action = CreateAction.CREATED if created else CreateAction.OPENED
    try:
        if overwrite:
            # By path: an attributes-only open may overwrite (its fd is read-only).
            os.truncate(path, 0)
            if stream is None:
                streams.remove_all(fs, path, fd)  # the file's named streams go with its data
            action = (
                CreateAction.SUPERSEDED
                if disp == CreateDisposition.SUPERSEDE
                else CreateAction.OVERWRITTEN
            )
        if (created or overwrite) and stream is None:
            attrs = req.attributes & ~FileAttributes.NORMAL
            if not info.is_dir:
                attrs |= FileAttributes.ARCHIVE  # NTFS marks new and rewritten files
            fs.set_attributes(path, attrs, is_dir=info.is_dir)
            if new_eas is not None:
                eas.write(path, eas.merged([], new_eas))
        info = fs.stat_fd(fd) if stream is None else stream.stat(fs, fd)
    except OSError as e:
        await node.close_open(op)
        raise NtStatusError(status_from_oserror(e)) from None
    except NtStatusError:
        await node.close_open(op)
        raise
    if opts & CreateOptions.DELETE_ON_CLOSE:
        if info.attributes & FileAttributes.READONLY:
            await node.close_open(op)
            raise NtStatusError(Status.CANNOT_DELETE)
        op.delete_on_close = True
    ctx.conn.opens[op.volatile_id] = op
    if created and (stream is None or stream.base_created):
        node.notify_change(tree, op.host_path, "added", info.is_dir)
    elif overwrite:
        node.notify_change(tree, op.host_path, "modified", False)
    contexts = _response_contexts(ctx, req, op, info, result, lease_req)
    contexts += durable.grant(ask, op, result.lease_state)
    oplock = result.oplock if result.oplock != OplockLevel.LEASE or lease_req else 0
    return _create_reply(op, info, action, oplock, contexts)


async def _reconnect(ctx: RequestContext, req: CreateRequest, reclaim: durable.Reclaim) -> Reply:
    """Give a parked durable handle to the client reconnecting for it (3.3.5.9.7/12)."""
    node = ctx.node
    tree = ctx.require_tree()
    session = ctx.session
    assert tree.fs is not None and session is not None
    op = node.durable.find(reclaim.persistent_id)
    if op is None or op.tree.share.name.lower() != tree.share.name.lower():
        raise NtStatusError(Status.OBJECT_NAME_NOT_FOUND, "no such durable handle")
    if reclaim.version == 2 and op.create_guid != reclaim.create_guid:
        raise NtStatusError(Status.OBJECT_NAME_NOT_FOUND, "CreateGuid differs")
    # A reconnect's RequestedOplockLevel is ignored; only the lease key counts.
    lease_req = _lease_request(ctx, req, any_level=True)
    if op.lease_key is None:
        if lease_req is not None:
            raise NtStatusError(Status.OBJECT_NAME_NOT_FOUND, "lease on an oplock handle")
    elif (
        lease_req is None
        or lease_req.key.key != op.lease_key
        or ctx.conn.client_guid != op.client_guid
    ):
        raise NtStatusError(Status.OBJECT_NAME_NOT_FOUND, "lease key differs")
    elif _name_key(req.name) != _name_key(op.smb_name):
        # With a lease the name must match too (MS-SMB2 3.3.5.9.7; Windows
        # answers INVALID_PARAMETER, unlike for an oplock handle).
        raise NtStatusError(Status.INVALID_PARAMETER, "lease reconnect for another name")
    owner = op.tree.session
    if (owner.username.lower(), owner.domain.lower()) != (
        session.username.lower(),
        session.domain.lower(),
    ):
        raise NtStatusError(Status.ACCESS_DENIED, "durable handle of another user")
    node.durable.take(reclaim.persistent_id)
    op.tree = tree
    op.connection = ctx.conn
    op.volatile_id = node.next_id()
    ctx.conn.opens[op.volatile_id] = op
    try:
        info = streams.stat_open(tree.fs, op)
    except OSError as e:
        await node.close_open(op)
        raise NtStatusError(status_from_oserror(e)) from None
    contexts: list[tuple[bytes, bytes]] = []
    if lease_req is not None:
        held = bus_api.OpenResult(
            Status.SUCCESS, OplockLevel.LEASE, op.lease_state, op.lease_epoch,
            lease_version=op.lease_version,
        )  # fmt: skip
        contexts = _response_contexts(ctx, req, op, info, held, lease_req)
    # No durable context in the reply: the handle is simply back (smbtorture
    # smb2.durable-open.reopen2a, smb2.durable-v2-open.reopen2).
    return _create_reply(op, info, CreateAction.OPENED, op.oplock_level, contexts)


def _name_key(name: str) -> str:
    return name.replace("/", "\\").strip("\\").lower()


def _create_reply(
    op: Open, info: FileInfo, action: int, oplock: int, contexts: list[tuple[bytes, bytes]]
) -> Reply:
    ctx_bytes = build_contexts(contexts)
    ctx_off = 64 + _RESP.size if ctx_bytes else 0
    pad = b""
    if ctx_bytes and ctx_off % 8:
        pad = b"\x00" * (8 - ctx_off % 8)
        ctx_off += len(pad)
    body = _RESP.pack(
        89,
        oplock,
        0,
        action,
        info.creation_time,
        info.last_access_time,
        info.last_write_time,
        info.change_time,
        info.allocation_size,
        info.size,
        info.attributes,
        0,
        op.persistent_id,
        op.volatile_id,
        ctx_off,
        len(ctx_bytes),
    )
    return Reply(Status.SUCCESS, body + pad + ctx_bytes, file_id=op.file_id)


def _unlinked(fd: int) -> bool:
    try:
        return os.fstat(fd).st_nlink == 0
    except OSError:
        return False


def _remove_created(path: str, is_dir: bool) -> None:
    try:
        if is_dir:
            os.rmdir(path)
        else:
            os.unlink(path)
    except OSError:
        pass


def _lease_request(
    ctx: RequestContext, req: CreateRequest, any_level: bool = False
) -> bus_api.LeaseRequest | None:
    """The RqLs context; ``any_level`` reads it whatever oplock level was asked."""
    if ctx.conn.codec.dialect < Dialect.SMB2_1:
        return None
    if req.oplock != OplockLevel.LEASE and not any_level:
        return None
    data = req.contexts.get(b"RqLs")
    if data is None:
        return None
    if len(data) >= 52 and ctx.conn.codec.dialect >= Dialect.SMB3_0:
        key, state, flags, _dur, parent, epoch = struct.unpack_from("<16sIIQ16sH", data)
        return bus_api.LeaseRequest(
            key=bus_api.LeaseKey(ctx.conn.client_guid, key),
            state=state,
            version=2,
            epoch=epoch,
            parent_key=parent if flags & LEASE_FLAG_PARENT_LEASE_KEY_SET else None,
        )
    if len(data) >= 32:
        key, state, _flags, _dur = struct.unpack_from("<16sIIQ", data)
        return bus_api.LeaseRequest(key=bus_api.LeaseKey(ctx.conn.client_guid, key), state=state)
    raise NtStatusError(Status.INVALID_PARAMETER, "short lease context")


def _response_contexts(
    ctx: RequestContext,
    req: CreateRequest,
    op: Open,
    info: FileInfo,
    result: bus_api.OpenResult,
    lease_req: bus_api.LeaseRequest | None,
) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    if b"MxAc" in req.contexts:
        maximal = security.handle_maximal_access(op)
        if info.attributes & FileAttributes.READONLY:
            maximal &= ~(AccessMask.FILE_WRITE_DATA | AccessMask.FILE_APPEND_DATA)
        out.append((b"MxAc", struct.pack("<II", 0, maximal)))
    if b"QFid" in req.contexts:
        vol = int(info.file_key.split(":", 1)[0], 16)
        out.append((b"QFid", struct.pack("<QQ16s", info.inode, vol, b"")))
    if lease_req is not None and result.oplock == OplockLevel.LEASE:
        # The lease's own version answers, not this request's (smb2.lease.v2_epoch2).
        if result.lease_version == 2:
            flags = result.lease_flags
            parent = lease_req.parent_key or bytes(16)
            if lease_req.parent_key is not None:
                flags |= LEASE_FLAG_PARENT_LEASE_KEY_SET
            data = struct.pack(
                "<16sIIQ16sHH", lease_req.key.key, result.lease_state, flags, 0, parent,
                result.lease_epoch, 0,
            )  # fmt: skip
        else:
            data = struct.pack(
                "<16sIIQ", lease_req.key.key, result.lease_state, result.lease_flags, 0
            )
        out.append((b"RqLs", data))
    return out


# -- CLOSE -----------------------------------------------------------------------


async def handle_close(ctx: RequestContext) -> Reply:
    check_size(ctx.body, 24, 24)
    flags = struct.unpack_from("<H", ctx.body, 2)[0]
    op = ctx.open_at(8)
    node = ctx.node
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
    await node.close_open(op)
    if info is None:
        body = _CLOSE_RESP.pack(60, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    else:
        body = _CLOSE_RESP.pack(
            60, CloseFlags.POSTQUERY_ATTRIB, 0, info.creation_time, info.last_access_time,
            info.last_write_time, info.change_time, info.allocation_size, info.size,
            info.attributes,
        )  # fmt: skip
    return Reply(Status.SUCCESS, body)


async def finish_close(node: Node, op: Open) -> None:
    """Undo everything an open holds; delete the file if it was marked so."""
    if op.notify is not None:
        op.notify.cleanup()
    delete = op.delete_on_close
    writetime.closing(op)  # before the bus lets another open see the file
    if delete and await streams.defer_delete(node, op):
        delete = False  # the file's open streams keep it, delete-pending (MS-FSA)
    if op.file_key and op.bus_open_id:
        # The handle must close whatever the bus says, so bus errors are logged.
        try:
            if delete:
                # Others' handle caching goes before the name does (Samba
                # smb2_close; smbtorture smb2.lease.unlink).
                await node.bus.break_for(op.file_key, op.bus_open_id, Operation.DELETE)
            await node.bus.close(op.file_key, op.bus_open_id)
        except Exception:  # noqa: BLE001
            log.exception("bus close of %s failed", op.bus_open_id)
    op.close_fd()
    if await streams.closed(node, op, delete):
        return
    if delete and op.host_path:
        try:
            if op.is_dir:
                os.rmdir(op.host_path)
            else:
                os.unlink(op.host_path)
            node.notify_change(op.tree, op.host_path, "removed", op.is_dir)
        except OSError as e:
            log.info("delete-on-close of %s failed: %s", op.host_path, e)
