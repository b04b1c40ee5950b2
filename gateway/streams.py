"""Alternate data streams (``file:stream:$DATA``), kept on the volume.

Names (MS-FSCC 2.1.5.3/2.1.5.4). The last component of a CREATE name may be
``base:stream`` or ``base:stream:$DATA``; ``base::$DATA`` is the file itself.
A stream name holds any character but NUL, ``\\``, ``/`` and ``:`` (control
characters and wildcards included), at most 255 of them, compared without
regard to case. Any other type than ``$DATA`` (any case), an empty name with
no type (``file:``), an empty type (``file:s:``) or more colons are
OBJECT_NAME_INVALID, as Windows and Samba answer; a stream asked for as a
directory is NOT_A_DIRECTORY, and ``dir::$DATA`` FILE_IS_A_DIRECTORY.

Storage. xattrs were not used for the data: ext4 caps a value at one block
(~4 KiB, 64 KiB elsewhere), far below what applications put in streams. Each
stream is a regular file of a hidden per-share sidecar tree::

    <share root>/.smbgw:streams/<id[:2]>/<id>/<encoded lower-case stream name>

``<id>`` is 16 random bytes (hex) kept in the base file's ``user.smbgw.streams``
xattr, created with XATTR_CREATE so two nodes adding the first stream at once
agree. The id lives on the inode, so it survives renames and hard links of the
base (streams belong to the file, as on NTFS); a new file that reuses a freed
inode number has no xattr, so it never inherits a dead file's streams. The
stream file keeps the name as the client spelled it in ``user.smbgw.stream_name``
(the file name itself is lower-case, percent-encoded, or a hash when long).
``.smbgw:streams`` contains ``:``, which no SMB path component may: listings
leave it out (``vfs.listable``) and no name can reach it. Every node reads the
same tree, so a stream written through one node reads back through another.

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
(``gateway.writetime``).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING
from urllib.parse import unquote

from oplock_bus import api as bus_api

from . import security
from .handlers.breaks import run_bus_call, run_bus_open
from .protocol import infoclass
from .protocol.constants import (
    AccessMask,
    CreateOptions,
    FileAttributes,
    NtStatusError,
    Status,
)
from .vfs import FileInfo, FsError, ShareFS, split_name

if TYPE_CHECKING:
    from .context import RequestContext
    from .node import Node
    from .state import Open, TreeConnect

log = logging.getLogger("smbgw.streams")

SIDECAR = ".smbgw:streams"
XATTR_ID = "user.smbgw.streams"
XATTR_NAME = "user.smbgw.stream_name"
XATTR_DOOMED = "user.smbgw.doomed"
MAX_NAME = 255  # UTF-16 units, as NTFS
DATA_TYPE = "$DATA"

_SHARE_ALL = 0x7
_SHARE_DELETE = 0x4
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
_MAX_ENCODED = 200
_INVALID_IN_NAME = frozenset("\x00/\\")
_HAVE_PROC_FD = os.path.isdir("/proc/self/fd")


def guard_key(base_key: str) -> str:
    """The bus key that stands for "some stream of this file is open"."""
    return f"{base_key}:streams"


def stream_key(base_key: str, stream_ino: int) -> str:
    return f"{base_key}:{stream_ino:x}"


def encode_name(name: str) -> str:
    """The sidecar file name of a stream: case folded, safe on any POSIX volume."""
    folded = name.lower()
    out = "".join(
        c if c in _SAFE else "".join(f"%{b:02x}" for b in c.encode("utf-8")) for c in folded
    )
    if len(out) > _MAX_ENCODED:
        return "#" + hashlib.sha256(folded.encode("utf-8")).hexdigest()
    return out


def _decode_name(file_name: str) -> str:
    # A hashed name whose spelling was lost shows as the hash.
    return file_name if file_name.startswith("#") else unquote(file_name, errors="replace")


# -- names ---------------------------------------------------------------------------


def _check_stream_name(name: str, status: int) -> None:
    if len(name.encode("utf-16-le")) > 2 * MAX_NAME or _INVALID_IN_NAME.intersection(name):
        raise NtStatusError(status, f"bad stream name {name!r}")


def _split_last(smb_name: str) -> tuple[str, str] | None:
    """(everything before the last component, the last component) when it has a ':'."""
    cut = smb_name.rfind("\\") + 1
    last = smb_name[cut:]
    if ":" not in last:
        return None
    return smb_name[:cut], last


def parse(fs: ShareFS, smb_name: str, options: int) -> Stream | None:
    """The named stream a CREATE asks for, or None for the file itself.

    ``base::$DATA`` returns None (the lookup of the name opens the base) once
    the directory rules are checked; malformed names raise.
    """
    split = _split_last(smb_name)
    if split is None:
        return None
    head, last = split
    parts = last.split(":")
    if len(parts) > 3:
        raise NtStatusError(Status.OBJECT_NAME_INVALID, "too many ':' in the name")
    base_part, name = parts[0], parts[1]
    if len(parts) == 3 and parts[2].upper() != DATA_TYPE:
        raise NtStatusError(Status.OBJECT_NAME_INVALID, "stream type other than $DATA")
    base_name = head + base_part
    if not name:
        if len(parts) == 2:
            raise NtStatusError(Status.OBJECT_NAME_INVALID, "empty stream name")
        # The default data stream: a directory has none.
        if options & CreateOptions.DIRECTORY_FILE:
            raise NtStatusError(Status.NOT_A_DIRECTORY)
        _path, info = fs.lookup(base_name)
        if info is not None and info.is_dir:
            raise NtStatusError(Status.FILE_IS_A_DIRECTORY)
        return None
    _check_stream_name(name, Status.OBJECT_NAME_INVALID)
    if not fs.keeps_xattrs:
        raise NtStatusError(Status.OBJECT_NAME_INVALID, "no xattrs here: no named streams")
    if not base_part:
        raise NtStatusError(Status.OBJECT_NAME_INVALID, "a stream needs a file name")
    split_name(base_name)  # the base's own name rules, before anything else
    if options & CreateOptions.DIRECTORY_FILE:
        raise NtStatusError(Status.NOT_A_DIRECTORY, "a stream is never a directory")
    base_path, base_info = fs.lookup(base_name)
    st = Stream(fs=fs, base_name=base_name, name=name, base_path=base_path, base_info=base_info)
    st.find()
    return st


# -- the stream directory of a file -------------------------------------------------------


def _xattr_target(path: str, fd: int = -1) -> str:
    # O_PATH descriptors refuse fgetxattr; their /proc link does not.
    return f"/proc/self/fd/{fd}" if fd >= 0 and _HAVE_PROC_FD else path


def stream_id(path: str, fd: int = -1) -> str | None:
    """The id of a file's stream directory, None while it has never had a stream."""
    try:
        raw = os.getxattr(_xattr_target(path, fd), XATTR_ID)
    except OSError:
        return None
    value = raw.decode("ascii", "replace")
    return value if len(value) == 32 and all(c in "0123456789abcdef" for c in value) else None


