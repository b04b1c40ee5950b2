"""File, directory and file-system information classes (MS-FSCC 2.4, 2.5), struct-based.

Sans-IO: encoders take a ``FileInfo`` (or plain values) and return bytes; parsers
take a SET_INFO buffer and return values, raising ``NtStatusError``. A buffer
shorter than its class is INFO_LENGTH_MISMATCH, as the Windows I/O manager
answers (it checks the minimum size of each class; longer buffers are accepted).

File-system answers: the name is "NTFS", as Samba's default ``fstype`` and what
Windows applications test for before using features (Office and Access among
them); the attributes are what a POSIX tree behind the gateway really does:
case-sensitive lookups, preserved case, Unicode names, named streams
(``gateway.fs.streamstore``), file-level TRIM, and sparse files where the volume
keeps xattrs (the caller passes that bit). No persistent ACLs (the security
descriptor is synthesised), no object ids, no 8.3 names (directory entries
carry an empty ShortName).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .constants import FileInfoClass, FsInfoClass, NtStatusError, Status

if TYPE_CHECKING:
    from .fileinfo import FileInfo, VolumeSize


class VolumeSource(Protocol):
    """What the file-system classes need of a share (``gateway.fs.vfs.ShareFS``)."""

    @property
    def volume_serial(self) -> int: ...

    @property
    def volume_created(self) -> int: ...

    def volume_size(self) -> VolumeSize: ...


_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_BASIC = struct.Struct("<QQQQII")  # 40
_STANDARD = struct.Struct("<QQIBBH")  # 24
_NETWORK_OPEN = struct.Struct("<QQQQQQII")  # 56
_STREAM = struct.Struct("<IIQQ")  # 24 + name
_COMPRESSION = struct.Struct("<QHBBB3x")  # 16
_ATTRIBUTE_TAG = struct.Struct("<II")
_ID_INFO = struct.Struct("<QQQ")  # VolumeSerialNumber, 128-bit FileId
_ALL_MIDDLE = struct.Struct("<QIIQII")  # internal, ea, access, position, mode, alignment

FILE_DEVICE_DISK = 0x00000007
FILE_DEVICE_IS_MOUNTED = 0x00000020
FILE_CASE_SENSITIVE_SEARCH = 0x00000001
FILE_CASE_PRESERVED_NAMES = 0x00000002
FILE_UNICODE_ON_DISK = 0x00000004
FILE_SUPPORTS_SPARSE_FILES = 0x00000040
FILE_NAMED_STREAMS = 0x00040000
FS_ATTRIBUTES = (
    FILE_CASE_SENSITIVE_SEARCH | FILE_CASE_PRESERVED_NAMES | FILE_UNICODE_ON_DISK
    | FILE_NAMED_STREAMS
)  # fmt: skip
FS_NAME = "NTFS"
FS_NAME_UTF16 = FS_NAME.encode("utf-16-le")
MAX_COMPONENT_LENGTH = 255
SECTOR = 512
SSINFO_FLAGS_ALIGNED_DEVICE = 0x1
SSINFO_FLAGS_PARTITION_ALIGNED_ON_DEVICE = 0x2
SSINFO_FLAGS_TRIM_ENABLED = 0x8
DEFAULT_STREAM_NAME = "::$DATA".encode("utf-16-le")


def _u16(s: str) -> bytes:
    return s.encode("utf-16-le")


# -- QUERY_INFO output buffer sizes -------------------------------------------------------

# The smallest OutputBufferLength each class accepts: the Windows structure size,
# a one-character name included and rounded up to the structure's alignment
# (MS-FSA 2.1.5.11/2.1.5.12 "BlockAlign(sizeof(...))"; smbtorture
# smb2.getinfo.q*_buffercheck). Less is INFO_LENGTH_MISMATCH; an answer longer than
# a buffer at least this big is cut to it with STATUS_BUFFER_OVERFLOW.
_MIN_FILE_OUTPUT: dict[int, int] = {
    FileInfoClass.BASIC: 40,
    FileInfoClass.STANDARD: 24,
    FileInfoClass.INTERNAL: 8,
    FileInfoClass.EA: 4,
    FileInfoClass.ACCESS: 4,
    FileInfoClass.NAME: 8,
    FileInfoClass.POSITION: 8,
    FileInfoClass.MODE: 4,
    FileInfoClass.ALIGNMENT: 4,
    FileInfoClass.ALL: 104,
    FileInfoClass.ALTERNATE_NAME: 8,
    FileInfoClass.STREAM: 32,
    FileInfoClass.COMPRESSION: 16,
    FileInfoClass.NETWORK_OPEN: 56,
    FileInfoClass.ATTRIBUTE_TAG: 8,
    FileInfoClass.NORMALIZED_NAME: 8,
    FileInfoClass.ID_INFORMATION: 24,
}
_MIN_FS_OUTPUT: dict[int, int] = {
    FsInfoClass.VOLUME: 24,
    FsInfoClass.SIZE: 24,
    FsInfoClass.DEVICE: 8,
    FsInfoClass.ATTRIBUTE: 16,
    FsInfoClass.CONTROL: 48,
    FsInfoClass.FULL_SIZE: 32,
    FsInfoClass.OBJECT_ID: 64,
    FsInfoClass.SECTOR_SIZE: 28,
}


def fit_output(data: bytes, out_len: int, minimum: int) -> tuple[int, bytes]:
    """(status, bytes) of an answer for a client buffer of ``out_len`` bytes."""
    if out_len < minimum:
        raise NtStatusError(Status.INFO_LENGTH_MISMATCH)
    if len(data) > out_len:
        return Status.BUFFER_OVERFLOW, data[:out_len]
    return Status.SUCCESS, data


def fit_file_output(info_class: int, data: bytes, out_len: int) -> tuple[int, bytes]:
    """``fit_output`` for a file class; a class not listed is all fixed."""
    return fit_output(data, out_len, _MIN_FILE_OUTPUT.get(info_class, len(data)))


def fit_fs_output(info_class: int, data: bytes, out_len: int) -> tuple[int, bytes]:
    """``fit_output`` for a file-system class; a class not listed is all fixed."""
    return fit_output(data, out_len, _MIN_FS_OUTPUT.get(info_class, len(data)))


# -- QUERY_INFO, file classes (MS-FSCC 2.4) --------------------------------------------


def file_basic(info: FileInfo) -> bytes:
    """FileBasicInformation (2.4.7): four FILETIMEs, attributes, reserved; 40 bytes."""
    return _BASIC.pack(
        info.creation_time, info.last_access_time, info.last_write_time, info.change_time,
        info.attributes, 0,
    )  # fmt: skip


def file_standard(info: FileInfo | None, *, delete_pending: bool, directory: bool) -> bytes:
    """FileStandardInformation (2.4.41); ``None`` describes a named pipe.

    A directory has one link (as Samba reports, whatever POSIX counts), and a
    pending delete takes one away.
    """
    if info is None:
        return _STANDARD.pack(4096, 0, 1, int(delete_pending), 0, 0)
    is_dir = info.is_dir or directory
    nlink = 1 if is_dir and info.nlink else info.nlink
    if delete_pending and nlink:
        nlink -= 1
    return _STANDARD.pack(
        info.allocation_size, info.size, nlink, int(delete_pending), int(is_dir), 0
    )


def file_internal(info: FileInfo) -> bytes:
    """FileInternalInformation (2.4.22): the 64-bit file id (the inode)."""
    return _U64.pack(info.inode)


def file_ea(ea_size: int = 0) -> bytes:
    """FileEaInformation (2.4.13): the size of the file's EAs (``gateway.fs.eas``)."""
    return _U32.pack(ea_size)


