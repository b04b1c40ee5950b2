"""CREATE (MS-SMB2 2.2.13-2.2.14, 3.3.5.9)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import struct
import time
from dataclasses import dataclass, field, replace

from oplock_bus import api as bus_api

from ...fs import acl, eas, snapshots, streamstore
from ...fs.caseindex import fold
from ...fs.descriptors import store_new
from ...fs.streamstore import Stream
from ...fs.vfs import ShareFS, status_from_oserror
from ...protocol.constants import (
    AccessMask,
    CreateAction,
    CreateDisposition,
    CreateOptions,
    Dialect,
    FileAttributes,
    HeaderFlags,
    ImpersonationLevel,
    NtStatusError,
    OplockLevel,
    Status,
)
from ...protocol.contexts import build_create_contexts, parse_create_contexts
from ...protocol.fileinfo import FileInfo
from ...protocol.wire import check_size
from ...rpc import PIPE_NAMES, Caller, open_pipe, server_view
from .. import durable, opens, security, streams
from ..channels import HANDOFF_WAIT
from ..context import Reply, RequestContext
from ..limits import log_limit
from ..replay import ReplayCache, ReplayKey, replay_bus_key
from ..state import Open

log = logging.getLogger("smbgw.create")

_REQ = struct.Struct("<HBBIQQIIIIIHHII")
_RESP = struct.Struct("<HBBIQQQQQQIIQQII")

LEASE_FLAG_BREAK_IN_PROGRESS = 0x02
LEASE_FLAG_PARENT_LEASE_KEY_SET = 0x04
_VALID_OPTIONS = 0x00FFFFFF


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
        contexts=parse_create_contexts(body, ctx_off, ctx_len, _REQ.size),
    )


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
    _check_open_limits(ctx)
    req = parse_create(ctx.body)
    ask, reclaim = durable.parse(
        req.contexts, ctx.conn.codec.dialect, int(ctx.node.config.durable_timeout * 1000)
    )
    if reclaim is not None and tree.fs is not None:
        # A reconnect names the handle; the rest of the request is not checked.
        return await _reconnect(ctx, req, reclaim)
    _validate(req)
    if tree.fs is None:
        return _open_pipe(ctx, req)
    return await _open_file_once(ctx, req, ask)


async def _open_file_once(
    ctx: RequestContext, req: CreateRequest, ask: durable.DurableAsk | None
) -> Reply:
    """``_open_file``, done once per (ClientGuid, CreateGuid) of a DH2Q: a
    replay gets the open back instead of a second one (gateway.smb.replay)."""
    key = None
    if ask is not None and ask.version == 2:
        key = ReplayCache.key(ctx.conn.client_guid, ask.create_guid)
    if key is None:
        return (await _open_file(ctx, req, ask))[0]
    replays = ctx.node.replays
    replayed = bool(ctx.header.flags & HeaderFlags.REPLAY_OPERATION)
    known, op = replays.lookup(key)
    if known:
        if op is None:
            status = Status.FILE_NOT_AVAILABLE if replayed else Status.DUPLICATE_OBJECTID
            raise NtStatusError(status, "the create with this CreateGuid still runs")
        if not replayed:
            raise NtStatusError(Status.DUPLICATE_OBJECTID, "CreateGuid of an open handle")
        return await _replayed(ctx, req, op)
    # Its open may wait on the bus, disconnected (a persistent handle whose
    # connection or node went: smbtorture smb2.replay.replay5).
    found = await ctx.node.bus.find_replayable(replay_bus_key(key))
    if found is not None:
        if not replayed:
            raise NtStatusError(Status.DUPLICATE_OBJECTID, "CreateGuid of a disconnected handle")
        return await _replayed_from_bus(ctx, req, key, found)
    replays.begin(key)
    try:
        reply, op = await _open_file(ctx, req, ask)
    except BaseException:
        replays.abandon(key)
        raise
    replays.made(key, op)
    if op.connection is not None and op.connection.closed:
        await opens.close(ctx.node, op)  # its channel dropped and no other is left
    return reply


async def _replayed_from_bus(
    ctx: RequestContext, req: CreateRequest, key: ReplayKey, found: bus_api.DisconnectedOpen
) -> Reply:
    """A replayed CREATE whose open waits on the bus: taken over, as a
    reconnect would, then answered as the first time."""
    held = _Held.kept(found)
    session = ctx.session
    assert session is not None
    if (held.user, held.domain) != (session.username.lower(), session.domain.lower()):
        raise NtStatusError(Status.ACCESS_DENIED, "replay of another user's create")
    op = await _adopt(ctx, found, held, int(found.reclaim["persistent_id"]), ctx.node.next_id())
    opens.register(ctx.conn, op)
    ctx.node.replays.made(key, op)
    return await _replayed(ctx, req, op)


async def _replayed(ctx: RequestContext, req: CreateRequest, op: Open) -> Reply:
    """A replayed CREATE gets the open it made, answered as then; its oplock
    as far as the replay asks for one (MS-SMB2 3.3.5.9.10; smbtorture
    smb2.replay.replay-dhv2-*)."""
    tree = ctx.require_tree()
    assert tree.fs is not None
    if op.tree.session is not ctx.session:
        raise NtStatusError(Status.ACCESS_DENIED, "replay from another session")
    lease_req = _lease_request(ctx, req)
    if (lease_req is None) != (op.lease_key is None) or (
        lease_req is not None and lease_req.key.key != op.lease_key
    ):
        raise NtStatusError(Status.ACCESS_DENIED, "replay asks other caching")
    info = streams.stat_open(tree.fs, op)
    contexts = _held_lease_contexts(ctx, req, op, info, lease_req)
    oplock: int = OplockLevel.LEASE
    if lease_req is None:
        oplock = op.oplock_level if req.oplock != OplockLevel.NONE else OplockLevel.NONE
    if op.durable and (op.persistent or oplock in (OplockLevel.BATCH, OplockLevel.LEASE)):
        contexts += durable.granted_context(op)
    return _create_reply(op, info, op.create_action, oplock, contexts)


def _check_open_limits(ctx: RequestContext) -> None:
    """One client must not hold every descriptor of the node (smbd answers so too)."""
    config = ctx.node.config
    if len(ctx.conn.opens) >= config.max_opens_per_connection:
        limit = "max_opens_per_connection"
    elif ctx.require_tree().session.open_count >= config.max_opens_per_session:
        limit = "max_opens_per_session"  # one session may span several connections
    elif config.max_opens_per_node and len(ctx.node.opens) >= config.max_opens_per_node:
        limit = "max_opens_per_node"
    else:
        return
    log_limit(ctx.conn.peer, limit)
    raise NtStatusError(Status.TOO_MANY_OPENED_FILES, limit)


def _open_pipe(ctx: RequestContext, req: CreateRequest) -> Reply:
    name = req.name.lstrip("\\").lower()
    session = ctx.session
    if name not in PIPE_NAMES or session is None:
        raise NtStatusError(Status.OBJECT_NAME_NOT_FOUND)
    node = ctx.node
    tree = ctx.require_tree()
    caller = Caller(session.username, session.is_guest or session.is_anonymous)
    pipe = open_pipe(name, server_view(node.config), caller)
    assert pipe is not None
    op = Open(
        persistent_id=node.next_id(),
        volatile_id=node.next_id(),
        tree=tree,
        smb_name=name,
        host_path="",
        is_dir=False,
        access=acl.map_generic(req.access),
        share_access=req.share,
        create_options=req.options,
        pipe=pipe,
        connection=ctx.conn,
    )
    opens.register(ctx.conn, op)
    body = _RESP.pack(89, 0, 0, CreateAction.OPENED, 0, 0, 0, 0, 4096, 0, 0x80, 0,
                      op.persistent_id, op.volatile_id, 0, 0)  # fmt: skip
    return Reply(Status.SUCCESS, body, file_id=op.file_id)


def _granted_access(req: CreateRequest, maximal: int, info: FileInfo | None) -> int:
    maximal_here = maximal
    if info is not None and info.attributes & FileAttributes.READONLY:
        maximal_here &= ~(AccessMask.FILE_WRITE_DATA | AccessMask.FILE_APPEND_DATA)
    if req.access & AccessMask.MAXIMUM_ALLOWED:
        # Rights named beside MAXIMUM_ALLOWED must still be granted (smb2.acls.MXAC-NOT-GRANTED).
        wanted = acl.map_generic(req.access & ~AccessMask.MAXIMUM_ALLOWED)
        if wanted & ~maximal_here & ~AccessMask.SYNCHRONIZE:
            raise NtStatusError(Status.ACCESS_DENIED)
        return maximal_here | wanted
    wanted = acl.map_generic(req.access)
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


@dataclass(slots=True)
class _Target:
    """What a CREATE's name resolves to, checked, before anything is made or opened."""

    path: str
    info: FileInfo | None  # None: nothing has that name yet
    stream: Stream | None
    access: int  # what the open is granted
    new_sd: bytes | None  # the descriptor of what the CREATE makes
    snapshot: snapshots.Version | None = None  # a previous version (TWrp): read only


