"""Named streams as handles see them: their bus identity, the companion opens
that tie them to their file, and deletion or rename while other handles are open.

Names and storage on the volume are ``gateway.fs.streamstore``'s.

Bus identity. A stream is its own file for share modes, oplocks, leases and
byte-range locks: its key is the base file's key plus the stream file's inode
(stable across stream renames). Two companion opens tie it to its base:

- on the base file's key, an attribute-only open (it takes part in no share
  check and breaks nothing): while it lives, a delete-pending base keeps its
  state, so the stream's CREATE and any new open of the base answer
  DELETE_PENDING (MS-FSA 2.1.5.1.2);
- on the base's guard key (``<base key>:streams``), a read open sharing read,
  write and delete only if the stream open shares delete. Opening the base
  for DELETE first opens the guard for DELETE sharing everything (and closes
  it at once): a stream open without FILE_SHARE_DELETE makes that a sharing
  violation, as Windows refuses to open a file for delete then. A guard open
  sharing nothing succeeds only when no stream of the file is open: renaming
  the base needs it (ACCESS_DENIED otherwise, smb2.streams.basefile-rename-
  with-open-stream), and so does deleting the base now.

Deletion. Deleting a stream removes its file. Deleting the base removes the
base and the stream directory; with streams still open the base stays,
marked ``user.smbgw.doomed`` and delete-pending on the bus, until the last
stream handle closes, which finishes the deletion. A mark left by a node that
died is stale: the next stream open that the bus grants removes it.
Overwriting or superseding the base removes its named streams.

Attributes, times, EAs and the security descriptor of a stream are its base file's
(``Open.meta_target``); a write through a stream moves its base's write time
(``gateway.smb.writetime``).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable

from oplock_bus import api as bus_api

from ..fs import streamstore
from ..fs.streamstore import Stream, sidecar_dir, stream_id
from ..fs.vfs import ShareFS
from ..protocol.constants import AccessMask, NtStatusError, Status
from ..protocol.fileinfo import FileInfo
from .buswait import run_bus_call, run_bus_open
from .context import RequestContext
from .services import NodeServices
from .state import Open, TreeConnect

log = logging.getLogger("smbgw.streams")

_SHARE_ALL = 0x7
_SHARE_DELETE = 0x4


def guard_key(base_key: str) -> str:
    """The bus key that stands for "some stream of this file is open"."""
    return f"{base_key}:streams"


def attach(st: Stream, op: Open, base: FileInfo) -> None:
    """Make ``op`` a handle of this stream: its own bus key, the base's path."""
    st.base_key = base.file_key
    op.stream = st
    op.host_path = st.base_path
    op.file_key = streamstore.stream_key(st.base_key, st.ino)


def stat_open(fs: ShareFS, op: Open) -> FileInfo:
    """What a handle reports of its file; a stream's handle, the stream's."""
    if op.stream is not None:
        return op.stream.stat(fs, op.fd)
    return fs.stat_fd(op.fd) if op.fd >= 0 else fs.stat_path(op.host_path)


def stream_information(op: Open) -> bytes:
    """FileStreamInformation of a handle's file (a stream's handle: its base's)."""
    fs = op.tree.fs
    assert fs is not None
    return streamstore.stream_information(fs, op.host_path, op.fd if op.stream is None else -1)


# -- the bus: companions and probes ------------------------------------------------------------


def _request(
    node: NodeServices, open_id: str, key: str, access: int, share: int
) -> bus_api.OpenRequest:
    return bus_api.OpenRequest(
        open_id=open_id, node_id=node.node_id, file=key, access=access, share=share,
        owner_data={"stream_companion": True},
        # The base companion is attribute-only, yet it must keep the base's
        # record (and so its delete-pending state) while the stream is open.
        holds_record=True,
    )  # fmt: skip


async def _probe(node: NodeServices, key: str, access: int, share: int) -> int:
    """Open ``key`` and close it again at once: the status the bus answers."""
    open_id = f"{node.node_id}/probe{node.next_id()}"
    result = await node.bus.open(_request(node, open_id, key, access, share))
    if result.status == Status.SUCCESS:
        await node.bus.close(key, open_id)
    return result.status


async def _no_open_streams(node: NodeServices, base_key: str) -> bool:
    """Whether no stream of the file is open on any node."""
    status = await _probe(node, guard_key(base_key), AccessMask.FILE_READ_DATA
                          | AccessMask.DELETE, 0)  # fmt: skip
    return status == Status.SUCCESS


async def bus_open(ctx: RequestContext, op: Open, req: bus_api.OpenRequest) -> bus_api.OpenResult:
    """CREATE's bus open, with what streams add to it (see the module doc)."""
    node = ctx.node
    st = op.stream
    if st is None:
        if req.access & AccessMask.DELETE and stream_id(op.host_path, op.fd) is not None:
            status = await run_bus_call(ctx, _probe(node, guard_key(op.file_key),
                                                    AccessMask.DELETE, _SHARE_ALL))  # fmt: skip
            if status != Status.SUCCESS:
                return bus_api.OpenResult(status)
        return await run_bus_open(ctx, node.bus, req)
    companions = [
        (st.base_key, f"{op.bus_open_id}+base", AccessMask.FILE_READ_ATTRIBUTES, _SHARE_ALL),
        (guard_key(st.base_key), f"{op.bus_open_id}+guard", AccessMask.FILE_READ_DATA,
         0x3 | req.share & _SHARE_DELETE),
    ]  # fmt: skip
    granted = False
    try:
        for key, open_id, access, share in companions:
            result = await run_bus_open(ctx, node.bus, _request(node, open_id, key, access, share))
            if result.status != Status.SUCCESS:
                return result
            st.companions.append((key, open_id))
        result = await run_bus_open(ctx, node.bus, req)
        granted = result.status == Status.SUCCESS
    finally:
        if not granted:  # refused, or the CREATE was cancelled meanwhile
            await _close_companions(node, st)
    if granted:
        # The bus just granted an open of this file, so it is not delete-pending:
        # a doomed mark is what a node that died before finishing left behind.
        streamstore.clear_doomed(st.base_path)
    return result


