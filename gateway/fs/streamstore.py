"""Alternate data streams (``file:stream:$DATA``): their names and where the volume keeps them.

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

    <share root>/.smbgw:streams/<id[:2]>/<id>/<encoded folded stream name>

``<id>`` is 16 random bytes (hex) kept in the base file's ``user.smbgw.streams``
xattr, created with XATTR_CREATE so two nodes adding the first stream at once
agree. The id lives on the inode, so it survives renames and hard links of the
base (streams belong to the file, as on NTFS); a new file that reuses a freed
inode number has no xattr, so it never inherits a dead file's streams. The
stream file keeps the name as the client spelled it in ``user.smbgw.stream_name``
(the file name itself is folded by ``caseindex.fold``, which is lower-case for
ASCII, percent-encoded, or a hash when long).
``.smbgw:streams`` contains ``:``, which no SMB path component may: listings
leave it out (``vfs.listable``) and no name can reach it. Every node reads the
same tree, so a stream written through one node reads back through another.

What streams do on the bus (their own identity, the companion opens that tie
them to their file, deferred deletion) is the SMB layer's: ``gateway.smb.streams``.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import stat
from dataclasses import dataclass, field, replace
from urllib.parse import unquote

from ..protocol import infoclass
from ..protocol.constants import CreateOptions, FileAttributes, NtStatusError, Status
from ..protocol.fileinfo import FileInfo
from .caseindex import fold
from .descriptors import store_new
from .vfs import FsError, ShareFS, split_name

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


def stream_key(base_key: str, stream_ino: int) -> str:
    return f"{base_key}:{stream_ino:x}"


def encode_name(name: str) -> str:
    """The sidecar file name of a stream: case folded as NTFS folds file names
    (``caseindex.fold``), safe on any POSIX volume."""
    folded = fold(name)
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
    out.sort(key=lambda e: fold(e[0]))
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
                    store_new(fs, self.base_path, new_sd)
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


def stream_information(fs: ShareFS, path: str, fd: int = -1) -> bytes:
    """FileStreamInformation of a handle's file: ``::$DATA`` (files only), then the
    named streams, each ``:name:$DATA`` with its size and allocation. ``fd``, when
    given, is the file's own descriptor (not a stream's)."""
    info = fs.stat_fd(fd) if fd >= 0 else fs.stat_path(path)
    entries: list[tuple[str, int, int]] = []
    if not info.is_dir:
        entries.append(("::$DATA", info.size, info.allocation_size))
    sid = stream_id(path, fd)
    if sid is not None:
        for name, path in _entries(fs, sid):
            data = fs.stat_path(path)
            entries.append((f":{name}:{DATA_TYPE}", data.size, data.allocation_size))
    return infoclass.file_streams(entries)


# -- deletion --------------------------------------------------------------------------


def clear_doomed(base_path: str) -> None:
    """Drop the mark of a deferred delete (done, abandoned, or stale)."""
    try:
        os.removexattr(base_path, XATTR_DOOMED)
    except OSError:
        pass


def mark_doomed(path: str) -> bool:
    """Mark a file deleted while its streams are open (False: it cannot be marked)."""
    try:
        os.setxattr(path, XATTR_DOOMED, b"1")
    except OSError as e:
        log.info("delete of %s not deferred: %s", path, e)
        return False
    return True


def is_doomed(path: str) -> bool:
    try:
        os.getxattr(path, XATTR_DOOMED)
    except OSError:
        return False
    return True


def remove_base(fs: ShareFS, path: str, is_dir: bool, sid: str) -> bool:
    """Delete a file that has a stream directory, and the directory with its last
    link; False (logged) when the file could not be removed."""
    try:
        last_link = is_dir or os.lstat(path).st_nlink <= 1
        if is_dir:
            os.rmdir(path)
        else:
            os.unlink(path)
    except OSError as e:
        log.info("delete-on-close of %s failed: %s", path, e)
        return False
    if last_link:  # another hard link keeps the file, and so its streams
        shutil.rmtree(sidecar_dir(fs, sid), ignore_errors=True)
    return True


# -- rename -----------------------------------------------------------------------------


def parse_new_name(target: str) -> str:
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


def rename(st: Stream, name: str, replace_existing: bool) -> str:
    """Give the stream a new name within its file ("" makes it the file's data);
    the stream file's new path ("" when it became the file's data)."""
    fs = st.fs
    old = st.locate()
    if old is None:
        raise NtStatusError(Status.OBJECT_NAME_NOT_FOUND, "the stream is gone")
    if not name:
        _move_to_default(st, old, replace_existing)
        return ""
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
    return new


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