def file_access(access: int) -> bytes:
    """FileAccessInformation (2.4.1): the open's granted access."""
    return _U32.pack(access)


def file_position(position: int) -> bytes:
    """FilePositionInformation (2.4.35)."""
    return _U64.pack(position)


def file_mode(mode: int) -> bytes:
    """FileModeInformation (2.4.26)."""
    return _U32.pack(mode)


def file_alignment() -> bytes:
    """FileAlignmentInformation (2.4.3): FILE_BYTE_ALIGNMENT."""
    return _U32.pack(0)


def file_name(name: str) -> bytes:
    """FileNameInformation (2.4.27) and FileNormalizedNameInformation (2.4.30)."""
    raw = _u16(name)
    return _U32.pack(len(raw)) + raw


def file_alternate_name(short_name: str) -> bytes:
    """FileAlternateNameInformation (2.4.5): the 8.3 name, in the FILE_NAME layout."""
    return file_name(short_name)


def file_all(
    info: FileInfo, *, name: str, delete_pending: bool, access: int, position: int, mode: int,
    ea_size: int = 0,
) -> bytes:  # fmt: skip
    """FileAllInformation (2.4.2): basic, standard, internal, EA, access, position,
    mode, alignment, name; 100 bytes and the name."""
    raw = _u16(name)
    return b"".join((
        file_basic(info),
        file_standard(info, delete_pending=delete_pending, directory=info.is_dir),
        _ALL_MIDDLE.pack(info.inode, ea_size, access, position, mode, 0),
        _U32.pack(len(raw)),
        raw,
    ))  # fmt: skip