def _ensure_stream_id(path: str) -> str:
    sid = stream_id(path)
    if sid is not None:
        return sid
    new = os.urandom(16).hex()
    try:
        os.setxattr(path, XATTR_ID, new.encode("ascii"), os.XATTR_CREATE)
        return new
    except FileExistsError:  # another node added the first stream meanwhile: use theirs
        sid = stream_id(path)
        if sid is not None:
            return sid
        raise NtStatusError(Status.INTERNAL_ERROR, "unreadable stream id") from None
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise NtStatusError(Status.OBJECT_NAME_INVALID, "no xattrs: no streams") from None
        raise FsError.from_oserror(e) from None


def sidecar_dir(fs: ShareFS, sid: str) -> str:
    return os.path.join(fs.root, SIDECAR, sid[:2], sid)


def _entries(fs: ShareFS, sid: str) -> list[tuple[str, str]]:
    """(name as spelled, host path) of every stream of a file."""
    out: list[tuple[str, str]] = []
    try:
        with os.scandir(sidecar_dir(fs, sid)) as it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                out.append((_stored_name(entry.path, entry.name), entry.path))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise FsError.from_oserror(e) from None
    out.sort(key=lambda e: e[0].lower())
    return out


def _stored_name(path: str, file_name: str) -> str:
    try:
        return os.getxattr(path, XATTR_NAME).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return _decode_name(file_name)


