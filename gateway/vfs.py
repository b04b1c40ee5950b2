"""The filesystem layer of one share: path confinement, identity, errno mapping.

Every SMB name is resolved to a host path inside the share root; anything
that would leave the root (``..``, absolute names, symlinks pointing out) is
refused with the status Windows gives. A file's identity is its volume id and
inode number, the same on every node that mounts the volume.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
from dataclasses import dataclass
from typing import Any

from .protocol.constants import FileAttributes, NtStatusError, Status

# FILETIME counts 100 ns ticks since 1601-01-01.
_EPOCH_DELTA = 116444736000000000

_DOS_DEVICES = (
    {"CON", "PRN", "AUX", "NUL"}
    | {f"COM{i}" for i in range(1, 10)}
    | {f"LPT{i}" for i in range(1, 10)}
)
_INVALID_CHARS = re.compile(r'[\x00-\x1f"*/:<>?|]')
_XATTR_CTIME = "user.smbgw.crtime"
_XATTR_ATTRS = "user.smbgw.dosattrib"
_STORED_ATTRS = (
    FileAttributes.HIDDEN | FileAttributes.SYSTEM | FileAttributes.ARCHIVE
    | FileAttributes.TEMPORARY | FileAttributes.NOT_CONTENT_INDEXED
)  # fmt: skip


def to_filetime(seconds: float) -> int:
    return int(seconds * 10_000_000) + _EPOCH_DELTA


def ns_to_filetime(ns: int) -> int:
    return ns // 100 + _EPOCH_DELTA


def from_filetime(ft: int) -> float:
    return (ft - _EPOCH_DELTA) / 10_000_000


_ERRNO_STATUS = {
    errno.ENOENT: Status.OBJECT_NAME_NOT_FOUND,
    errno.EEXIST: Status.OBJECT_NAME_COLLISION,
    errno.EACCES: Status.ACCESS_DENIED,
    errno.EPERM: Status.ACCESS_DENIED,
    errno.EROFS: Status.MEDIA_WRITE_PROTECTED,
    errno.ENOTEMPTY: Status.DIRECTORY_NOT_EMPTY,
    errno.ENOTDIR: Status.OBJECT_PATH_NOT_FOUND,
    errno.EISDIR: Status.FILE_IS_A_DIRECTORY,
    errno.ENOSPC: Status.DISK_FULL,
    errno.EDQUOT: Status.DISK_FULL,
    errno.ENAMETOOLONG: Status.NAME_TOO_LONG,
    errno.EXDEV: Status.NOT_SAME_DEVICE,
    errno.EINVAL: Status.INVALID_PARAMETER,
    errno.EFBIG: Status.DISK_FULL,
    errno.ELOOP: Status.OBJECT_PATH_NOT_FOUND,
    errno.EMFILE: Status.TOO_MANY_OPENED_FILES,
    errno.ENFILE: Status.TOO_MANY_OPENED_FILES,
    errno.EBUSY: Status.SHARING_VIOLATION,
    errno.EIO: Status.UNEXPECTED_IO_ERROR,
}


def status_from_oserror(e: OSError) -> int:
    """The one place errno becomes NTSTATUS."""
    return int(_ERRNO_STATUS.get(e.errno or 0, Status.UNSUCCESSFUL))


@dataclass(slots=True)
class FileInfo:
    size: int
    allocation_size: int
    creation_time: int
    last_access_time: int
    last_write_time: int
    change_time: int
    attributes: int
    is_dir: bool
    inode: int
    nlink: int
    file_key: str


def wildcard_match(pattern: str, name: str) -> bool:
    """Windows wildcard match, case-insensitive: * ? and the DOS forms < > \"."""
    if pattern in ("*", "*.*", "<.*"):
        return True
    # DOS_STAR '<', DOS_QM '>', DOS_DOT '"' (MS-FSA 2.1.4.4), approximated.
    translated = pattern.replace("<", "*").replace(">", "?").replace('"', ".")
    if not any(c in translated for c in "*?["):
        return translated.lower() == name.lower()
    return fnmatch.fnmatchcase(name.lower(), translated.lower().replace("[", "[[]"))