def file_stream(info: FileInfo) -> bytes:
    """FileStreamInformation (2.4.43) of a file without named streams: one
    ``::$DATA`` entry for a file, none for a directory."""
    if info.is_dir:
        return b""
    return file_streams([("::$DATA", info.size, info.allocation_size)])


def file_streams(entries: Iterable[tuple[str, int, int]]) -> bytes:
    """FileStreamInformation (2.4.43): (``:name:$DATA``, size, allocation) per
    stream, each entry but the last padded to 8 bytes."""
    out = bytearray()
    items = list(entries)
    for i, (name, size, alloc) in enumerate(items):
        raw = _u16(name)
        length = _STREAM.size + len(raw)
        nxt = (length + 7) & ~7 if i != len(items) - 1 else 0
        out += _STREAM.pack(nxt, len(raw), size, alloc) + raw + _PAD[(nxt - length) if nxt else 0]
    return bytes(out)


def file_compression(info: FileInfo) -> bytes:
    """FileCompressionInformation (2.4.9): COMPRESSION_FORMAT_NONE."""
    return _COMPRESSION.pack(info.size, 0, 0, 0, 0)


def file_network_open(info: FileInfo) -> bytes:
    """FileNetworkOpenInformation (2.4.29); 56 bytes."""
    return _NETWORK_OPEN.pack(
        info.creation_time, info.last_access_time, info.last_write_time, info.change_time,
        info.allocation_size, info.size, info.attributes, 0,
    )  # fmt: skip


def file_attribute_tag(info: FileInfo) -> bytes:
    """FileAttributeTagInformation (2.4.6): attributes, no reparse tag."""
    return _ATTRIBUTE_TAG.pack(info.attributes, 0)


def file_id(info: FileInfo, volume_serial: int) -> bytes:
    """FileIdInformation (2.4.21): volume serial number and the 128-bit file id."""
    return _ID_INFO.pack(volume_serial, info.inode, 0)


def volume_serial_of(volume_id: int) -> int:
    """The 32-bit volume serial number of a 64-bit volume id (``ShareFS.volume_serial``)."""
    return (volume_id ^ (volume_id >> 32)) & 0xFFFFFFFF