def remove_all(fs: ShareFS, path: str, fd: int = -1) -> None:
    """Drop every named stream of a file (overwrite, supersede, deletion)."""
    sid = stream_id(path, fd)
    if sid is not None:
        shutil.rmtree(sidecar_dir(fs, sid), ignore_errors=True)


# -- one stream ---------------------------------------------------------------------------------


@dataclass(eq=False)
class Stream:
    """A named stream a CREATE names, then the stream an open holds (``Open.stream``)."""

    fs: ShareFS
    base_name: str  # the base's SMB name
    name: str  # as the client spelled it (existing streams: as stored)
    base_path: str
    base_info: FileInfo | None
    path: str = ""  # the stream file; "" while the base has no stream directory
    info: FileInfo | None = None  # the stream as CREATE reports it; None: no such stream
    ino: int = 0
    base_created: bool = False
    base_key: str = ""
    # (bus key, open id) of the companion opens, closed with the handle.
    companions: list[tuple[str, str]] = field(default_factory=list)

    def find(self) -> None:
        if self.base_info is None:
            return
        sid = stream_id(self.base_path)
        if sid is None:
            return
        self.path = os.path.join(sidecar_dir(self.fs, sid), encode_name(self.name))
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        except OSError as e:
            raise FsError.from_oserror(e) from None
        if not stat.S_ISREG(st.st_mode):
            raise NtStatusError(Status.OBJECT_NAME_NOT_FOUND)
        self.name = _stored_name(self.path, self.name)
        self.info = self._merge(self.base_info, self.fs.stat_path(self.path))

    @staticmethod
    def _merge(base: FileInfo, data: FileInfo) -> FileInfo:
        # Everything but the sizes is the file's (attributes, times, id).
        return replace(base, size=data.size, allocation_size=data.allocation_size, is_dir=False)

    def create(self, attributes: int, new_sd: bytes | None) -> str:
        """Create the stream (and the base when missing); FileExistsError if it exists."""
        fs = self.fs
        if self.base_info is None:
            try:
                os.close(os.open(self.base_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY
                                 | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666))  # fmt: skip
                self.base_created = True
            except FileExistsError:
                pass  # created meanwhile: the stream goes on that file
            except FileNotFoundError:
                raise NtStatusError(Status.OBJECT_PATH_NOT_FOUND) from None
            if self.base_created:
                if new_sd is not None:
                    security.store_new(fs, self.base_path, new_sd)
                attrs = attributes & ~FileAttributes.NORMAL | FileAttributes.ARCHIVE
                fs.set_attributes(self.base_path, attrs, is_dir=False)
        directory = sidecar_dir(fs, _ensure_stream_id(self.base_path))
        try:
            os.makedirs(directory, 0o700, exist_ok=True)
        except OSError as e:
            raise FsError.from_oserror(e) from None
        if not fs.inside(os.path.realpath(directory)):
            raise NtStatusError(Status.ACCESS_DENIED, "stream directory outside the share")
        self.path = os.path.join(directory, encode_name(self.name))
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC
                     | os.O_NOFOLLOW, 0o600)  # fmt: skip
        os.close(fd)
        try:
            os.setxattr(self.path, XATTR_NAME, self.name.encode("utf-8"))
        except OSError as e:  # the listing falls back to the (lower-case) file name
            log.debug("stream name of %s not kept: %s", self.path, e)
        return self.path

    def stat(self, fs: ShareFS, fd: int) -> FileInfo:
        """The stream as QUERY_INFO reports it: its sizes, its base file's rest."""
        data = fs.stat_fd(fd)
        self.ino = data.inode
        return self._merge(fs.stat_path(self.base_path), data)

    def attach(self, op: Open, base: FileInfo) -> None:
        """Make ``op`` a handle of this stream: its own bus key, the base's path."""
        self.base_key = base.file_key
        op.stream = self
        op.host_path = self.base_path
        op.file_key = stream_key(self.base_key, self.ino)

    def locate(self) -> str | None:
        """The stream file now (it may have been renamed through another node)."""
        try:
            if os.lstat(self.path).st_ino == self.ino:
                return self.path
        except OSError:
            pass
        directory = os.path.dirname(self.path)
        try:
            with os.scandir(directory) as it:
                for entry in it:
                    if entry.inode() == self.ino:
                        return entry.path
        except OSError:
            return None
        return None