class ShareFS:
    def __init__(self, root: str) -> None:
        if not os.path.isdir(root):
            raise NotADirectoryError(f"share root {root} is not a directory")
        self.root = os.path.realpath(root)
        st = os.stat(self.root)
        self.volume_id = st.st_dev
        self._xattrs = _supports_xattrs(self.root)

    # -- names -----------------------------------------------------------------

    def resolve(self, smb_name: str) -> str:
        """Host path of an SMB name (relative to the share, backslashes)."""
        name = smb_name
        if name.startswith("\\"):
            raise NtStatusError(Status.INVALID_PARAMETER, "name starts with a backslash")
        if name.endswith("::$DATA"):
            name = name[: -len("::$DATA")]
        parts = [p for p in name.split("\\")]
        if parts and parts[-1] == "":
            parts.pop()  # one trailing backslash names the same object
        out: list[str] = []
        for i, part in enumerate(parts):
            if part == "":
                raise NtStatusError(Status.OBJECT_NAME_INVALID)
            if part in (".", ".."):
                status = Status.OBJECT_PATH_SYNTAX_BAD if i else Status.INVALID_PARAMETER
                raise NtStatusError(status)
            if ":" in part:
                raise NtStatusError(Status.OBJECT_NAME_INVALID, "alternate data streams")
            if _INVALID_CHARS.search(part):
                raise NtStatusError(Status.OBJECT_NAME_INVALID)
            if part.split(".", 1)[0].upper() in _DOS_DEVICES:
                raise NtStatusError(Status.OBJECT_NAME_INVALID, "DOS device name")
            if len(part.encode("utf-8")) > 255:
                raise NtStatusError(Status.OBJECT_NAME_INVALID)
            out.append(part)
        return os.path.join(self.root, *out) if out else self.root

    def _confined(self, path: str) -> bool:
        real = os.path.realpath(path)
        return real == self.root or real.startswith(self.root + os.sep)

    def lookup(self, smb_name: str) -> tuple[str, FileInfo | None]:
        """(host path, info or None); a missing parent is OBJECT_PATH_NOT_FOUND."""
        path = self.resolve(smb_name)
        parent = os.path.dirname(path) if path != self.root else self.root
        if not self._confined(parent):
            raise NtStatusError(Status.ACCESS_DENIED, "path leads outside the share")
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if not os.path.isdir(parent):
                raise NtStatusError(Status.OBJECT_PATH_NOT_FOUND) from None
            return path, None
        except NotADirectoryError:
            raise NtStatusError(Status.OBJECT_PATH_NOT_FOUND) from None
        except OSError as e:
            raise NtStatusError(status_from_oserror(e)) from None
        if stat.S_ISLNK(st.st_mode):
            if not self._confined(path):
                raise NtStatusError(Status.ACCESS_DENIED, "symlink leads outside the share")
            try:
                st = os.stat(path)
            except OSError:
                return path, None
            path = os.path.realpath(path)
        return path, self._info(st, path)

    # -- metadata ----------------------------------------------------------------

    def _info(self, st: os.stat_result, path: str | None = None, fd: int = -1) -> FileInfo:
        is_dir = stat.S_ISDIR(st.st_mode)
        attrs = FileAttributes.DIRECTORY if is_dir else FileAttributes.ARCHIVE
        crtime = min(st.st_mtime_ns, st.st_ctime_ns)
        if self._xattrs:
            stored = _getxattr(fd if fd >= 0 else path, _XATTR_ATTRS)
            if stored is not None:
                attrs = (attrs & ~FileAttributes.ARCHIVE) | (int(stored) & _STORED_ATTRS)
            ct = _getxattr(fd if fd >= 0 else path, _XATTR_CTIME)
            if ct is not None:
                crtime = int(ct)
        if not st.st_mode & stat.S_IWUSR:
            attrs |= FileAttributes.READONLY
        if not attrs:
            attrs = FileAttributes.NORMAL
        size = 0 if is_dir else st.st_size
        return FileInfo(
            size=size,
            allocation_size=(st.st_blocks * 512 + 4095) // 4096 * 4096 if not is_dir else 0,
            creation_time=ns_to_filetime(crtime),
            last_access_time=ns_to_filetime(st.st_atime_ns),
            last_write_time=ns_to_filetime(st.st_mtime_ns),
            change_time=ns_to_filetime(st.st_ctime_ns),
            attributes=int(attrs),
            is_dir=is_dir,
            inode=st.st_ino,
            nlink=st.st_nlink,
            file_key=f"{self.volume_id:x}:{st.st_ino:x}",
        )

    def stat_fd(self, fd: int) -> FileInfo:
        return self._info(os.fstat(fd), fd=fd)

    def stat_path(self, path: str) -> FileInfo:
        return self._info(os.stat(path), path)

    def listdir(self, path: str) -> list[tuple[str, FileInfo]]:
        """Entries with '.' and '..' first; entries vanishing mid-listing are skipped."""
        out = [(".", self.stat_path(path))]
        parent = path if path == self.root else os.path.dirname(path)
        out.append(("..", self.stat_path(parent)))
        try:
            with os.scandir(path) as it:
                for entry in it:
                    try:
                        st = entry.stat(follow_symlinks=True)
                    except OSError:
                        continue
                    if entry.is_symlink() and not self._confined(entry.path):
                        continue
                    out.append((entry.name, self._info(st, entry.path)))
        except OSError as e:
            raise NtStatusError(status_from_oserror(e)) from None
        return out

    def listdir_names(self, path: str) -> list[str]:
        try:
            return os.listdir(path)
        except OSError as e:
            raise NtStatusError(status_from_oserror(e)) from None

    def statvfs(self) -> os.statvfs_result:
        return os.statvfs(self.root)

    # -- mutations ---------------------------------------------------------------

    def set_attributes(self, path: str, attributes: int, *, is_dir: bool) -> None:
        mode = os.stat(path).st_mode
        if attributes & FileAttributes.READONLY and not is_dir:
            os.chmod(path, mode & ~0o222)
        elif mode & stat.S_IWUSR == 0:
            os.chmod(path, mode | stat.S_IWUSR)
        if self._xattrs:
            _setxattr(path, _XATTR_ATTRS, int(attributes) & _STORED_ATTRS)

    def set_basic(self, path: str, basic: Any, *, fd: int, is_dir: bool) -> None:
        """Apply FileBasicInformation: 0 leaves a time alone, -1 too (we do not freeze)."""
        st = os.stat(path)
        atime_ns, mtime_ns = st.st_atime_ns, st.st_mtime_ns
        if basic.last_access_time not in (0, -1, 0xFFFFFFFFFFFFFFFF):
            atime_ns = int(from_filetime(basic.last_access_time) * 1e9)
        if basic.last_write_time not in (0, -1, 0xFFFFFFFFFFFFFFFF):
            mtime_ns = int(from_filetime(basic.last_write_time) * 1e9)
        if (atime_ns, mtime_ns) != (st.st_atime_ns, st.st_mtime_ns):
            os.utime(path, ns=(atime_ns, mtime_ns))
        if basic.creation_time not in (0, -1, 0xFFFFFFFFFFFFFFFF) and self._xattrs:
            _setxattr(path, _XATTR_CTIME, int(from_filetime(basic.creation_time) * 1e9))
        if basic.file_attributes:
            if basic.file_attributes & FileAttributes.DIRECTORY and not is_dir:
                raise NtStatusError(Status.INVALID_PARAMETER)
            self.set_attributes(path, basic.file_attributes, is_dir=is_dir)

    def rename(self, old: str, new: str, *, replace: bool) -> None:
        if not self._confined(os.path.dirname(new)):
            raise NtStatusError(Status.ACCESS_DENIED)
        if not os.path.isdir(os.path.dirname(new)):
            raise NtStatusError(Status.OBJECT_PATH_NOT_FOUND)
        try:
            if replace:
                os.replace(old, new)
            elif os.path.normcase(old) == os.path.normcase(new):
                os.rename(old, new)
            else:
                # link + unlink refuses an existing target atomically (no TOCTOU).
                if os.path.isdir(old):
                    if os.path.lexists(new):
                        raise NtStatusError(Status.OBJECT_NAME_COLLISION)
                    os.rename(old, new)
                else:
                    os.link(old, new)
                    os.unlink(old)
        except FileExistsError:
            raise NtStatusError(Status.OBJECT_NAME_COLLISION) from None
        except OSError as e:
            raise NtStatusError(status_from_oserror(e)) from None


def _supports_xattrs(path: str) -> bool:
    try:
        os.setxattr(path, "user.smbgw.probe", b"1")
        os.removexattr(path, "user.smbgw.probe")
        return True
    except OSError:
        return False


def _getxattr(target: str | int | None, name: str) -> int | None:
    if target is None:
        return None
    try:
        return int(os.getxattr(target, name))
    except (OSError, ValueError):
        return None


def _setxattr(target: str | int, name: str, value: int) -> None:
    try:
        os.setxattr(target, name, str(value).encode())
    except OSError:
        pass