def query_file_info(
    info_class: int,
    info: FileInfo,
    *,
    name: str,
    delete_pending: bool,
    access: int,
    position: int,
    mode: int,
    short_name: str | None = None,
    ea_size: int = 0,
) -> bytes:
    """The bytes of one file information class for QUERY_INFO.

    ``name`` is the file's name for FileNameInformation: the path from the share
    root with a leading backslash. FileAlternateNameInformation answers
    ``short_name``; without one it answers the long base name (no 8.3 names are
    generated, and the long name is the file's only name). A caller that prefers
    NOT_SUPPORTED raises it itself: smbclient's allinfo tolerates that status but
    prints it. An unknown or set-only class is INVALID_INFO_CLASS.
    """
    c = info_class
    if c == FileInfoClass.BASIC:
        return file_basic(info)
    if c == FileInfoClass.STANDARD:
        return file_standard(info, delete_pending=delete_pending, directory=info.is_dir)
    if c == FileInfoClass.INTERNAL:
        return file_internal(info)
    if c == FileInfoClass.EA:
        return file_ea(ea_size)
    if c == FileInfoClass.ACCESS:
        return file_access(access)
    if c == FileInfoClass.POSITION:
        return file_position(position)
    if c == FileInfoClass.MODE:
        return file_mode(mode)
    if c == FileInfoClass.ALIGNMENT:
        return file_alignment()
    if c in (FileInfoClass.NAME, FileInfoClass.NORMALIZED_NAME):
        return file_name(name)
    if c == FileInfoClass.ALL:
        return file_all(
            info, name=name, delete_pending=delete_pending, access=access,
            position=position, mode=mode, ea_size=ea_size,
        )  # fmt: skip
    if c == FileInfoClass.ALTERNATE_NAME:
        if short_name is None:
            short_name = name.rstrip("\\").rsplit("\\", 1)[-1]
        return file_alternate_name(short_name)
    if c == FileInfoClass.STREAM:
        return file_stream(info)
    if c == FileInfoClass.COMPRESSION:
        return file_compression(info)
    if c == FileInfoClass.NETWORK_OPEN:
        return file_network_open(info)
    if c == FileInfoClass.ATTRIBUTE_TAG:
        return file_attribute_tag(info)
    if c == FileInfoClass.ID_INFORMATION:
        return file_id(info, volume_serial_of(info.volume_id))
    raise NtStatusError(Status.INVALID_INFO_CLASS)


# -- QUERY_DIRECTORY (MS-FSCC 2.4.10, 2.4.14, 2.4.8, 2.4.28, 2.4.17, 2.4.18, 2.4.19) ------

# Every layout starts NextEntryOffset, FileIndex; all but FileNames continue with
# four FILETIMEs, EndOfFile, AllocationSize, FileAttributes, FileNameLength.
_D_DIRECTORY = struct.Struct("<IIQQQQQQII")  # 64
_D_FULL = struct.Struct("<IIQQQQQQIII")  # 68: EaSize
_D_BOTH = struct.Struct("<IIQQQQQQIIIBx24x")  # 94: EaSize, ShortNameLength, Reserved, ShortName
_D_ID_BOTH = struct.Struct("<IIQQQQQQIIIBx24x2xQ")  # 104: ... Reserved2, FileId
_D_ID_FULL = struct.Struct("<IIQQQQQQIII4xQ")  # 80: EaSize, Reserved, FileId
_D_ID_EXTD = struct.Struct("<IIQQQQQQIIIIQQ")  # 88: EaSize, ReparsePointTag, FileId (128)
_D_NAMES = struct.Struct("<III")  # 12

_PAD = [bytes(i) for i in range(8)]
_EntryPacker = Callable[[bytearray, int, "FileInfo", int], None]


def _e_directory(b: bytearray, o: int, i: FileInfo, n: int) -> None:
    _D_DIRECTORY.pack_into(
        b, o, 0, 0, i.creation_time, i.last_access_time, i.last_write_time, i.change_time,
        i.size, i.allocation_size, i.attributes, n,
    )  # fmt: skip


def _e_full(b: bytearray, o: int, i: FileInfo, n: int) -> None:
    _D_FULL.pack_into(
        b, o, 0, 0, i.creation_time, i.last_access_time, i.last_write_time, i.change_time,
        i.size, i.allocation_size, i.attributes, n, 0,
    )  # fmt: skip


def _e_both(b: bytearray, o: int, i: FileInfo, n: int) -> None:
    _D_BOTH.pack_into(
        b, o, 0, 0, i.creation_time, i.last_access_time, i.last_write_time, i.change_time,
        i.size, i.allocation_size, i.attributes, n, 0, 0,
    )  # fmt: skip


def _e_names(b: bytearray, o: int, i: FileInfo, n: int) -> None:
    _D_NAMES.pack_into(b, o, 0, 0, n)


def _e_id_both(b: bytearray, o: int, i: FileInfo, n: int) -> None:
    _D_ID_BOTH.pack_into(
        b, o, 0, 0, i.creation_time, i.last_access_time, i.last_write_time, i.change_time,
        i.size, i.allocation_size, i.attributes, n, 0, 0, i.inode,
    )  # fmt: skip