class _CreatedMeanwhile(Exception):
    """Another client created the name between our lookup and our create."""


async def _open_file(
    ctx: RequestContext, req: CreateRequest, ask: durable.DurableAsk | None
) -> tuple[Reply, Open]:
    """Open or create by name.

    Two races start it again. The name may appear between the lookup and the
    create: it is then opened as existing, checked against its own descriptor.
    The open we waited for may delete the file as it closes (delete on close of
    a purged durable handle, say): the CREATE looks the name up once more.
    """
    tree = ctx.require_tree()
    fs = tree.fs
    assert fs is not None
    req, snapshot = _timewarp(ctx, req, fs)
    if snapshot is not None:
        fs, ask = snapshot.fs, None  # a previous version is opened read only, never durable
    ext_a = req.contexts.get(b"ExtA")
    new_eas = eas.parse_full(ext_a) if ext_a is not None else None  # kept if it creates
    may_retry_unlinked = True
    while True:
        target = _resolve(ctx, req, fs)
        if snapshot is not None:
            # Asked for or not, nothing that writes is granted: the WRITE
            # command says MEDIA_WRITE_PROTECTED (smbtorture smb2.twrp.write).
            target.snapshot = snapshot
            target.access &= ~_WRITES
        try:
            created = _create(req, target, fs)
        except _CreatedMeanwhile:
            continue
        fd = _open_target(req, target)
        op, info, result, lease_req = await _bus_open(ctx, req, target, fd, created, ask)
        if may_retry_unlinked and _unlinked(fd):
            may_retry_unlinked = False
            await opens.close(ctx.node, op)
            continue
        break
    op.oplock_level = result.oplock
    if result.oplock != OplockLevel.LEASE:
        op.lease_key = None
    if lease_req is not None and result.oplock == OplockLevel.LEASE:
        opens.set_lease_state(
            ctx.node, op.client_guid, lease_req.key.key, result.lease_state, result.lease_epoch
        )
    overwrite = _overwrites(req, created)
    try:
        info = _prepare(req, target, fs, fd, info, created, overwrite, new_eas)
    except OSError as e:
        await opens.close(ctx.node, op)
        raise NtStatusError(status_from_oserror(e)) from None
    except NtStatusError:
        await opens.close(ctx.node, op)
        raise
    if req.options & CreateOptions.DELETE_ON_CLOSE:
        if info.attributes & FileAttributes.READONLY:
            await opens.close(ctx.node, op)
            raise NtStatusError(Status.CANNOT_DELETE)
        op.delete_on_close = True
    opens.register(ctx.conn, op)
    if created and (target.stream is None or target.stream.base_created):
        ctx.node.notify_change(tree, op.host_path, "added", info.is_dir)
    elif overwrite:
        ctx.node.notify_change(tree, op.host_path, "modified", False)
    if created:
        action = CreateAction.CREATED
    elif overwrite and req.disposition == CreateDisposition.SUPERSEDE:
        action = CreateAction.SUPERSEDED
    elif overwrite:
        action = CreateAction.OVERWRITTEN
    else:
        action = CreateAction.OPENED
    op.create_action = action
    op.channel_sequence = ctx.header.status & 0xFFFF
    contexts = _response_contexts(ctx, req, op, info, result, lease_req)
    contexts += durable.grant(ask, op, result.lease_state, _continuously_available(ctx))
    oplock = result.oplock if result.oplock != OplockLevel.LEASE or lease_req else 0
    return _create_reply(op, info, action, oplock, contexts), op