# -- QUERY_INFO -------------------------------------------------------------------------------


def stat_open(fs: ShareFS, op: Open) -> FileInfo:
    """What a handle reports of its file; a stream's handle, the stream's."""
    if op.stream is not None:
        return op.stream.stat(fs, op.fd)
    return fs.stat_fd(op.fd) if op.fd >= 0 else fs.stat_path(op.host_path)


def stream_information(op: Open) -> bytes:
    """FileStreamInformation of a handle's file: ``::$DATA`` (files only), then the
    named streams, each ``:name:$DATA`` with its size and allocation."""
    fs = op.tree.fs
    assert fs is not None
    fd = op.fd if op.stream is None else -1
    info = fs.stat_fd(fd) if fd >= 0 else fs.stat_path(op.host_path)
    entries: list[tuple[str, int, int]] = []
    if not info.is_dir:
        entries.append(("::$DATA", info.size, info.allocation_size))
    sid = stream_id(op.host_path, fd)
    if sid is not None:
        for name, path in _entries(fs, sid):
            data = fs.stat_path(path)
            entries.append((f":{name}:{DATA_TYPE}", data.size, data.allocation_size))
    return infoclass.file_streams(entries)


# -- the bus: companions and probes ------------------------------------------------------------


def _request(node: Node, open_id: str, key: str, access: int, share: int) -> bus_api.OpenRequest:
    return bus_api.OpenRequest(
        open_id=open_id, node_id=node.node_id, file=key, access=access, share=share,
        owner_data={"stream_companion": True},
        # The base companion is attribute-only, yet it must keep the base's
        # record (and so its delete-pending state) while the stream is open.
        holds_record=True,
    )  # fmt: skip


async def _probe(node: Node, key: str, access: int, share: int) -> int:
    """Open ``key`` and close it again at once: the status the bus answers."""
    open_id = f"{node.node_id}/probe{node.next_id()}"
    result = await node.bus.open(_request(node, open_id, key, access, share))
    if result.status == Status.SUCCESS:
        await node.bus.close(key, open_id)
    return result.status


async def _no_open_streams(node: Node, base_key: str) -> bool:
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
        _clear_stale_mark(st.base_path)
    return result


async def _close_companions(node: Node, st: Stream) -> None:
    companions, st.companions = st.companions, []
    for key, open_id in companions:
        try:
            await node.bus.close(key, open_id)
        except Exception:  # noqa: BLE001 - the handle closes whatever the bus says
            log.exception("bus close of %s failed", open_id)


def _clear_stale_mark(base_path: str) -> None:
    # The bus just granted an open of this file, so it is not delete-pending:
    # a doomed mark is what a node that died before finishing left behind.
    try:
        os.removexattr(base_path, XATTR_DOOMED)
    except OSError:
        pass


# -- close and delete ------------------------------------------------------------------


async def defer_delete(node: Node, op: Open) -> bool:
    """Before a delete-on-close base handle leaves the bus: True when streams of
    the file are still open, so the base must stay (delete-pending) until they close."""
    if op.stream is not None or not op.host_path or stream_id(op.host_path) is None:
        return False
    # The mark goes first, so a stream closing from now on sees it; and again
    # once the bus refuses new opens, in case a stream open granted meanwhile
    # took it for a stale one.
    if not _mark_doomed(op.host_path):
        return False
    try:
        if await _no_open_streams(node, op.file_key):
            _clear_stale_mark(op.host_path)
            return False
        await node.bus.set_delete_pending(op.file_key, True)
    except Exception:  # noqa: BLE001 - the handle closes whatever the bus says
        log.exception("deferring the delete of %s failed", op.host_path)
        _clear_stale_mark(op.host_path)
        return False
    return _mark_doomed(op.host_path)


def _mark_doomed(path: str) -> bool:
    try:
        os.setxattr(path, XATTR_DOOMED, b"1")
    except OSError as e:
        log.info("delete of %s not deferred: %s", path, e)
        return False
    return True


async def closed(node: Node, op: Open, delete: bool) -> bool:
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
    if fs is not None and _doomed(st.base_path):
        await _finish_deferred_delete(node, op.tree, st)
    return True


async def _finish_deferred_delete(node: Node, tree: TreeConnect, st: Stream) -> None:
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