def _e_id_full(b: bytearray, o: int, i: FileInfo, n: int) -> None:
    _D_ID_FULL.pack_into(
        b, o, 0, 0, i.creation_time, i.last_access_time, i.last_write_time, i.change_time,
        i.size, i.allocation_size, i.attributes, n, 0, i.inode,
    )  # fmt: skip


def _e_id_extd(b: bytearray, o: int, i: FileInfo, n: int) -> None:
    _D_ID_EXTD.pack_into(
        b, o, 0, 0, i.creation_time, i.last_access_time, i.last_write_time, i.change_time,
        i.size, i.allocation_size, i.attributes, n, 0, 0, i.inode, 0,
    )  # fmt: skip


_DIR_LAYOUT: dict[int, tuple[struct.Struct, _EntryPacker]] = {
    FileInfoClass.DIRECTORY: (_D_DIRECTORY, _e_directory),
    FileInfoClass.FULL_DIRECTORY: (_D_FULL, _e_full),
    FileInfoClass.BOTH_DIRECTORY: (_D_BOTH, _e_both),
    FileInfoClass.NAMES: (_D_NAMES, _e_names),
    FileInfoClass.ID_BOTH_DIRECTORY: (_D_ID_BOTH, _e_id_both),
    FileInfoClass.ID_FULL_DIRECTORY: (_D_ID_FULL, _e_id_full),
    FileInfoClass.ID_EXTD_DIRECTORY: (_D_ID_EXTD, _e_id_extd),
}
DIRECTORY_CLASSES = frozenset(_DIR_LAYOUT)


def directory_entry_size(info_class: int, name: str) -> int:
    """Bytes of one entry without the padding that may follow it."""
    return _DIR_LAYOUT[info_class][0].size + len(name.encode("utf-16-le"))


def pack_directory(
    info_class: int, entries: Iterable[tuple[str, FileInfo]], max_len: int
) -> tuple[bytes, int]:
    """As many entries as fit in ``max_len`` bytes, and how many entries were used.

    Each entry starts 8-byte aligned; NextEntryOffset chains them and is 0 in the
    last one, which is not padded. An entry whose name cannot be UTF-16 counts as
    used but is left out. Unknown classes are INVALID_INFO_CLASS.
    """
    found = _DIR_LAYOUT.get(info_class)
    if found is None:
        raise NtStatusError(Status.INVALID_INFO_CLASS)
    layout, pack_entry = found
    fixed = layout.size
    zeros = bytes(fixed)
    out = bytearray()
    last = -1
    used = 0
    for name, info in entries:
        try:
            raw = name.encode("utf-16-le")
        except UnicodeEncodeError:
            used += 1
            continue
        end = len(out)
        start = (end + 7) & ~7
        if start + fixed + len(raw) > max_len:
            break
        if last >= 0:
            _U32.pack_into(out, last, start - last)
            out += _PAD[start - end]
        out += zeros
        pack_entry(out, start, info, len(raw))
        out += raw
        last = start
        used += 1
    return bytes(out), used


# -- QUERY_INFO, file-system classes (MS-FSCC 2.5) --------------------------------------------

_FS_VOLUME = struct.Struct("<QIIBx")  # 18 + label
_FS_SIZE = struct.Struct("<QQII")  # 24
_FS_FULL_SIZE = struct.Struct("<QQQII")  # 32
_FS_DEVICE = struct.Struct("<II")
_FS_ATTRIBUTE = struct.Struct("<III")  # 12 + name
_FS_OBJECT_ID = struct.Struct("<QQ48x")  # 64
_FS_SECTOR_SIZE = struct.Struct("<IIIIIII")  # 28


def fs_volume(serial: int, label: str, created: int = 0) -> bytes:
    """FileFsVolumeInformation (2.5.9): no object ids (SupportsObjects 0)."""
    raw = _u16(label)
    return _FS_VOLUME.pack(created, serial & 0xFFFFFFFF, len(raw), 0) + raw


