"""File, directory and file-system information classes (MS-FSCC 2.4, 2.5), struct-based."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .constants import FileInfoClass, FsInfoClass, NtStatusError, Status

if TYPE_CHECKING:
    from ..vfs import FileInfo


class _FS(Protocol):
    volume_id: int

    def statvfs(self) -> os.statvfs_result: ...


_BASIC = struct.Struct("<QQQQII")
_STANDARD = struct.Struct("<QQIBBH")
_NETWORK_OPEN = struct.Struct("<QQQQQQII")
_DIR_PREFIX = struct.Struct("<IIQQQQQQII")  # 64 bytes common to the directory classes
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

FILE_DEVICE_DISK = 0x07
FILE_DEVICE_IS_MOUNTED = 0x20
# Case-sensitive search and preserved names: the volume is a POSIX tree.
FS_ATTRIBUTES = 0x00000001 | 0x00000002 | 0x00000004
FS_NAME = "NTFS"  # what Windows clients expect to see; Samba reports the same by default
SECTOR = 512


def _u16(s: str) -> bytes:
    return s.encode("utf-16-le")


def _basename(name: str) -> str:
    return name.rstrip("\\").rsplit("\\", 1)[-1]


# -- QUERY_INFO, file classes --------------------------------------------------------


def file_basic(info: FileInfo) -> bytes:
    return _BASIC.pack(
        info.creation_time, info.last_access_time, info.last_write_time, info.change_time,
        info.attributes, 0,
    )  # fmt: skip


def file_standard(info: FileInfo | None, *, delete_pending: bool, directory: bool) -> bytes:
    if info is None:  # a named pipe
        return _STANDARD.pack(4096, 0, 1, int(delete_pending), 0, 0)
    return _STANDARD.pack(
        info.allocation_size, info.size, max(1, info.nlink) - (1 if delete_pending else 0),
        int(delete_pending), int(info.is_dir or directory), 0,
    )  # fmt: skip


def file_network_open(info: FileInfo) -> bytes:
    return _NETWORK_OPEN.pack(
        info.creation_time, info.last_access_time, info.last_write_time, info.change_time,
        info.allocation_size, info.size, info.attributes, 0,
    )  # fmt: skip


def _name_info(name: str) -> bytes:
    raw = _u16(name)
    return _U32.pack(len(raw)) + raw


def _stream_info(info: FileInfo) -> bytes:
    if info.is_dir:
        return b""
    raw = _u16("::$DATA")
    return struct.pack("<IIQQ", 0, len(raw), info.size, info.allocation_size) + raw


def query_file_info(
    info_class: int,
    info: FileInfo,
    *,
    name: str,
    delete_pending: bool,
    access: int,
    position: int,
    mode: int,
) -> bytes:
    """The bytes of one file information class for QUERY_INFO."""
    c = info_class
    if c == FileInfoClass.BASIC:
        return file_basic(info)
    if c == FileInfoClass.STANDARD:
        return file_standard(info, delete_pending=delete_pending, directory=info.is_dir)
    if c == FileInfoClass.INTERNAL:
        return _U64.pack(info.inode)
    if c == FileInfoClass.EA:
        return _U32.pack(0)
    if c == FileInfoClass.ACCESS:
        return _U32.pack(access)
    if c == FileInfoClass.POSITION:
        return _U64.pack(position)
    if c == FileInfoClass.MODE:
        return _U32.pack(mode)
    if c == FileInfoClass.ALIGNMENT:
        return _U32.pack(0)
    if c in (FileInfoClass.NAME, FileInfoClass.NORMALIZED_NAME):
        return _name_info(name)
    if c == FileInfoClass.ALL:
        return (
            file_basic(info)
            + file_standard(info, delete_pending=delete_pending, directory=info.is_dir)
            + _U64.pack(info.inode)
            + _U32.pack(0)
            + _U32.pack(access)
            + _U64.pack(position)
            + _U32.pack(mode)
            + _U32.pack(0)
            + _name_info(name)
        )
    if c == FileInfoClass.ALTERNATE_NAME:
        # No 8.3 names are generated: the long name is the only name (Samba with
        # "mangled names = no" answers the same way).
        return _name_info(_basename(name))
    if c == FileInfoClass.STREAM:
        return _stream_info(info)
    if c == FileInfoClass.COMPRESSION:
        return struct.pack("<QHBBB3s", info.size, 0, 0, 0, 0, b"")
    if c == FileInfoClass.NETWORK_OPEN:
        return file_network_open(info)
    if c == FileInfoClass.ATTRIBUTE_TAG:
        return struct.pack("<II", info.attributes, 0)
    if c == FileInfoClass.ID_INFORMATION:
        vol = int(info.file_key.split(":", 1)[0], 16)
        return struct.pack("<QQQ", vol, info.inode, 0)
    raise NtStatusError(Status.INVALID_INFO_CLASS)


# -- QUERY_DIRECTORY -------------------------------------------------------------------

DIRECTORY_CLASSES = {
    FileInfoClass.DIRECTORY,
    FileInfoClass.FULL_DIRECTORY,
    FileInfoClass.BOTH_DIRECTORY,
    FileInfoClass.NAMES,
    FileInfoClass.ID_BOTH_DIRECTORY,
    FileInfoClass.ID_FULL_DIRECTORY,
    FileInfoClass.ID_EXTD_DIRECTORY,
}


def _dir_entry(info_class: int, name: str, info: FileInfo) -> bytes:
    raw = _u16(name)
    if info_class == FileInfoClass.NAMES:
        return struct.pack("<III", 0, 0, len(raw)) + raw
    prefix = _DIR_PREFIX.pack(
        0, 0, info.creation_time, info.last_access_time, info.last_write_time,
        info.change_time, info.size, info.allocation_size, info.attributes, len(raw),
    )  # fmt: skip
    if info_class == FileInfoClass.DIRECTORY:
        return prefix + raw
    if info_class == FileInfoClass.FULL_DIRECTORY:
        return prefix + _U32.pack(0) + raw
    if info_class == FileInfoClass.BOTH_DIRECTORY:
        return prefix + struct.pack("<IBB24s", 0, 0, 0, b"") + raw
    if info_class == FileInfoClass.ID_BOTH_DIRECTORY:
        return prefix + struct.pack("<IBB24sHQ", 0, 0, 0, b"", 0, info.inode) + raw
    if info_class == FileInfoClass.ID_FULL_DIRECTORY:
        return prefix + struct.pack("<IIQ", 0, 0, info.inode) + raw
    if info_class == FileInfoClass.ID_EXTD_DIRECTORY:
        return prefix + struct.pack("<IIQQ", 0, 0, info.inode, 0) + raw
    raise NtStatusError(Status.INVALID_INFO_CLASS)


def pack_directory(
    info_class: int, entries: list[tuple[str, FileInfo]], max_len: int
) -> tuple[bytes, int]:
    """As many entries as fit in ``max_len`` (8-byte aligned, chained); and how many."""
    out = bytearray()
    last = -1
    count = 0
    for name, info in entries:
        entry = _dir_entry(info_class, name, info)
        start = (len(out) + 7) & ~7
        if start + len(entry) > max_len:
            break
        out += b"\x00" * (start - len(out))
        if last >= 0:
            _U32.pack_into(out, last, start - last)
        last = start
        out += entry
        count += 1
    return bytes(out), count


# -- QUERY_INFO, file-system classes ------------------------------------------------------


def query_fs_info(info_class: int, fs: _FS, *, label: str) -> bytes:
    c = info_class
    if c == FsInfoClass.VOLUME:
        raw = _u16(label)
        return struct.pack("<QIIBB", 0, fs.volume_id & 0xFFFFFFFF, len(raw), 0, 0) + raw
    if c in (FsInfoClass.SIZE, FsInfoClass.FULL_SIZE):
        sv = fs.statvfs()
        sectors_per_unit = max(1, sv.f_frsize // SECTOR)
        if c == FsInfoClass.SIZE:
            return struct.pack("<QQII", sv.f_blocks, sv.f_bavail, sectors_per_unit, SECTOR)
        return struct.pack("<QQQII", sv.f_blocks, sv.f_bavail, sv.f_bfree, sectors_per_unit, SECTOR)
    if c == FsInfoClass.DEVICE:
        return struct.pack("<II", FILE_DEVICE_DISK, FILE_DEVICE_IS_MOUNTED)
    if c == FsInfoClass.ATTRIBUTE:
        raw = _u16(FS_NAME)
        return struct.pack("<III", FS_ATTRIBUTES, 255, len(raw)) + raw
    if c == FsInfoClass.OBJECT_ID:
        return struct.pack("<Q8s", fs.volume_id, b"") + bytes(48)
    if c == FsInfoClass.SECTOR_SIZE:
        return struct.pack("<IIIIIII", SECTOR, SECTOR, SECTOR, SECTOR, 0x3, 0, 0)
    raise NtStatusError(Status.INVALID_INFO_CLASS)


# -- SET_INFO buffers --------------------------------------------------------------------


@dataclass(frozen=True)
class BasicInfo:
    creation_time: int
    last_access_time: int
    last_write_time: int
    change_time: int
    file_attributes: int


def _need(buf: bytes, n: int) -> None:
    if len(buf) < n:
        raise NtStatusError(Status.INFO_LENGTH_MISMATCH)


def parse_basic(buf: bytes) -> BasicInfo:
    _need(buf, 36)
    c, a, w, ch, attrs = struct.unpack_from("<QQQQI", buf)
    return BasicInfo(c, a, w, ch, attrs)


def parse_rename(buf: bytes) -> tuple[bool, str]:
    """(ReplaceIfExists, target name) of the SMB2 FileRenameInformation."""
    _need(buf, 20)
    replace, _root, length = struct.unpack_from("<B7xQI", buf)
    if length == 0 or 20 + length > len(buf) or length % 2:
        raise NtStatusError(Status.INVALID_PARAMETER)
    try:
        return bool(replace), buf[20 : 20 + length].decode("utf-16-le")
    except UnicodeDecodeError:
        raise NtStatusError(Status.OBJECT_NAME_INVALID) from None


def parse_disposition(buf: bytes, *, ex: bool = False) -> bool:
    if ex:
        _need(buf, 4)
        return bool(_U32.unpack_from(buf)[0] & 0x1)
    _need(buf, 1)
    return bool(buf[0])


def parse_end_of_file(buf: bytes) -> int:
    _need(buf, 8)
    size = int(_U64.unpack_from(buf)[0])
    if size > 0x7FFFFFFFFFFFFFFF:
        raise NtStatusError(Status.INVALID_PARAMETER)
    return size


parse_allocation = parse_end_of_file
parse_position = parse_end_of_file


def parse_mode(buf: bytes) -> int:
    _need(buf, 4)
    mode = int(_U32.unpack_from(buf)[0])
    if mode & ~0x103E:
        raise NtStatusError(Status.INVALID_PARAMETER)
    return mode
