"""The filesystem layer of one share: names, confinement, identity, metadata, errno mapping.

Names. ``resolve`` turns an SMB name (backslashes, relative to the share) into a
host path, refusing what Windows or Samba refuse (see ``split_name``); ``lookup``
then follows the host filesystem and makes sure the object found is inside the
share root, even through symlinks made on the host.

Confinement and races. ``lookup`` canonicalises the parent directory (the kernel's
own answer through ``/proc/self/fd``, else ``os.path.realpath``) and checks the
prefix, so the returned path has no symlink in it. Between that check and a later
call by path, a process with direct access to the volume (a local user, another
host mounting it) could swap a directory for a symlink; SMB clients cannot, as
the gateway creates no symlinks. ``ShareFS.open`` narrows the window: it opens
with O_NOFOLLOW and checks where the opened descriptor really is before handing
it out. Closing it completely needs ``openat2(RESOLVE_BENEATH)`` per component,
which Python does not expose; it is the next step if untrusted host users share
the volume.

Identity. A file is ``f"{volume_id:x}:{st_ino:x}"``, never a path. ``st_dev``
alone is not enough for a cluster: on NFS, CephFS or GlusterFS mounts it is an
anonymous device number that differs between hosts (Samba needs vfs_fileid for
the same reason), so the volume id is kept in an xattr on the share root, created
once (XATTR_CREATE: concurrent first starts agree) and read by every node
afterwards. Without xattrs (read-only or xattr-less volume) it falls back to
``st_dev``, which is right on a single host; a node with other nodes on its bus
refuses that (``st_dev_fallback=False``: ``VolumeIdUnavailable``). An explicit
``volume_id`` overrides both. Two shares whose roots overlap get different ids:
give each share its own tree, or the same explicit ``volume_id``. ``root_key``
is the root's identity, which the nodes of a cluster compare at start.

DOS metadata. Attributes other than READONLY-on-files (the owner write bit) and
the creation time live in one ``user.smbgw.dos`` xattr; where xattrs are missing
they are silently not kept. The first metadata write pins the creation time. The
same xattr keeps a ChangeTime set by a client (until the inode next changes),
write or access times the filesystem cannot hold exactly (``gateway.fs.dosmeta``),
and the SPARSE attribute (FSCTL_SET_SPARSE, ``gateway.smb.handlers.sparse``) as a flag apart
from the attributes, so that FileBasicInformation cannot change it.

Security descriptors. A file's descriptor, once written (by CREATE or SET_INFO),
lives in the ``user.smbgw.sd`` xattr: a version byte, then the self-relative
descriptor as the wire carries it (``gateway.fs.sd``). Every node reads it from the
volume at each open, so no node can grant what another has taken away. Unlike
DOS metadata, a descriptor that cannot be kept is an error, never skipped.

Errors. Every errno becomes an NTSTATUS in ``status_from_oserror`` and nowhere
else. Failures of filesystem calls are raised as ``FsError``, which is both an
``NtStatusError`` (its ``status``) and an ``OSError`` (its ``errno``), so code
that cleans up on ``except OSError`` keeps working.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import re
import stat
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..protocol.constants import FileAttributes, NtStatusError, Status
from ..protocol.fileinfo import FileInfo, VolumeSize, from_filetime, settable, to_filetime
from . import dosmeta
from .caseindex import CaseIndex, fold
from .dosmeta import DosRecord

if TYPE_CHECKING:
    from ..protocol.infoclass import BasicInfo

log = logging.getLogger(__name__)

# -- errno -> NTSTATUS ------------------------------------------------------------------

_ERRNO_STATUS: dict[int, int] = {
    errno.ENOENT: Status.OBJECT_NAME_NOT_FOUND,
    errno.EEXIST: Status.OBJECT_NAME_COLLISION,
    errno.EACCES: Status.ACCESS_DENIED,
    errno.EPERM: Status.ACCESS_DENIED,
    errno.EROFS: Status.MEDIA_WRITE_PROTECTED,
    errno.ENOTEMPTY: Status.DIRECTORY_NOT_EMPTY,
    errno.ENOTDIR: Status.OBJECT_PATH_NOT_FOUND,
    errno.EISDIR: Status.FILE_IS_A_DIRECTORY,
    errno.ENOSPC: Status.DISK_FULL,
    errno.EDQUOT: Status.DISK_FULL,  # Samba: Windows applications expect DISK_FULL
    errno.EFBIG: Status.DISK_FULL,
    errno.ENAMETOOLONG: Status.NAME_TOO_LONG,
    errno.EXDEV: Status.NOT_SAME_DEVICE,
    errno.EINVAL: Status.INVALID_PARAMETER,
    errno.ELOOP: Status.OBJECT_PATH_NOT_FOUND,  # O_NOFOLLOW met a symlink (Samba too)
    errno.EMFILE: Status.TOO_MANY_OPENED_FILES,
    errno.ENFILE: Status.TOO_MANY_OPENED_FILES,
    errno.EBUSY: Status.SHARING_VIOLATION,
    errno.ETXTBSY: Status.SHARING_VIOLATION,
    errno.EIO: Status.IO_DEVICE_ERROR,
    errno.EBADF: Status.INVALID_HANDLE,
    errno.ENOMEM: Status.NO_MEMORY,
    errno.ENOSYS: Status.NOT_SUPPORTED,
    errno.EOPNOTSUPP: Status.NOT_SUPPORTED,
    errno.ENODEV: Status.DEVICE_DOES_NOT_EXIST,
    errno.ETIMEDOUT: Status.IO_TIMEOUT,
    errno.ESTALE: Status.FILE_DELETED,  # NFS: the file went away under an open handle
}


def status_from_oserror(e: OSError) -> int:
    """The one place an errno becomes an NTSTATUS; an FsError keeps its own status."""
    if isinstance(e, NtStatusError):
        return e.status
    return int(_ERRNO_STATUS.get(e.errno or 0, Status.UNSUCCESSFUL))


class FsError(NtStatusError, OSError):
    """A failed filesystem call: an NTSTATUS that is still the OSError it came from."""

    def __init__(self, status: int, err: OSError | None = None, message: str = "") -> None:
        NtStatusError.__init__(self, status, message or (str(err) if err is not None else ""))
        self.errno = err.errno if err is not None else None  # type: ignore[assignment]
        self.strerror = err.strerror if err is not None else None  # type: ignore[assignment]
        self.filename = err.filename if err is not None else None

    @classmethod
    def from_oserror(cls, e: OSError, status: int | None = None) -> FsError:
        if isinstance(e, FsError):
            return e
        return cls(status_from_oserror(e) if status is None else status, e)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else f"NTSTATUS 0x{self.status:08x}"


# -- names --------------------------------------------------------------------------------

# Control characters, the wildcards, '/', ':' (streams) and '|' are refused by
# Windows and Samba alike; lone surrogates cannot exist in a UTF-16 name (and are
# what undecodable host names turn into, so the listing skips those).
_INVALID_CHARS = re.compile('[\x00-\x1f"*/:<>?|\ud800-\udfff]')
_DOS_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"COM{c}" for c in "0123456789\u00b9\u00b2\u00b3"}
    | {f"LPT{c}" for c in "0123456789\u00b9\u00b2\u00b3"}
)
_DEFAULT_STREAM = "::$DATA"
NAME_MAX = 255  # bytes of UTF-8 on the host; also Windows' 255 UTF-16 units


def is_dos_device(component: str) -> bool:
    """CON, NUL, COM1.txt ...: names Win32 turns into devices (stem before the first dot)."""
    stem = component.split(".", 1)[0].rstrip(" ")
    return 3 <= len(stem) <= 7 and stem.upper() in _DOS_DEVICES


def _check_component(part: str) -> None:
    if _INVALID_CHARS.search(part):
        raise NtStatusError(Status.OBJECT_NAME_INVALID, f"invalid character in {part!r}")
    if is_dos_device(part):
        raise NtStatusError(Status.OBJECT_NAME_INVALID, f"DOS device name {part!r}")
    if len(part) > NAME_MAX // 4 and len(part.encode("utf-8")) > NAME_MAX:
        raise NtStatusError(Status.OBJECT_NAME_INVALID, "name component too long")


def split_name(smb_name: str) -> list[str]:
    """The components of an SMB name, checked; ``[]`` is the share root.

    - a leading backslash: INVALID_PARAMETER (MS-SMB2 3.3.5.9; Samba);
    - ``name::$DATA`` (any case) is the default stream, ``name`` itself; any other
      ':' (named streams) is OBJECT_NAME_INVALID, as Samba answers without streams;
    - ``/`` separates components as ``\\`` does (Samba; smbtorture
      smb2.timestamps.test_close_not_attrib opens ``dir/file``);
    - one trailing backslash names the same object; an empty component (doubled or
      further trailing backslashes) is OBJECT_NAME_INVALID, as NTFS answers;
    - ``..`` goes back one component, as Samba's check_path_syntax does (smbtorture
      smb2.notify.tree opens ``dir\\sub\\..``); going above the root is
      OBJECT_PATH_SYNTAX_BAD (smbtorture smb2.mkdir: ``..\\..\\..``);
    - ``.`` is OBJECT_NAME_INVALID (NTFS; Samba for a final ``.``);
    - control characters, ``"*:<>?|`` and DOS device names are OBJECT_NAME_INVALID;
    - a component longer than the host allows (255 bytes) is OBJECT_NAME_INVALID
      (Samba maps ENAMETOOLONG so).
    """
    if not smb_name:
        return []
    if smb_name[0] in "\\/":
        raise NtStatusError(Status.INVALID_PARAMETER, "name starts with a separator")
    name = smb_name.replace("/", "\\")
    if name[-7:].upper() == _DEFAULT_STREAM:
        name = name[:-7]
        if not name:
            return []
    if name[-1] == "\\":
        name = name[:-1]
    out: list[str] = []
    for part in name.split("\\"):
        if part == "..":
            if not out:
                raise NtStatusError(Status.OBJECT_PATH_SYNTAX_BAD, "name leaves the share")
            out.pop()
            continue
        if part == "" or part == ".":
            raise NtStatusError(Status.OBJECT_NAME_INVALID, f"bad component in {smb_name!r}")
        _check_component(part)
        out.append(part)
    return out


def listable(name: str) -> bool:
    """Whether a host directory entry can be shown (and opened) under its own name."""
    return (
        name not in (".", "..") and _INVALID_CHARS.search(name) is None and not is_dos_device(name)
    )


# -- wildcards ----------------------------------------------------------------------------

_WILD = frozenset('*?<>"')
_NULL_WILD = frozenset('*<">')  # the wildcards that can match nothing at the end
# The rules (MS-FSA 2.1.4.4, as Samba's ms_fnmatch implements them):
#   '*' any characters; '?' exactly one character;
#   '<' DOS_STAR: any characters, but not past the last '.' of the name (it may
#       take that dot); anything at all when no dot is left;
#   '>' DOS_QM: one character, nothing before a '.', and a final '.' or nothing
#       at the end;
#   '"' DOS_DOT: a '.', or nothing at the end.
#
# Why an automaton: a client chooses the pattern (up to 255 characters), so a
# backtracking regex is exponential in its stars and a dynamic programme costs
# len(pattern) * len(name) Python steps per name (seconds for one listing). The
# pattern becomes an NFA over its positions, kept as bitmasks (bit i: pattern[:i]
# has consumed the name so far), so one step of the whole NFA is a few big-int
# operations whatever the pattern; the subsets met are then cached as DFA states,
# so a name usually costs one dict lookup per character. The DOS wildcards depend
# on where the name's dots are; that is folded into the input symbol: a character
# is itself, except that the name's last dot is _LAST_DOT, or _FINAL_DOT when it
# ends the name (earlier dots stay "."). '>' and '<' take no character before a
# dot and '<' none past the last dot, so these three symbols say everything.
_LAST_DOT = ".L"  # symbols are one character long otherwise
_FINAL_DOT = ".F"
# The DFA's memory is bounded per pattern: past this many cached transitions it is
# emptied (RE2 does the same). A pattern that keeps filling it (a subset of the
# NFA per name character, as "*a" followed by many '?' can make) is then matched
# by stepping the NFA alone: still linear in the name, with no cache to grow.
_DFA_MAX_TRANSITIONS = 1024
_DFA_MAX_FLUSHES = 4
_NFA_MAX_TAKES = 256


class _State(dict[str, "_State"]):
    """A DFA state: the NFA positions alive before the next symbol, and the
    transitions found from it so far (symbol -> state)."""

    __slots__ = ("mask",)

    def __init__(self, mask: int) -> None:
        super().__init__()
        self.mask = mask


class _WildcardMatcher:
    """One pattern with wildcards, matched in time linear in the name's length.

    Safe to share between threads (listings are matched off the event loop): a
    state's mask never changes and every transition stored is correct, so racing
    updates of the cache can only duplicate or drop cached work.
    """

    def __init__(self, pattern: str) -> None:
        star = lt = gt = quote = qm = 0
        lit: dict[str, int] = {}
        for i, c in enumerate(pattern):
            bit = 1 << i
            if c == "*":
                star |= bit
            elif c == "<":
                lt |= bit
            elif c == ">":
                gt |= bit
            elif c == '"':
                quote |= bit
            elif c == "?":
                qm |= bit
            else:
                lc = fold(c)
                lit[lc] = lit.get(lc, 0) | bit
        # Positions from which the rest of the pattern can match nothing: accepting.
        accept = 1 << len(pattern)
        for i in range(len(pattern) - 1, -1, -1):
            if pattern[i] not in _NULL_WILD:
                break
            accept |= 1 << i
        self._accept = accept
        self._lit = lit
        # For each symbol: (positions left without taking it, positions that take
        # it and move on, positions that take it and stay).
        loop = star | lt
        self._loop = loop
        self._one = qm | gt  # take any character but a dot
        dot_on = qm | quote | lit.get(".", 0)
        self._dots: dict[str, tuple[int, int, int]] = {
            ".": (loop | gt, dot_on, loop),
            _LAST_DOT: (loop | gt, dot_on | lt, star),
            _FINAL_DOT: (loop | gt, dot_on | lt | gt, star),
        }
        self._start = _State(1)
        self._states: dict[int, _State] = {1: self._start}
        self._size = 0
        self._flushes = 0
        self._dfa = True
        self._takes: dict[str, int] = {}  # character -> positions taking it, for _run_nfa

    def _step(self, mask: int, sym: str) -> int:
        """The NFA positions alive after ``sym`` from those in ``mask``."""
        dot = self._dots.get(sym)
        if dot is None:
            skip = stay = self._loop
            take = self._lit.get(fold(sym), 0) | self._one
        else:
            skip, take, stay = dot
        # Close under the skips: adding (mask & skip) to skip carries each alive
        # bit through its run of skippable positions, flipping every bit it reaches.
        mask |= (skip + (mask & skip)) ^ skip
        return ((mask & take) << 1) | (mask & stay)

    def _add(self, state: _State, sym: str) -> _State | None:
        """The transition missing from the cache; None once no position is alive."""
        if not state.mask:
            return None
        mask = self._step(state.mask, sym)
        nxt = self._states.get(mask)
        if nxt is None:
            if self._size >= _DFA_MAX_TRANSITIONS:
                self._flush()
            nxt = self._states.setdefault(mask, _State(mask))
        state[sym] = nxt
        self._size += 1
        return nxt

    def _flush(self) -> None:
        states, self._states = self._states, {self._start.mask: self._start}
        self._size = 0
        self._flushes += 1
        if self._flushes >= _DFA_MAX_FLUSHES:
            self._dfa = False
        for state in list(states.values()):
            state.clear()

    def _run(self, state: _State, symbols: str | tuple[str]) -> _State | None:
        for sym in symbols:
            nxt = state.get(sym)
            if nxt is None:
                nxt = self._add(state, sym)
                if nxt is None:
                    return None
            state = nxt
        return state

    def _run_nfa(self, mask: int, symbols: str | tuple[str]) -> int:
        # _step inlined for the characters that are not dots: this loop is the
        # cost of the worst patterns.
        skip = self._loop
        takes = self._takes
        for sym in symbols:
            take = takes.get(sym)
            if take is None:
                if sym in self._dots:
                    mask = self._step(mask, sym)
                    if not mask:
                        break
                    continue
                take = self._lit.get(fold(sym), 0) | self._one
                if len(takes) < _NFA_MAX_TAKES:
                    takes[sym] = take
            mask |= (skip + (mask & skip)) ^ skip
            mask = ((mask & take) << 1) | (mask & skip)
            if not mask:
                break
        return mask

    def __call__(self, name: str) -> bool:
        if name == "..":
            name = "."
        ldot = name.rfind(".")
        if ldot < 0:
            parts: tuple[str | tuple[str], ...] = (name,)
        else:
            last = _FINAL_DOT if ldot == len(name) - 1 else _LAST_DOT
            parts = (name[:ldot], (last,), name[ldot + 1 :])
        if not self._dfa:
            mask = self._start.mask
            for part in parts:
                mask = self._run_nfa(mask, part)
            return bool(mask & self._accept)
        state = self._start
        for part in parts:
            reached = self._run(state, part)
            if reached is None:
                return False
            state = reached
        return bool(state.mask & self._accept)


@functools.lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> Callable[[str], bool]:
    """A matcher for one QUERY_DIRECTORY pattern (case-insensitive, as Samba's mask_match).

    Case is ignored as NTFS ignores it (``caseindex.fold``, one character at a
    time, as the automaton reads the name). ``..`` is matched as ``.`` and the
    pattern ``.`` matches nothing (Samba).
    """
    if pattern == ".":
        return lambda name: False
    if not _WILD.intersection(pattern):
        folded, size = fold(pattern), len(pattern)
        # fold keeps the length: names of another length need no folding.
        return lambda name: len(name) == size and fold("." if name == ".." else name) == folded
    pattern = re.sub(r"\*\*+", "*", pattern)
    if pattern == "*":
        return lambda name: True
    return _WildcardMatcher(pattern)


def wildcard_match(pattern: str, name: str) -> bool:
    """Windows wildcard match, case-insensitive: ``* ?`` and the DOS forms ``< > "``."""
    return compile_pattern(pattern)(name)


# -- metadata ---------------------------------------------------------------------------------

_XATTR_DOS = "user.smbgw.dos"
_XATTR_VOLUME = "user.smbgw.volume_id"
_XATTR_SD = "user.smbgw.sd"
_SD_VERSION = b"\x01"
# The DOS xattr's layout and the rules for the times it keeps: gateway.fs.dosmeta.
# How far past the writer's clock a kept ChangeTime's guard lies: room for the
# kernel to stamp ctime after the clock was read (see ShareFS._keep_change). A
# change to the inode less than this after the ChangeTime was set does not show.
_GUARD_MARGIN_NS = 1_000_000
_SPARSE = int(FileAttributes.SPARSE_FILE)
_VOLUME = struct.Struct("<QQ")  # volume id, creation FILETIME
# Attributes kept in the xattr; READONLY of a file is the owner write bit instead.
_STORED_ATTRS = int(
    FileAttributes.READONLY | FileAttributes.HIDDEN | FileAttributes.SYSTEM
    | FileAttributes.ARCHIVE | FileAttributes.TEMPORARY | FileAttributes.OFFLINE
    | FileAttributes.NOT_CONTENT_INDEXED
)  # fmt: skip
_READONLY = int(FileAttributes.READONLY)
_ARCHIVE = int(FileAttributes.ARCHIVE)
_DIRECTORY = int(FileAttributes.DIRECTORY)
_NORMAL = int(FileAttributes.NORMAL)
_WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
_HAVE_PROC_FD = os.path.isdir("/proc/self/fd")


def _read_dos_raw(target: str | int) -> bytes | None:
    try:
        return os.getxattr(target, _XATTR_DOS)
    except OSError as e:
        if e.errno == errno.EBADF and isinstance(target, int) and _HAVE_PROC_FD:
            # An O_PATH descriptor: read through its /proc link instead.
            return _read_dos_raw(f"/proc/self/fd/{target}")
        return None


def _read_dos(target: str | int) -> DosRecord | None:
    """The DOS xattr of a path or descriptor, or None."""
    raw = _read_dos_raw(target)
    return None if raw is None else dosmeta.decode(raw)


def _fd_path(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


# fallocate/renameat2 are not in os; found once through libc where it has them.
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - no dynamic libc
    _LIBC = None
_renameat2 = getattr(_LIBC, "renameat2", None)
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


class VolumeIdUnavailable(OSError):
    """No volume id could be read from or stored on the share root, and the
    caller ruled out ``st_dev``, which other hosts may not share."""


class ShareFS:
    """One share: a POSIX directory tree every node mounts at its own path."""

    def __init__(
        self, root: str, *, volume_id: int | None = None, st_dev_fallback: bool = True
    ) -> None:
        if not os.path.exists(root):
            raise FileNotFoundError(errno.ENOENT, "share root does not exist", root)
        if not os.path.isdir(root):
            raise NotADirectoryError(errno.ENOTDIR, "share root is not a directory", root)
        self.root = os.path.realpath(root)
        self._root_slash = self.root if self.root.endswith("/") else self.root + "/"
        st = os.stat(self.root)
        self._xattrs = _supports_xattrs(self.root)
        self._case_index = CaseIndex()
        self.volume_created = 0
        if volume_id is not None:
            self.volume_id = volume_id & 0xFFFFFFFFFFFFFFFF
        else:
            self.volume_id = self._stored_volume_id(st, st_dev_fallback)
        try:
            self._cluster = max(512, os.statvfs(self.root).f_frsize or 4096)
        except OSError:
            self._cluster = 4096

    @property
    def volume_serial(self) -> int:
        """The 32-bit VolumeSerialNumber of FileFsVolumeInformation."""
        return (self.volume_id ^ (self.volume_id >> 32)) & 0xFFFFFFFF

    def _read_volume_xattr(self) -> int | None:
        try:
            raw = os.getxattr(self.root, _XATTR_VOLUME)
        except OSError:
            return None
        if len(raw) != _VOLUME.size:
            return None
        value, self.volume_created = _VOLUME.unpack(raw)
        return int(value)

    def root_key(self) -> str:
        """The root directory's cluster-wide identity, as every file's is made
        (volume id and inode): equal on every node that sees the same tree."""
        return f"{self.volume_id:x}:{os.stat(self.root).st_ino:x}"

    def _stored_volume_id(self, st: os.stat_result, st_dev_fallback: bool) -> int:
        """The id kept on the root, created now if missing; st_dev without xattrs."""
        value = self._read_volume_xattr()
        if value is not None:
            return value
        if self._xattrs:
            value = int.from_bytes(os.urandom(8), "little") >> 1 or 1
            created = to_filetime(min(st.st_mtime_ns, st.st_ctime_ns))
            try:
                os.setxattr(self.root, _XATTR_VOLUME, _VOLUME.pack(value, created),
                            os.XATTR_CREATE)  # fmt: skip
                self.volume_created = created
                return value
            except FileExistsError:  # another node wrote it first: use theirs
                value = self._read_volume_xattr()
                if value is not None:
                    return value
            except OSError:
                pass
        if not st_dev_fallback:
            raise VolumeIdUnavailable(
                errno.ENOTSUP, "no volume id: cannot read or store xattr " + _XATTR_VOLUME,
                self.root,
            )  # fmt: skip
        log.warning(
            "share %s: no volume id xattr (no xattr support or read-only); using st_dev, "
            "which other hosts mounting this volume may not share",
            self.root,
        )
        return st.st_dev

    # -- names ---------------------------------------------------------------------------

    def resolve(self, smb_name: str) -> str:
        """The host path of an SMB name, confined to the root lexically (see split_name).

        Symlinks are not followed here: ``lookup`` does that.
        """
        parts = split_name(smb_name)
        return os.path.join(self.root, *parts) if parts else self.root

    def inside(self, real_path: str) -> bool:
        """Whether a canonical (symlink-free) path is the root or below it."""
        return real_path == self.root or real_path.startswith(self._root_slash)

    def _canonical_dir(self, path: str) -> str:
        """The symlink-free path of an existing directory inside the share."""
        if path == self.root:
            return path
        if _HAVE_PROC_FD:
            try:
                fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except (FileNotFoundError, NotADirectoryError):
                raise NtStatusError(Status.OBJECT_PATH_NOT_FOUND) from None
            except OSError as e:
                raise FsError.from_oserror(
                    e, Status.ACCESS_DENIED if e.errno == errno.EACCES else None
                ) from None
            try:
                real = os.readlink(f"/proc/self/fd/{fd}")
            finally:
                os.close(fd)
        else:  # no /proc: the tests run this branch too
            real = os.path.realpath(path)
            if not os.path.isdir(real):
                raise NtStatusError(Status.OBJECT_PATH_NOT_FOUND)
        if not self.inside(real):
            raise NtStatusError(Status.ACCESS_DENIED, "path leads outside the share")
        return real

    def _stored_case(self, parts: list[str]) -> list[str]:
        """Each component as the volume spells it, when it differs only in case.

        Windows names ignore case. The exact spelling costs one lstat per
        component; only a miss asks the case index (a scan, or for a large
        directory a map that the directory's ctime keeps coherent across nodes).
        """
        out: list[str] = []
        here = self.root
        for part in parts:
            if not os.path.lexists(os.path.join(here, part)):
                part = self._case_index.find(here, part) or part
            out.append(part)
            here = os.path.join(here, part)
        return out

    def lookup(self, smb_name: str) -> tuple[str, FileInfo | None]:
        """(canonical host path, info, or None when only the last component is missing).

        A missing or non-directory parent is OBJECT_PATH_NOT_FOUND; a symlink leading
        out of the share, anywhere in the path, is ACCESS_DENIED. A symlink inside the
        share is followed: the path returned is its target's.
        """
        parts = split_name(smb_name)
        if not parts:
            return self.root, self.stat_path(self.root)
        parts = self._stored_case(parts)
        parent = self._canonical_dir(os.path.join(self.root, *parts[:-1]))
        path = os.path.join(parent, parts[-1])
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return path, None
        except OSError as e:
            raise FsError.from_oserror(e) from None
        if stat.S_ISLNK(st.st_mode):
            real = os.path.realpath(path)
            if not self.inside(real):
                raise NtStatusError(Status.ACCESS_DENIED, "symlink leads outside the share")
            try:
                st = os.stat(real)
            except FileNotFoundError:
                return path, None  # dangling inside the share: the name is taken, no object
            except OSError as e:
                raise FsError.from_oserror(e) from None
            path = real
        return path, self._info(st, path)

    # -- metadata --------------------------------------------------------------------------

    def _info(self, st: os.stat_result, target: str | int) -> FileInfo:
        is_dir = stat.S_ISDIR(st.st_mode)
        attrs = _DIRECTORY if is_dir else _ARCHIVE
        crtime = dosmeta.ns_to_filetime(min(st.st_mtime_ns, st.st_ctime_ns))
        dos = _read_dos(target) if self._xattrs else None
        if dos is not None:
            if dos.flags & dosmeta.HAS_ATTRS:
                attrs = (_DIRECTORY if is_dir else 0) | (dos.attributes & _STORED_ATTRS)
            if dos.flags & dosmeta.HAS_CRTIME:
                crtime = dos.creation
            if dos.flags & dosmeta.IS_SPARSE and not is_dir:
                attrs |= _SPARSE
        atime, mtime, ctime = dosmeta.effective_times(
            dos, st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
        )
        if not st.st_mode & stat.S_IWUSR:
            attrs |= _READONLY
        elif not is_dir:
            attrs &= ~_READONLY
        if not attrs:
            attrs = _NORMAL
        if is_dir:
            size = alloc = 0
        else:
            size = st.st_size
            cluster = self._cluster
            alloc = (st.st_blocks * 512 + cluster - 1) // cluster * cluster
            # Blocks beyond the data are the xattrs' (ext4 moves them out of a full
            # inode, as the descriptor xattr does): NTFS counts data only, and
            # smbtorture expects 0 for an empty new file.
            alloc = min(alloc, (size + cluster - 1) // cluster * cluster)
        return FileInfo(
            size,
            alloc,
            crtime,
            atime,
            mtime,
            ctime,
            attrs,
            is_dir,
            st.st_ino,
            st.st_nlink,
            self.volume_id,
        )

    def stat_fd(self, fd: int) -> FileInfo:
        try:
            return self._info(os.fstat(fd), fd)
        except OSError as e:
            raise FsError.from_oserror(e) from None

    def stat_path(self, path: str) -> FileInfo:
        try:
            return self._info(os.stat(path), path)
        except OSError as e:
            raise FsError.from_oserror(e) from None

    def listdir(self, path: str, pattern: str | None = None) -> list[tuple[str, FileInfo]]:
        """Entries of a directory, ``.`` and ``..`` first as Samba lists them.

        ``..`` of the root is the root itself. Entries that vanish while listed, names
        the share could not open (see ``listable``) and symlinks leading out of the
        share are left out. With ``pattern``, only matching names are stat'ed.
        """
        match = compile_pattern(pattern) if pattern is not None else None
        out: list[tuple[str, FileInfo]] = []
        if match is None or match("."):
            out.append((".", self.stat_path(path)))
        if match is None or match(".."):
            parent = path if path == self.root else os.path.dirname(path)
            out.append(("..", self.stat_path(parent)))
        info = self._info
        try:
            with os.scandir(path) as it:
                for entry in it:
                    name = entry.name
                    if match is not None and not match(name):
                        continue
                    if not listable(name):
                        continue
                    try:
                        st = self._listed_stat(entry.path, entry.stat(follow_symlinks=False))
                        if st is None:
                            continue
                        out.append((name, info(st, entry.path)))
                    except OSError:
                        continue  # gone between readdir and stat
        except OSError as e:
            raise FsError.from_oserror(e) from None
        return out

    def _listed_stat(self, path: str, st: os.stat_result) -> os.stat_result | None:
        """What a listing shows for an entry of lstat ``st``: a symlink's target,
        None for a symlink leading out of the share."""
        if not stat.S_ISLNK(st.st_mode):
            return st
        real = os.path.realpath(path)
        return os.stat(real) if self.inside(real) else None

    def listed_entry(self, path: str) -> FileInfo | None:
        """One entry as ``listdir`` shows it now, None if it is gone or not listable."""
        try:
            st = self._listed_stat(path, os.lstat(path))
            return None if st is None else self._info(st, path)
        except OSError:
            return None

    def listdir_names(self, path: str) -> list[str]:
        try:
            return os.listdir(path)
        except OSError as e:
            raise FsError.from_oserror(e) from None

    def dir_is_empty(self, path: str) -> bool:
        try:
            with os.scandir(path) as it:
                return next(it, None) is None
        except OSError as e:
            raise FsError.from_oserror(e) from None

    def statvfs(self) -> os.statvfs_result:
        try:
            return os.statvfs(self.root)
        except OSError as e:
            raise FsError.from_oserror(e) from None

    def volume_size(self) -> VolumeSize:
        """The volume's size in allocation units of its fragment size (512-byte sectors)."""
        sv = self.statvfs()
        frsize = sv.f_frsize or sv.f_bsize or 4096
        sectors = max(1, frsize // 512)
        unit = sectors * 512
        return VolumeSize(
            total_units=sv.f_blocks * frsize // unit,
            caller_available_units=sv.f_bavail * frsize // unit,
            actual_available_units=sv.f_bfree * frsize // unit,
            sectors_per_unit=sectors,
            bytes_per_sector=512,
        )

    # -- opening and creating -----------------------------------------------------------------

    def _check_fd(self, fd: int, path: str) -> None:
        """Close and refuse a descriptor that ended up outside the share (a race).

        The kernel says where the descriptor is (/proc/self/fd); without /proc the
        path is resolved again, which narrows the window without closing it.
        """
        real = _fd_path(fd) if _HAVE_PROC_FD else os.path.realpath(path)
        if real is not None and not self.inside(real):
            os.close(fd)
            raise NtStatusError(Status.ACCESS_DENIED, "opened object is outside the share")

    def open(self, path: str, flags: int, mode: int = 0o666) -> int:
        """os.open with O_NOFOLLOW|O_CLOEXEC, checked to be inside the share afterwards."""
        try:
            fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        except OSError as e:
            raise FsError.from_oserror(e) from None
        self._check_fd(fd, path)
        return fd

    def create_file(self, path: str, flags: int = os.O_RDWR, mode: int = 0o666) -> int:
        """Create a new file exclusively (O_EXCL) and return its descriptor.

        An existing name is OBJECT_NAME_COLLISION; a parent gone meanwhile is
        OBJECT_PATH_NOT_FOUND.
        """
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        except FileNotFoundError as e:
            raise FsError.from_oserror(e, Status.OBJECT_PATH_NOT_FOUND) from None
        except OSError as e:
            raise FsError.from_oserror(e) from None
        self._check_fd(fd, path)
        return fd

    def mkdir(self, path: str, mode: int = 0o777) -> None:
        try:
            os.mkdir(path, mode)
        except FileNotFoundError as e:
            raise FsError.from_oserror(e, Status.OBJECT_PATH_NOT_FOUND) from None
        except OSError as e:
            raise FsError.from_oserror(e) from None

    def unlink(self, path: str) -> None:
        try:
            os.unlink(path)
        except OSError as e:
            raise FsError.from_oserror(e) from None

    def rmdir(self, path: str) -> None:
        if path == self.root:
            raise NtStatusError(Status.ACCESS_DENIED, "the share root cannot be removed")
        try:
            os.rmdir(path)
        except OSError as e:
            # POSIX allows EEXIST for a directory that is not empty.
            status = Status.DIRECTORY_NOT_EMPTY if e.errno == errno.EEXIST else None
            raise FsError.from_oserror(e, status) from None

    def rename(self, old: str, new: str, *, replace: bool) -> None:
        """Rename ``old`` to ``new`` (both host paths, e.g. from ``lookup``).

        Without ``replace`` an existing target is OBJECT_NAME_COLLISION, decided
        atomically by renameat2(RENAME_NOREPLACE) where the filesystem has it. A
        directory is never replaced (ACCESS_DENIED, as Windows). A target outside the
        share is ACCESS_DENIED, a missing target parent OBJECT_PATH_NOT_FOUND.
        """
        if old == self.root or new == self.root:
            raise NtStatusError(Status.ACCESS_DENIED, "the share root cannot be renamed")
        new_parent = self._canonical_dir(os.path.dirname(new) or self.root)
        new = os.path.join(new_parent, os.path.basename(new))
        if not self.inside(os.path.realpath(os.path.dirname(old))):
            raise NtStatusError(Status.ACCESS_DENIED, "source outside the share")
        try:
            if old == new:
                os.lstat(old)  # renaming to itself: nothing to do if it exists
                return
            if replace:
                try:
                    target = os.lstat(new)
                except FileNotFoundError:
                    target = None
                if target is not None:
                    if stat.S_ISDIR(target.st_mode):
                        raise NtStatusError(Status.ACCESS_DENIED, "cannot replace a directory")
                    if os.path.samestat(os.lstat(old), target):
                        # Two links to one file: POSIX rename would keep both names.
                        os.unlink(old)
                        return
                os.replace(old, new)
            else:
                _rename_noreplace(old, new)
        except FileExistsError as e:
            raise FsError.from_oserror(e, Status.OBJECT_NAME_COLLISION) from None
        except OSError as e:
            raise FsError.from_oserror(e) from None

    # -- changing -------------------------------------------------------------------------------

    def truncate(self, target: str | int, size: int) -> None:
        """Set the end of file (FileEndOfFileInformation, overwrite dispositions)."""
        if size < 0:
            raise NtStatusError(Status.INVALID_PARAMETER)
        try:
            if isinstance(target, int):
                os.ftruncate(target, size)
            else:
                os.truncate(target, size)
        except OSError as e:
            raise FsError.from_oserror(e) from None

    def allocate(self, fd: int, size: int) -> None:
        """FileAllocationInformation: below the end of file truncates, as NTFS does;
        above it nothing is reserved (Samba's default, ``strict allocate = no``)."""
        if size < 0:
            raise NtStatusError(Status.INVALID_PARAMETER)
        try:
            if size < os.fstat(fd).st_size:
                os.ftruncate(fd, size)
        except OSError as e:
            raise FsError.from_oserror(e) from None

    def set_times(
        self,
        path: str,
        *,
        creation: int = 0,
        last_access: int = 0,
        last_write: int = 0,
        change: int = 0,
    ) -> None:
        """Apply FILETIMEs; 0, -1 and -2 leave a time alone.

        Access and write times go to the inode (utimensat); a value the filesystem
        cannot hold exactly is kept in the DOS xattr beside it (``gateway.fs.dosmeta``).
        The creation time goes to the xattr; so does a ChangeTime, which holds until
        the inode next changes. Without xattrs those are silently not kept.
        """
        self._set_metadata(path, creation, last_access, last_write, change, None, is_dir=False)

    def set_attributes(self, path: str, attributes: int, *, is_dir: bool) -> None:
        """Replace the DOS attributes of a file or directory.

        READONLY of a file is the owner write bit (cleared with the group and other
        write bits; set again for the owner only). DIRECTORY and NORMAL are not
        stored; everything else goes to the xattr where there is one.
        """
        self._set_metadata(path, 0, 0, 0, 0, int(attributes), is_dir=is_dir)

    def set_basic(self, path: str, basic: BasicInfo, *, fd: int = -1, is_dir: bool) -> None:
        """Apply FileBasicInformation (MS-FSA 2.1.5.14.2): times and attributes.

        Attributes 0 leave them alone; DIRECTORY on a file is INVALID_PARAMETER.
        ``fd`` is accepted for the caller's convenience; metadata is set by path so
        that O_PATH descriptors work too.
        """
        del fd
        attrs = basic.file_attributes
        if attrs & _DIRECTORY and not is_dir:
            raise NtStatusError(Status.INVALID_PARAMETER, "DIRECTORY attribute on a file")
        self._set_metadata(
            path, basic.creation_time, basic.last_access_time, basic.last_write_time,
            basic.change_time, attrs & ~_NORMAL if attrs else None, is_dir=is_dir,
        )  # fmt: skip

    def keep_change_time(self, path: str, change: int) -> None:
        """Show ``change`` as the ChangeTime again after the inode changed (a handle
        whose ChangeTime the client froze or set, MS-FSA 2.1.5.14.2)."""
        if settable(change):
            self._set_metadata(path, 0, 0, 0, change, None, is_dir=False)

    def write_time_set_by_client(self, target: str | int, mtime_ns: int) -> bool:
        """Whether the inode's mtime ``mtime_ns`` is one a client set (SET_INFO), not
        one a write gave it (``gateway.smb.writetime`` lets it stand)."""
        dos = _read_dos(target) if self._xattrs else None
        return dos is not None and bool(dos.flags & dosmeta.HAS_WRITE) and (
            dos.write_mtime_ns == mtime_ns
        )

    def _set_metadata(
        self,
        path: str,
        creation: int,
        last_access: int,
        last_write: int,
        change: int,
        attributes: int | None,
        *,
        is_dir: bool,
    ) -> None:
        """Attributes, then inode times, then the xattr: the xattr comes last so that
        a kept ChangeTime is stamped after everything else here changed the inode."""
        try:
            st = os.stat(path)
            if attributes is not None and not is_dir:
                mode = stat.S_IMODE(st.st_mode)
                if attributes & _READONLY:
                    new_mode = mode & ~_WRITE_BITS
                else:
                    new_mode = mode if mode & stat.S_IWUSR else mode | stat.S_IWUSR
                if new_mode != mode:
                    os.chmod(path, new_mode)
            write = access = None
            if settable(last_access) or settable(last_write):
                want_a = from_filetime(last_access) if settable(last_access) else st.st_atime_ns
                want_m = from_filetime(last_write) if settable(last_write) else st.st_mtime_ns
                got = _utime_as_near(path, want_a, want_m)
                # A write time a client set is kept beside the inode: exactly, where
                # the inode cannot hold it, and as a mark that a client set it
                # (see write_time_set_by_client). An access time only where it has
                # to be; (0, 0) drops what an earlier value left there.
                if settable(last_write):
                    write = (last_write, got.st_mtime_ns)
                if settable(last_access):
                    access = (last_access, got.st_atime_ns) if got.st_atime_ns != want_a else (0, 0)
            if (
                attributes is not None or settable(creation) or settable(change)
                or write is not None or access is not None
            ):  # fmt: skip
                self._write_dos(
                    path,
                    attrs=None if attributes is None else attributes & _STORED_ATTRS,
                    crtime=creation if settable(creation) else None,
                    change=change if settable(change) else None,
                    write=write,
                    access=access,
                    st=st,
                )
        except OSError as e:
            raise FsError.from_oserror(e) from None

    def set_sparse(self, target: str | int, sparse: bool) -> None:
        """Keep or drop the SPARSE attribute of a file (path or descriptor);
        NOT_SUPPORTED where the volume keeps no xattrs."""
        if not self._xattrs:
            raise NtStatusError(Status.NOT_SUPPORTED, "no xattrs: the sparse flag cannot be kept")
        if isinstance(target, int) and _HAVE_PROC_FD:
            target = f"/proc/self/fd/{target}"  # O_PATH descriptors refuse fgetxattr
        try:
            self._write_dos(str(target), sparse=sparse)
        except OSError as e:
            raise FsError.from_oserror(e) from None

    # -- security descriptors ----------------------------------------------------------------

    @property
    def keeps_xattrs(self) -> bool:
        return self._xattrs

    def owner_of(self, target: str | int) -> tuple[int, int]:
        """(uid, gid) on the host, for the descriptor of a file that has none stored."""
        try:
            st = os.fstat(target) if isinstance(target, int) else os.stat(target)
        except OSError as e:
            raise FsError.from_oserror(e) from None
        return st.st_uid, st.st_gid

    def read_sd(self, target: str | int) -> bytes | None:
        """The stored descriptor of a path or descriptor (O_PATH ones too), or None."""
        if not self._xattrs:
            return None
        if isinstance(target, int) and _HAVE_PROC_FD:
            target = f"/proc/self/fd/{target}"  # O_PATH descriptors refuse fgetxattr
        try:
            raw = os.getxattr(target, _XATTR_SD)
        except OSError as e:
            if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
                return None
            raise FsError.from_oserror(e) from None
        if raw[:1] != _SD_VERSION:
            log.warning("descriptor of %s has an unknown format; using the default", target)
            return None
        return raw[1:]

    def write_sd(self, target: str | int, data: bytes) -> None:
        """Store a descriptor; NOT_SUPPORTED where the volume keeps no xattrs."""
        if not self._xattrs:
            raise NtStatusError(Status.NOT_SUPPORTED, "no xattrs: descriptors cannot be kept")
        if isinstance(target, int) and _HAVE_PROC_FD:
            target = f"/proc/self/fd/{target}"
        try:
            setxattr_lending(target, _XATTR_SD, _SD_VERSION + data)
        except OSError as e:
            raise FsError.from_oserror(e) from None

    def _write_dos(
        self,
        path: str,
        *,
        attrs: int | None = None,
        crtime: int | None = None,
        change: int | None = None,
        write: tuple[int, int] | None = None,
        access: tuple[int, int] | None = None,
        st: os.stat_result | None = None,
        sparse: bool | None = None,
    ) -> None:
        """Update the DOS xattr; the first write also pins the creation time.

        ``write`` and ``access`` are (FILETIME, inode ns) to keep, or (0, 0) to drop
        a kept one. A kept ChangeTime is dropped unless ``change`` gives a new one:
        whatever is written now changes the file. ``st`` is the stat from before
        the caller changed anything, for the creation time to pin.
        """
        if not self._xattrs:
            return
        raw = _read_dos_raw(path)
        rec = (dosmeta.decode(raw) if raw is not None else None) or DosRecord()
        if attrs is not None:
            rec.flags |= dosmeta.HAS_ATTRS
            rec.attributes = attrs
        if crtime is not None:
            rec.flags |= dosmeta.HAS_CRTIME
            rec.creation = crtime
        elif not rec.flags & dosmeta.HAS_CRTIME:
            st = st if st is not None else os.stat(path)
            rec.flags |= dosmeta.HAS_CRTIME
            rec.creation = dosmeta.ns_to_filetime(min(st.st_mtime_ns, st.st_ctime_ns))
        rec.flags &= ~dosmeta.HAS_CHANGE
        if write is not None:
            rec.write, rec.write_mtime_ns = write
            rec.flags = (rec.flags | dosmeta.HAS_WRITE) ^ (0 if write[0] else dosmeta.HAS_WRITE)
        if access is not None:
            rec.access, rec.access_atime_ns = access
            rec.flags = (rec.flags | dosmeta.HAS_ACCESS) ^ (0 if access[0] else dosmeta.HAS_ACCESS)
        if sparse is not None:
            rec.flags = rec.flags | dosmeta.IS_SPARSE if sparse else rec.flags & ~dosmeta.IS_SPARSE
        try:
            if change is not None:
                rec.flags |= dosmeta.HAS_CHANGE
                rec.change = change
                self._keep_change(path, rec)
            elif dosmeta.encode(rec) != raw:
                setxattr_lending(path, _XATTR_DOS, dosmeta.encode(rec))
        except OSError as e:
            # Not kept, silently: no xattrs here, no room, or a read-only file of
            # someone else (user xattrs follow the file's write permission).
            if e.errno not in _XATTR_SKIP:
                raise
            log.debug("DOS attributes of %s not kept: %s", path, e)

    @staticmethod
    def _keep_change(path: str, rec: DosRecord) -> None:
        """Write ``rec`` with a ChangeTime guard no earlier than the ctime the write
        itself gives the inode, and not much later (see gateway.fs.dosmeta).

        The guard is the writer's clock plus a margin, checked against the ctime
        the write produced; a volume whose clock runs elsewhere (NFS, another
        host) is met on the next try with its own ctime plus the margin.
        """
        guard = time.time_ns() + _GUARD_MARGIN_NS
        for _ in range(4):
            rec.change_guard_ns = guard
            setxattr_lending(path, _XATTR_DOS, dosmeta.encode(rec))
            ctime = os.stat(path).st_ctime_ns
            if ctime <= guard <= ctime + 2 * _GUARD_MARGIN_NS:
                return
            # Stamped after the guard (the writer was held up), or long before it
            # (the volume's clock is behind ours): try again on the volume's clock.
            guard = ctime + _GUARD_MARGIN_NS
        log.debug("ChangeTime of %s not kept exactly (ctime %d, guard %d)", path, ctime, guard)


_XATTR_SKIP = frozenset(
    {errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSPC, errno.E2BIG, errno.EACCES, errno.EPERM}
)


def setxattr_lending(target: str | int, name: str, value: bytes) -> None:
    """setxattr; a read-only file of ours gets the owner write bit lent for it
    (user xattrs follow the write bit, for anyone but root)."""
    try:
        os.setxattr(target, name, value)
    except PermissionError:
        mode = os.stat(target).st_mode
        if mode & stat.S_IWUSR:
            raise
        os.chmod(target, stat.S_IMODE(mode) | stat.S_IWUSR)
        try:
            os.setxattr(target, name, value)
        finally:
            os.chmod(target, stat.S_IMODE(mode))


def _utime_as_near(path: str, atime_ns: int, mtime_ns: int) -> os.stat_result:
    """Set the inode times, or as near as the filesystem goes (it clamps, or
    refuses a value out of its range); returns the stat after."""
    try:
        os.utime(path, ns=(atime_ns, mtime_ns))
    except (OverflowError, OSError) as e:
        if isinstance(e, OSError) and e.errno not in (errno.EINVAL, errno.EOVERFLOW, errno.ERANGE):
            raise
        log.debug("times of %s out of the filesystem's range: %s", path, e)
    return os.stat(path)


def _supports_xattrs(path: str) -> bool:
    """Whether user xattrs can be read here (ENODATA says yes, ENOTSUP no)."""
    try:
        os.getxattr(path, _XATTR_VOLUME)
    except OSError as e:
        return e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP)
    return True


def _rename_noreplace(old: str, new: str) -> None:
    """rename() that refuses an existing target (EEXIST), atomically where possible."""
    if _renameat2 is not None:
        rc = _renameat2(_AT_FDCWD, os.fsencode(old), _AT_FDCWD, os.fsencode(new),
                        _RENAME_NOREPLACE)  # fmt: skip
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), new)
    # No RENAME_NOREPLACE on this filesystem: check, then rename (a small window).
    if os.path.lexists(new):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), new)
    os.rename(old, new)