def fs_size(size: VolumeSize) -> bytes:
    """FileFsSizeInformation (2.5.8)."""
    return _FS_SIZE.pack(
        size.total_units, size.caller_available_units, size.sectors_per_unit,
        size.bytes_per_sector,
    )  # fmt: skip


def fs_full_size(size: VolumeSize) -> bytes:
    """FileFsFullSizeInformation (2.5.4)."""
    return _FS_FULL_SIZE.pack(
        size.total_units, size.caller_available_units, size.actual_available_units,
        size.sectors_per_unit, size.bytes_per_sector,
    )  # fmt: skip


def fs_device() -> bytes:
    """FileFsDeviceInformation (2.5.10): a mounted disk."""
    return _FS_DEVICE.pack(FILE_DEVICE_DISK, FILE_DEVICE_IS_MOUNTED)


FILE_SUPPORTS_EXTENDED_ATTRIBUTES = 0x00800000


def fs_attribute(extra: int = 0) -> bytes:
    """FileFsAttributeInformation (2.5.1); extended attributes are kept (``gateway.fs.eas``),
    ``extra`` adds what the volume supports."""
    attributes = FS_ATTRIBUTES | FILE_SUPPORTS_EXTENDED_ATTRIBUTES | extra
    return _FS_ATTRIBUTE.pack(attributes, MAX_COMPONENT_LENGTH, len(FS_NAME_UTF16)) + FS_NAME_UTF16


def fs_object_id(serial: int) -> bytes:
    """FileFsObjectIdInformation (2.5.6): an object id made of the volume serial."""
    return _FS_OBJECT_ID.pack(serial, 0)


def fs_sector_size() -> bytes:
    """FileFsSectorSizeInformation (2.5.7): 512-byte sectors, aligned; TRIM enabled, as
    FSCTL_FILE_LEVEL_TRIM gives the trimmed ranges back to the filesystem."""
    flags = (
        SSINFO_FLAGS_ALIGNED_DEVICE | SSINFO_FLAGS_PARTITION_ALIGNED_ON_DEVICE
        | SSINFO_FLAGS_TRIM_ENABLED
    )  # fmt: skip
    return _FS_SECTOR_SIZE.pack(SECTOR, SECTOR, SECTOR, SECTOR, flags, 0, 0)


def query_fs_info(
    info_class: int, fs: VolumeSource, *, label: str, fs_attributes: int = 0
) -> bytes:
    """The bytes of one file-system information class; others are INVALID_INFO_CLASS.

    ``fs_attributes`` are FileFsAttributeInformation bits that depend on the volume."""
    c = info_class
    if c == FsInfoClass.VOLUME:
        return fs_volume(fs.volume_serial, label, fs.volume_created)
    if c == FsInfoClass.SIZE:
        return fs_size(fs.volume_size())
    if c == FsInfoClass.FULL_SIZE:
        return fs_full_size(fs.volume_size())
    if c == FsInfoClass.DEVICE:
        return fs_device()
    if c == FsInfoClass.ATTRIBUTE:
        return fs_attribute(fs_attributes)
    if c == FsInfoClass.OBJECT_ID:
        return fs_object_id(fs.volume_serial)
    if c == FsInfoClass.SECTOR_SIZE:
        return fs_sector_size()
    raise NtStatusError(Status.INVALID_INFO_CLASS)


# -- SET_INFO buffers (MS-FSCC 2.4; minimum sizes are the Windows structure sizes) -------


@dataclass(frozen=True, slots=True)
class BasicInfo:
    """FileBasicInformation to set: 0 leaves a time or the attributes alone, and
    0xFFFFFFFFFFFFFFFF / 0xFFFFFFFFFFFFFFFE (-1, -2) stop / resume automatic updates."""

    creation_time: int
    last_access_time: int
    last_write_time: int
    change_time: int
    file_attributes: int


@dataclass(frozen=True, slots=True)
class RenameInfo:
    """FileRenameInformation, SMB2 form (MS-FSCC 2.4.37.2)."""

    replace_if_exists: bool
    root_directory: int
    file_name: str