_WRITES = (
    AccessMask.FILE_WRITE_DATA | AccessMask.FILE_APPEND_DATA | AccessMask.FILE_WRITE_EA
    | AccessMask.FILE_WRITE_ATTRIBUTES | AccessMask.DELETE | AccessMask.WRITE_DAC
    | AccessMask.WRITE_OWNER | AccessMask.FILE_DELETE_CHILD
)  # fmt: skip


def _timewarp(
    ctx: RequestContext, req: CreateRequest, fs: ShareFS
) -> tuple[CreateRequest, snapshots.Version | None]:
    """The request without its @GMT component, and the snapshot's tree it names
    (TWrp context, MS-SMB2 2.2.13.2.7, or ``@GMT-...`` in the path); None: the live tree.

    Checked before the name is looked up, with the statuses smbd's
    vfs_shadow_copy2 gives on a read-only snapshot: a name not in the snapshot
    (or no snapshot at that time) is not found, whatever the disposition; an
    open that would overwrite or delete is MEDIA_WRITE_PROTECTED. One that asks
    for write access is let in without it, as smbd lets it in.
    """
    name, token = snapshots.split_token(req.name)
    raw = req.contexts.get(b"TWrp")
    if raw is not None:
        if len(raw) < 8:
            raise NtStatusError(Status.INVALID_PARAMETER, "short TWrp context")
        token = snapshots.token_of(struct.unpack_from("<Q", raw)[0])
    elif token is None:
        return req, None
    folder = ctx.require_tree().share.snapshots
    snapshot = None
    if token is not None and folder is not None:
        snapshot = snapshots.of_share(fs, folder).version(token)
    deep = len([p for p in name.split("\\") if p]) > 1
    if snapshot is None:
        raise NtStatusError(
            Status.OBJECT_PATH_NOT_FOUND if deep else Status.OBJECT_NAME_NOT_FOUND,
            "no snapshot at that time",
        )
    if ":" not in name and snapshot.fs.lookup(name)[1] is None:
        raise NtStatusError(Status.OBJECT_NAME_NOT_FOUND, "not in that snapshot")
    if req.options & CreateOptions.DELETE_ON_CLOSE or req.disposition not in (
        CreateDisposition.OPEN, CreateDisposition.OPEN_IF,
    ):  # fmt: skip
        raise NtStatusError(Status.MEDIA_WRITE_PROTECTED, "snapshots are read only")
    return replace(req, name=name), snapshot