def _doomed(path: str) -> bool:
    try:
        os.getxattr(path, XATTR_DOOMED)
    except OSError:
        return False
    return True


def _remove_base(node: Node, tree: TreeConnect, path: str, is_dir: bool, sid: str) -> None:
    fs = tree.fs
    assert fs is not None
    try:
        last_link = is_dir or os.lstat(path).st_nlink <= 1
        if is_dir:
            os.rmdir(path)
        else:
            os.unlink(path)
    except OSError as e:
        log.info("delete-on-close of %s failed: %s", path, e)
        return
    if last_link:  # another hard link keeps the file, and so its streams
        shutil.rmtree(sidecar_dir(fs, sid), ignore_errors=True)
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


def _parse_new_name(target: str) -> str:
    """The stream name of a rename target ``:name[:$DATA]`` ("" for ``::$DATA``)."""
    parts = target[1:].split(":")
    if target.endswith(":") or len(parts) > 2:
        raise NtStatusError(Status.INVALID_PARAMETER, "bad stream rename target")
    if len(parts) == 2 and parts[1].upper() != DATA_TYPE:
        raise NtStatusError(Status.INVALID_PARAMETER, "stream type other than $DATA")
    name = parts[0]
    if not name and len(parts) == 1:
        raise NtStatusError(Status.INVALID_PARAMETER, "empty stream name")
    _check_stream_name(name, Status.INVALID_PARAMETER)
    return name


async def rename(ctx: RequestContext, op: Open, target: str, replace_existing: bool) -> None:
    """FileRenameInformation on a stream handle, or to a stream (MS-FSA 2.1.5.15.11.1)."""
    st = op.stream
    fs = op.tree.fs
    assert fs is not None
    if st is None:
        # The default stream stays the file's: only ``::$DATA`` (itself) is a no-op.
        if _parse_new_name(target) or op.is_dir:
            raise NtStatusError(Status.INVALID_PARAMETER, "renaming the default stream")
        return
    if not target.startswith(":"):
        # A stream moves only within its file (Windows answers a path so).
        raise NtStatusError(Status.SHARING_VIOLATION, "a stream cannot leave its file")
    name = _parse_new_name(target)
    await run_bus_call(
        ctx, ctx.node.bus.break_for(op.file_key, op.bus_open_id, bus_api.Operation.RENAME)
    )
    old = st.locate()
    if old is None:
        raise NtStatusError(Status.OBJECT_NAME_NOT_FOUND, "the stream is gone")
    if not name:
        _move_to_default(st, old, replace_existing)
        return
    new = os.path.join(os.path.dirname(old), encode_name(name))
    if new != old:
        try:
            existing = os.lstat(new)
        except FileNotFoundError:
            existing = None
        except OSError as e:
            raise FsError.from_oserror(e) from None
        if existing is not None:
            if not replace_existing:
                raise NtStatusError(Status.OBJECT_NAME_COLLISION)
            if existing.st_size:
                # Only an empty stream may be replaced (NTFS).
                raise NtStatusError(Status.INVALID_PARAMETER, "the target stream is not empty")
        fs.rename(old, new, replace=replace_existing)
    try:
        os.setxattr(new, XATTR_NAME, name.encode("utf-8"))
    except OSError as e:
        log.debug("stream name of %s not kept: %s", new, e)
    for other in ctx.node.opens.values():
        if other.stream is not None and other.file_key == op.file_key:
            other.stream.name, other.stream.path = name, new
            other.smb_name = f"{other.stream.base_name}:{name}"


def _move_to_default(st: Stream, old: str, replace_existing: bool) -> None:
    """Renaming a stream to ``::$DATA``: its data becomes the file's (an empty one)."""
    if not replace_existing:
        raise NtStatusError(Status.OBJECT_NAME_COLLISION, "the default stream exists")
    try:
        base_fd = os.open(st.base_path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise FsError.from_oserror(e) from None
    try:
        if os.fstat(base_fd).st_size:
            raise NtStatusError(Status.INVALID_PARAMETER, "the default stream is not empty")
        with open(old, "rb") as src, os.fdopen(os.dup(base_fd), "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.unlink(old)
    except OSError as e:
        raise FsError.from_oserror(e) from None
    finally:
        os.close(base_fd)