async def _close_companions(node: NodeServices, st: Stream) -> None:
    companions, st.companions = st.companions, []
    for key, open_id in companions:
        try:
            await node.bus.close(key, open_id)
        except bus_api.BusUnavailable as e:  # Redis away: told once per outage
            node.bus_outage.failed(e, f"closing {open_id} on the bus")
        except Exception:  # noqa: BLE001 - the handle closes whatever the bus says
            log.exception("bus close of %s failed", open_id)


# -- close and delete ------------------------------------------------------------------


async def defer_delete(node: NodeServices, op: Open) -> bool:
    """Before a delete-on-close base handle leaves the bus: True when streams of
    the file are still open, so the base must stay (delete-pending) until they close."""
    if op.stream is not None or not op.host_path or stream_id(op.host_path) is None:
        return False
    # The mark goes first, so a stream closing from now on sees it; and again
    # once the bus refuses new opens, in case a stream open granted meanwhile
    # took it for a stale one.
    if not streamstore.mark_doomed(op.host_path):
        return False
    try:
        if await _no_open_streams(node, op.file_key):
            streamstore.clear_doomed(op.host_path)
            return False
        await node.bus.set_delete_pending(op.file_key, True)
    except Exception:  # noqa: BLE001 - the handle closes whatever the bus says
        log.exception("deferring the delete of %s failed", op.host_path)
        streamstore.clear_doomed(op.host_path)
        return False
    return streamstore.mark_doomed(op.host_path)


async def closed(node: NodeServices, op: Open, delete: bool) -> bool:
    """After a handle left the bus: what streams do at close. True when nothing
    is left for the caller (a stream handle; a base deleted with its streams)."""
    st = op.stream
    fs = op.tree.fs
    if st is None:
        if not delete or fs is None or not op.host_path:
            return False
        sid = stream_id(op.host_path)
        if sid is None:
            return False
        _remove_base(node, op.tree, op.host_path, op.is_dir, sid)
        return True
    await _close_companions(node, st)
    if delete:
        path = st.locate()
        if path is not None:
            try:
                os.unlink(path)
            except OSError as e:
                log.info("delete-on-close of stream %s failed: %s", path, e)
    if fs is not None and streamstore.is_doomed(st.base_path):
        await _finish_deferred_delete(node, op.tree, st)
    return True


async def _finish_deferred_delete(node: NodeServices, tree: TreeConnect, st: Stream) -> None:
    """The file was deleted while streams were open: the last one out removes it."""
    try:
        if not await _no_open_streams(node, st.base_key):
            return
    except Exception:  # noqa: BLE001 - the handle closes whatever the bus says
        log.exception("finishing the delete of %s failed", st.base_path)
        return
    sid = stream_id(st.base_path)
    if sid is not None:
        _remove_base(node, tree, st.base_path, bool(st.base_info and st.base_info.is_dir), sid)


def _remove_base(node: NodeServices, tree: TreeConnect, path: str, is_dir: bool, sid: str) -> None:
    fs = tree.fs
    assert fs is not None
    if streamstore.remove_base(fs, path, is_dir, sid):
        node.notify_change(tree, path, "removed", is_dir)


# -- rename ---------------------------------------------------------------------------


async def before_base_rename(
    ctx: RequestContext, op: Open, replaced: str | None
) -> Callable[[], None]:
    """A file with open streams cannot be renamed (ACCESS_DENIED, as Windows);
    the returned call drops the streams of the file the rename replaces."""
    fs = op.tree.fs
    assert fs is not None
    if stream_id(op.host_path, op.fd) is not None:
        if not await run_bus_call(ctx, _no_open_streams(ctx.node, op.file_key)):
            raise NtStatusError(Status.ACCESS_DENIED, "the file has open streams")
    gone: str | None = None
    if replaced is not None:
        try:
            if os.lstat(replaced).st_nlink == 1:
                gone = stream_id(replaced)
        except OSError:
            gone = None

    def cleanup() -> None:
        if gone is not None:
            shutil.rmtree(sidecar_dir(fs, gone), ignore_errors=True)

    return cleanup


async def rename(ctx: RequestContext, op: Open, target: str, replace_existing: bool) -> None:
    """FileRenameInformation on a stream handle, or to a stream (MS-FSA 2.1.5.15.11.1)."""
    st = op.stream
    if st is None:
        # The default stream stays the file's: only ``::$DATA`` (itself) is a no-op.
        if streamstore.parse_new_name(target) or op.is_dir:
            raise NtStatusError(Status.INVALID_PARAMETER, "renaming the default stream")
        return
    if not target.startswith(":"):
        # A stream moves only within its file (Windows answers a path so).
        raise NtStatusError(Status.SHARING_VIOLATION, "a stream cannot leave its file")
    name = streamstore.parse_new_name(target)
    await run_bus_call(
        ctx, ctx.node.bus.break_for(op.file_key, op.bus_open_id, bus_api.Operation.RENAME)
    )
    new = streamstore.rename(st, name, replace_existing)
    if not new:
        return  # the stream became the file's data
    for other in ctx.node.opens.values():
        if other.stream is not None and other.file_key == op.file_key:
            other.stream.name, other.stream.path = name, new
            other.smb_name = f"{other.stream.base_name}:{name}"