def _resolve(ctx: RequestContext, req: CreateRequest, fs: ShareFS) -> _Target:
    """Look the name up and check the disposition and the user's rights."""
    tree = ctx.require_tree()
    stream = streamstore.parse(fs, req.name, req.options)
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
    if stream is not None and info is None and acl_info is not None:
        # Adding a stream writes to its file: NTFS asks FILE_WRITE_DATA of the
        # file, whatever the opener asks for itself.
        _granted_access(replace(req, access=AccessMask.FILE_WRITE_DATA), maximal, acl_info)
    if tree.share.read_only and (disp != CreateDisposition.OPEN or info is None):
        if info is None or disp != CreateDisposition.OPEN_IF:
            raise NtStatusError(Status.MEDIA_WRITE_PROTECTED)
    return _Target(path, info, stream, access, new_sd)


def _create(req: CreateRequest, target: _Target, fs: ShareFS) -> bool:
    """Make the file, directory or stream if the name is free; whether it did."""
    if target.info is not None:
        return False
    opts = req.options
    if opts & CreateOptions.DELETE_ON_CLOSE and req.attributes & FileAttributes.READONLY:
        # MS-FSA 2.1.5.1.2.1: refused before anything is created.
        raise NtStatusError(Status.CANNOT_DELETE)
    is_dir = bool(opts & CreateOptions.DIRECTORY_FILE)
    try:
        if target.stream is not None:
            target.path = target.stream.create(req.attributes, target.new_sd)
        elif is_dir:
            os.mkdir(target.path, 0o777)
        else:
            flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC
            os.close(os.open(target.path, flags, 0o666))
    except FileExistsError:
        if req.disposition == CreateDisposition.CREATE:
            raise NtStatusError(Status.OBJECT_NAME_COLLISION) from None
        raise _CreatedMeanwhile from None
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise NtStatusError(Status.OBJECT_PATH_NOT_FOUND) from None
        raise NtStatusError(status_from_oserror(e)) from None
    if target.new_sd is not None and target.stream is None:
        try:
            store_new(fs, target.path, target.new_sd)
        except OSError:
            _remove_created(target.path, is_dir)
            raise
    return True