_SET_BASIC = struct.Struct("<QQQQI4x")  # 40
_SET_RENAME = struct.Struct("<B7xQI")  # 20 + name
_FT_NEGATIVE_MIN = 0xFFFFFFFFFFFFFFFE  # -2: the smallest negative time allowed
FILE_DISPOSITION_DELETE = 0x01
FILE_DISPOSITION_POSIX_SEMANTICS = 0x02
FILE_DISPOSITION_FORCE_IMAGE_SECTION_CHECK = 0x04
FILE_DISPOSITION_ON_CLOSE = 0x08
FILE_DISPOSITION_IGNORE_READONLY_ATTRIBUTE = 0x10
# FileModeInformation bits that may be set (MS-FSCC 2.4.26).
MODE_SETTABLE = 0x00000002 | 0x00000004 | 0x00000008 | 0x00000010 | 0x00000020 | 0x00001000
_MAX_OFFSET = 0x7FFFFFFFFFFFFFFF


def _need(buf: bytes, n: int) -> None:
    if len(buf) < n:
        raise NtStatusError(Status.INFO_LENGTH_MISMATCH)


def parse_basic(buf: bytes) -> BasicInfo:
    """FileBasicInformation (40 bytes); a time below -2 is INVALID_PARAMETER (MS-FSA)."""
    _need(buf, _SET_BASIC.size)
    c, a, w, ch, attrs = _SET_BASIC.unpack_from(buf)
    for t in (c, a, w, ch):
        if _MAX_OFFSET < t < _FT_NEGATIVE_MIN:
            raise NtStatusError(Status.INVALID_PARAMETER, "negative time")
    return BasicInfo(c, a, w, ch, attrs)


def parse_rename_info(buf: bytes) -> RenameInfo:
    """FileRenameInformation (SMB2 form): at least 20 bytes; a name running past the
    buffer, empty or of odd length is INVALID_PARAMETER; bad UTF-16 OBJECT_NAME_INVALID."""
    _need(buf, _SET_RENAME.size)
    replace, root, length = _SET_RENAME.unpack_from(buf)
    if length == 0 or length % 2 or _SET_RENAME.size + length > len(buf):
        raise NtStatusError(Status.INVALID_PARAMETER, "bad FileNameLength")
    raw = buf[_SET_RENAME.size : _SET_RENAME.size + length]
    try:
        name = bytes(raw).decode("utf-16-le")
    except UnicodeDecodeError:
        raise NtStatusError(Status.OBJECT_NAME_INVALID) from None
    return RenameInfo(bool(replace), root, name)


def parse_rename(buf: bytes) -> tuple[bool, str]:
    """(ReplaceIfExists, target name) of FileRenameInformation."""
    info = parse_rename_info(buf)
    return info.replace_if_exists, info.file_name


def parse_disposition_ex(buf: bytes) -> int:
    """FileDispositionInformationEx (2.4.12): the Flags word."""
    _need(buf, 4)
    return int(_U32.unpack_from(buf)[0])


def parse_disposition(buf: bytes, *, ex: bool = False) -> bool:
    """Whether FileDispositionInformation(Ex) asks for delete."""
    if ex:
        return bool(parse_disposition_ex(buf) & FILE_DISPOSITION_DELETE)
    _need(buf, 1)
    return bool(buf[0])


def _parse_offset(buf: bytes) -> int:
    _need(buf, 8)
    value = int(_U64.unpack_from(buf)[0])
    if value > _MAX_OFFSET:
        raise NtStatusError(Status.INVALID_PARAMETER, "negative offset")
    return value


def parse_end_of_file(buf: bytes) -> int:
    """FileEndOfFileInformation (2.4.14): the new size."""
    return _parse_offset(buf)


def parse_allocation(buf: bytes) -> int:
    """FileAllocationInformation (2.4.4): the new allocation size."""
    return _parse_offset(buf)


def parse_position(buf: bytes) -> int:
    """FilePositionInformation (2.4.35): the new current byte offset."""
    return _parse_offset(buf)


def parse_mode(buf: bytes) -> int:
    """FileModeInformation (2.4.26): other bits are INVALID_PARAMETER."""
    _need(buf, 4)
    mode = int(_U32.unpack_from(buf)[0])
    if mode & ~MODE_SETTABLE:
        raise NtStatusError(Status.INVALID_PARAMETER, "bad mode bits")
    return mode