def _open_target(req: CreateRequest, target: _Target) -> int:
    """The descriptor of the handle (read-write, read-only, or O_PATH for metadata)."""
    opts = req.options
    try:
        return _open_fd(
            target.path, _open_flags(target.access, bool(opts & CreateOptions.DIRECTORY_FILE))
        )
    except IsADirectoryError:
        if opts & CreateOptions.NON_DIRECTORY_FILE:
            raise NtStatusError(Status.FILE_IS_A_DIRECTORY) from None
        return _open_fd(target.path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise NtStatusError(status_from_oserror(e)) from None


def _continuously_available(ctx: RequestContext) -> bool:
    tree = ctx.require_tree()
    return tree.share.continuous_availability and ctx.conn.codec.dialect >= Dialect.SMB3_0


async def _bus_open(
    ctx: RequestContext,
    req: CreateRequest,
    target: _Target,
    fd: int,
    created: bool,
    ask: durable.DurableAsk | None,
) -> tuple[Open, FileInfo, bus_api.OpenResult, bus_api.LeaseRequest | None]:
    """Make the handle and enter it on the bus (share modes, oplock or lease).

    Refused, cancelled or failed, the descriptor is closed and what the CREATE
    made is removed again.
    """
    node = ctx.node
    tree = ctx.require_tree()
    # A snapshot's files carry its own volume id: the bus never takes them for the live ones.
    fs = target.snapshot.fs if target.snapshot is not None else tree.fs
    assert fs is not None
    stream = target.stream
    op: Open | None = None
    try:
        info = fs.stat_fd(fd) if stream is None else stream.stat(fs, fd)
        op = Open(
            persistent_id=durable.new_persistent_id(),
            volatile_id=node.next_id(),
            tree=tree,
            smb_name=req.name,
            host_path=target.path,
            is_dir=info.is_dir,
            access=target.access,
            share_access=req.share,
            create_options=req.options,
            file_key=info.file_key,
            fd=fd,
            connection=ctx.conn,
            client_guid=ctx.conn.client_guid,
            snapshot=None if target.snapshot is None else target.snapshot.token,
        )
        op.bus_open_id = f"{node.node_id}/{op.persistent_id}"
        if stream is not None:
            streams.attach(stream, op, info)
        # Directories still pass their lease key: the bus checks it is not bound
        # to another file, and grants directories nothing.
        lease_req = _lease_request(ctx, req)
        oplock = req.oplock if not info.is_dir or lease_req is not None else 0
        if oplock == OplockLevel.LEASE and lease_req is None:
            oplock = 0
        overwrite = _overwrites(req, created)
        bus_req = bus_api.OpenRequest(
            open_id=op.bus_open_id,
            node_id=node.node_id,
            file=op.file_key,
            access=target.access,
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
        if ask is not None and stream is None:
            # The bus keeps it past this node's death if it becomes durable.
            bus_req = replace(
                bus_req,
                durable_ms=ask.timeout(),
                persistent=durable.persistent(ask, _continuously_available(ctx)),
                durable_key=durable.durable_key(op.persistent_id),
                reclaim=durable.reclaim_data(op, ask),
            )
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
            _remove_created(target.path, info.is_dir)
        raise NtStatusError(result.status)
    return op, info, result, lease_req


def _overwrites(req: CreateRequest, created: bool) -> bool:
    return not created and req.disposition in (
        CreateDisposition.OVERWRITE,
        CreateDisposition.OVERWRITE_IF,
        CreateDisposition.SUPERSEDE,
    )


def _prepare(
    req: CreateRequest,
    target: _Target,
    fs: ShareFS,
    fd: int,
    info: FileInfo,
    created: bool,
    overwrite: bool,
    new_eas: list[eas.Ea] | None,
) -> FileInfo:
    """Truncate what is overwritten, set a new file's attributes and EAs; the file now."""
    path, stream = target.path, target.stream
    if overwrite:
        # By path: an attributes-only open may overwrite (its fd is read-only).
        os.truncate(path, 0)
        if stream is None:
            streamstore.remove_all(fs, path, fd)  # the file's named streams go with its data
    if (created or overwrite) and stream is None:
        attrs = req.attributes & ~FileAttributes.NORMAL
        if not info.is_dir:
            attrs |= FileAttributes.ARCHIVE  # NTFS marks new and rewritten files
        fs.set_attributes(path, attrs, is_dir=info.is_dir)
        if new_eas is not None:
            eas.write(path, eas.merged([], new_eas))
    return fs.stat_fd(fd) if stream is None else stream.stat(fs, fd)


@dataclass(frozen=True, slots=True)
class _Held:
    """Whom a durable handle may go back to (MS-SMB2 3.3.5.9.7/12), wherever it is kept."""

    share: str  # lower case
    create_guid: bytes
    lease_key: bytes | None
    client_guid: bytes
    name: str
    user: str  # lower case, as domain
    domain: str
    persistent: bool

    @classmethod
    def of(cls, op: Open) -> _Held:
        owner = op.tree.session
        return cls(
            op.tree.share.name.lower(), op.create_guid, op.lease_key, op.client_guid,
            op.smb_name, owner.username.lower(), owner.domain.lower(), op.persistent,
        )  # fmt: skip

    @classmethod
    def kept(cls, found: bus_api.DisconnectedOpen) -> _Held:
        d = found.reclaim
        lease_key = d["lease_key"] if found.oplock == OplockLevel.LEASE else None
        return cls(
            d["share"], bytes.fromhex(d["create_guid"]),
            bytes.fromhex(lease_key) if lease_key else None,
            bytes.fromhex(d["client_guid"]), d["name"], d["user"], d["domain"],
            found.persistent,
        )  # fmt: skip


def _check_reclaim(
    ctx: RequestContext, req: CreateRequest, reclaim: durable.Reclaim, held: _Held
) -> bus_api.LeaseRequest | None:
    """Refuse a reconnect the handle's owner did not send; its lease request."""
    tree = ctx.require_tree()
    session = ctx.session
    assert session is not None
    if held.share != tree.share.name.lower():
        raise NtStatusError(Status.OBJECT_NAME_NOT_FOUND, "no such durable handle")
    if reclaim.version == 2 and held.create_guid != reclaim.create_guid:
        raise NtStatusError(Status.OBJECT_NAME_NOT_FOUND, "CreateGuid differs")
    if reclaim.version == 2 and held.persistent != reclaim.persistent:
        # MS-SMB2 3.3.5.9.12: a persistent handle is reclaimed as one, and
        # only one (pike's durable and persistent tests, as Windows answers).
        if held.persistent:
            raise NtStatusError(Status.OBJECT_NAME_NOT_FOUND, "persistent flag missing")
        raise NtStatusError(Status.INVALID_PARAMETER, "persistent flag on a durable handle")
    # A reconnect's RequestedOplockLevel is ignored; only the lease key counts.
    lease_req = _lease_request(ctx, req, any_level=True)
    if held.lease_key is None:
        if lease_req is not None:
            raise NtStatusError(Status.OBJECT_NAME_NOT_FOUND, "lease on an oplock handle")
    elif (
        lease_req is None
        or lease_req.key.key != held.lease_key
        or ctx.conn.client_guid != held.client_guid
    ):
        raise NtStatusError(Status.OBJECT_NAME_NOT_FOUND, "lease key differs")
    elif _name_key(req.name) != _name_key(held.name):
        # With a lease the name must match too (MS-SMB2 3.3.5.9.7; Windows
        # answers INVALID_PARAMETER, unlike for an oplock handle).
        raise NtStatusError(Status.INVALID_PARAMETER, "lease reconnect for another name")
    if (held.user, held.domain) != (session.username.lower(), session.domain.lower()):
        raise NtStatusError(Status.ACCESS_DENIED, "durable handle of another user")
    return lease_req


async def _reconnect(ctx: RequestContext, req: CreateRequest, reclaim: durable.Reclaim) -> Reply:
    """Give a parked durable handle to the client reconnecting for it (3.3.5.9.7/12)."""
    node = ctx.node
    tree = ctx.require_tree()
    assert tree.fs is not None
    op = node.durable.find(reclaim.persistent_id)
    if op is None:
        return await _take_over(ctx, req, reclaim)
    lease_req = _check_reclaim(ctx, req, reclaim, _Held.of(op))
    node.durable.take(reclaim.persistent_id)
    op.tree = tree
    op.connection = ctx.conn
    op.volatile_id = _volatile_id(ctx, reclaim)
    return await _reconnected(ctx, req, op, lease_req)


def _volatile_id(ctx: RequestContext, reclaim: durable.Reclaim) -> int:
    """The reconnected handle's volatile FileId: the one the client knows,
    unless it is taken in this session (it may come from another node)."""
    session = ctx.session
    assert session is not None
    taken = any(reclaim.volatile_id in c.opens for c in [ctx.conn, *session.channels])
    return ctx.node.next_id() if taken or not reclaim.volatile_id else reclaim.volatile_id


async def _reconnected(
    ctx: RequestContext, req: CreateRequest, op: Open, lease_req: bus_api.LeaseRequest | None
) -> Reply:
    tree = ctx.require_tree()
    assert tree.fs is not None
    opens.register(ctx.conn, op)
    try:
        info = streams.stat_open(tree.fs, op)
    except OSError as e:
        await opens.close(ctx.node, op)
        raise NtStatusError(status_from_oserror(e)) from None
    contexts = _held_lease_contexts(ctx, req, op, info, lease_req)
    # No durable context in the reply: the handle is simply back (smbtorture
    # smb2.durable-open.reopen2a, smb2.durable-v2-open.reopen2).
    return _create_reply(op, info, CreateAction.OPENED, op.oplock_level, contexts)


async def _take_over(ctx: RequestContext, req: CreateRequest, reclaim: durable.Reclaim) -> Reply:
    """Reconnect to a durable handle whose connection dropped, here or on
    another node, or whose node died: the bus kept it, disconnected, with
    its share mode, lease and locks; this node reopens the file and becomes
    its owner."""
    found = await _find_disconnected(ctx, durable.durable_key(reclaim.persistent_id), req)
    if found is None:
        raise NtStatusError(Status.OBJECT_NAME_NOT_FOUND, "no such durable handle")
    held = _Held.kept(found)
    lease_req = _check_reclaim(ctx, req, reclaim, held)
    op = await _adopt(ctx, found, held, reclaim.persistent_id, _volatile_id(ctx, reclaim))
    return await _reconnected(ctx, req, op, lease_req)


async def _adopt(
    ctx: RequestContext,
    found: bus_api.DisconnectedOpen,
    held: _Held,
    persistent_id: int,
    volatile_id: int,
) -> Open:
    """Reopen the file of a disconnected open the checks gave to this
    client, and take the open over on the bus: this node becomes its owner."""
    node = ctx.node
    tree = ctx.require_tree()
    fs = tree.fs
    assert fs is not None
    kept = found.reclaim
    path, info = fs.lookup(held.name)
    if info is None or info.file_key != found.file:
        raise NtStatusError(Status.OBJECT_NAME_NOT_FOUND, "the durable handle's file is gone")
    fd = _open_fd(path, _open_flags(kept["access"], info.is_dir))
    op = Open(
        persistent_id=persistent_id,
        volatile_id=volatile_id,
        tree=tree,
        smb_name=held.name,
        host_path=path,
        is_dir=info.is_dir,
        access=kept["access"],
        share_access=kept["share_access"],
        create_options=kept["options"],
        file_key=found.file,
        fd=fd,
        connection=ctx.conn,
        client_guid=held.client_guid,
        oplock_level=found.oplock,
        lease_key=held.lease_key,
        lease_version=kept["lease_version"],
        delete_on_close=bool(kept["options"] & CreateOptions.DELETE_ON_CLOSE),
        durable=kept.get("durable", True),
        persistent=found.persistent,
        durable_timeout_ms=kept["timeout_ms"],
        resilient=bool(kept.get("resilient_ms")),
        resilient_timeout_ms=kept.get("resilient_ms", 0),
        create_guid=held.create_guid,
        position=kept.get("position", 0),
        create_action=kept.get("create_action", CreateAction.OPENED),
        lock_sequences=dict(found.lock_sequences),
    )
    op.bus_open_id = f"{node.node_id}/{op.persistent_id}"
    node.opens[op.bus_open_id] = op  # a break decided meanwhile must find it
    try:
        taken = await node.bus.reconnect(found, op.bus_open_id, node.node_id)
        if taken is None:
            raise NtStatusError(Status.OBJECT_NAME_NOT_FOUND, "taken or expired meanwhile")
    except BaseException:
        node.opens.pop(op.bus_open_id, None)
        op.close_fd()
        raise
    op.oplock_level = taken.oplock
    if held.lease_key is not None:
        opens.set_lease_state(
            node, held.client_guid, held.lease_key, taken.lease_state, taken.lease_epoch
        )
    log.debug("durable handle %s of %s taken over", op.bus_open_id, held.name)
    return op


async def _find_disconnected(
    ctx: RequestContext, key: str, req: CreateRequest
) -> bus_api.DisconnectedOpen | None:
    """The disconnected open ``key`` names; while the session this one
    replaced is still being ended on another node, wait for its handles.

    A reconnect may also overtake the hand-over itself: the client saw its
    connection drop before the node holding the handle did (or before the
    bus declared that node dead). While the bus still shows the open
    connected on another connection (found through the file the request
    names, or its lease), wait for it a bounded time
    (``HANDOFF_WAIT``), rather than answer NOT_FOUND to a handle about to be
    reclaimable."""
    session = ctx.session
    assert session is not None
    bus = ctx.node.bus
    until = session.handoff_until
    file_key: str | None = None
    while True:
        found = await bus.find_disconnected(key)
        if found is not None:
            return found
        now = time.monotonic()
        if file_key is None and now >= until:
            file_key = await _file_key_of(ctx, req)
            until = now + HANDOFF_WAIT
        if file_key is not None and (
            now >= until or not file_key or not await _handed_over_soon(ctx, file_key, key)
        ):
            # It may have been handed over between the two looks.
            return await bus.find_disconnected(key) if file_key else None
        await asyncio.sleep(0.02)


async def _file_key_of(ctx: RequestContext, req: CreateRequest) -> str:
    """The file a reconnect names, or its lease is bound to: only a hint (a
    reconnect's name is ignored for an oplock handle); "" if none."""
    fs = ctx.require_tree().fs
    assert fs is not None
    try:
        _path, info = fs.lookup(req.name)
    except (NtStatusError, OSError):
        info = None
    if info is not None:
        return info.file_key
    try:
        lease_req = _lease_request(ctx, req, any_level=True)
    except NtStatusError:
        return ""
    if lease_req is None:
        return ""
    return await ctx.node.bus.lease_file(lease_req.key) or ""


async def _handed_over_soon(ctx: RequestContext, file_key: str, key: str) -> bool:
    """Whether the open ``key`` is still connected elsewhere than on this
    request's own connection: on another node, or on another connection of
    this one whose end the node may not have read yet (the client reconnects
    once it saw it)."""
    holder = await ctx.node.bus.find_connected(file_key, key)
    if holder is None:
        return False
    mine = ctx.node.opens.get(holder)
    return mine is None or mine.connection is not ctx.conn


def _name_key(name: str) -> str:
    return fold(name.replace("/", "\\").strip("\\"))


def _create_reply(
    op: Open, info: FileInfo, action: int, oplock: int, contexts: list[tuple[bytes, bytes]]
) -> Reply:
    ctx_bytes = build_create_contexts(contexts)
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


def _held_lease_contexts(
    ctx: RequestContext,
    req: CreateRequest,
    op: Open,
    info: FileInfo,
    lease_req: bus_api.LeaseRequest | None,
) -> list[tuple[bytes, bytes]]:
    """The response contexts of a handle given back (reconnect, replay): its
    lease as it stands, no new grant."""
    if lease_req is None:
        return []
    held = bus_api.OpenResult(
        Status.SUCCESS, OplockLevel.LEASE, op.lease_state, op.lease_epoch,
        lease_version=op.lease_version,
    )  # fmt: skip
    return _response_contexts(ctx, req, op, info, held, lease_req)


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
