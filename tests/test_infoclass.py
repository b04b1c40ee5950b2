"""Info classes and the default security descriptor, decoded by independent code.

Layouts are read back with smbprotocol's structures (smbprotocol.file_info) and
impacket's (impacket.smb, impacket.smb3structs, impacket.ldap.ldaptypes). The few
classes neither library has (compression, FileIdExtdDirectory, FileId, sector
size) are read at the MS-FSCC field offsets written out here. SET_INFO buffers
are built by those libraries and parsed by ours.
"""

from __future__ import annotations

import datetime
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from impacket import smb as impacket_smb
from impacket import smb3structs
from impacket.ldap import ldaptypes
from smbprotocol import file_info as sp

from gateway.fs import acl, descriptors
from gateway.fs import sd as sd_codec
from gateway.fs.vfs import ShareFS
from gateway.protocol import infoclass
from gateway.protocol.constants import (
    FileAttributes,
    FileInfoClass,
    FsInfoClass,
    InfoType,
    NtStatusError,
    Status,
)
from gateway.protocol.fileinfo import FILETIME_EPOCH, FileInfo, VolumeSize

# FILETIMEs in whole microseconds (smbprotocol's datetimes keep microseconds).
CREATED, ACCESSED, WRITTEN, CHANGED = (FILETIME_EPOCH + 10 * (1_700_000_000_000_000 + k)
                                       for k in (1, 22, 333, 4444))  # fmt: skip


def make_info(**kw: Any) -> FileInfo:
    values: dict[str, Any] = dict(
        size=123456789, allocation_size=123457536, creation_time=CREATED,
        last_access_time=ACCESSED, last_write_time=WRITTEN, change_time=CHANGED,
        attributes=int(FileAttributes.ARCHIVE | FileAttributes.HIDDEN), is_dir=False,
        inode=0x1122334455667788, nlink=3, volume_id=0x0102030405060708,
    )  # fmt: skip
    values.update(kw)
    return FileInfo(**values)


def ft(value: Any) -> int:
    """A FILETIME back from smbprotocol's datetime."""
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    return FILETIME_EPOCH + (value - epoch) // datetime.timedelta(microseconds=1) * 10


def decode(structure: type, data: bytes) -> Any:
    item = structure()
    item.unpack(data)
    return item


def status_of(fn: Any, *args: Any, **kw: Any) -> int:
    with pytest.raises(NtStatusError) as e:
        fn(*args, **kw)
    return e.value.status


def query(info_class: int, info: FileInfo | None = None, **kw: Any) -> bytes:
    args: dict[str, Any] = dict(name="\\dir\\file.txt", delete_pending=False,
                                access=0x001F01FF, position=77, mode=0x20)  # fmt: skip
    args.update(kw)
    return infoclass.query_file_info(info_class, info or make_info(), **args)


# -- QUERY_INFO file classes ----------------------------------------------------------------


def test_basic_information() -> None:
    data = query(FileInfoClass.BASIC)
    assert len(data) == 40
    d = decode(sp.FileBasicInformation, data)
    times = ("creation_time", "last_access_time", "last_write_time", "change_time")
    assert [d[f].get_value() for f in times] == [CREATED, ACCESSED, WRITTEN, CHANGED]
    assert d["file_attributes"].get_value() == FileAttributes.ARCHIVE | FileAttributes.HIDDEN
    i = smb3structs.FILE_BASIC_INFORMATION(data)
    assert i["CreationTime"] == CREATED and i["FileAttributes"] == 0x22


@pytest.mark.parametrize(
    ("is_dir", "nlink", "pending", "links", "directory"),
    [
        (False, 3, False, 3, 0),
        (False, 1, True, 0, 0),  # a pending delete takes a link away (Samba)
        (True, 5, False, 1, 1),  # a directory has one link, whatever POSIX counts
        (True, 2, True, 0, 1),
    ],
)
def test_standard_information(
    is_dir: bool, nlink: int, pending: bool, links: int, directory: int
) -> None:
    data = query(FileInfoClass.STANDARD, make_info(is_dir=is_dir, nlink=nlink),
                 delete_pending=pending)  # fmt: skip
    assert len(data) == 24
    d = decode(sp.FileStandardInformation, data)
    assert d["allocation_size"].get_value() == 123457536
    assert d["end_of_file"].get_value() == 123456789
    assert d["number_of_links"].get_value() == links
    assert d["delete_pending"].get_value() is pending
    assert d["directory"].get_value() is bool(directory)
    pipe = infoclass.file_standard(None, delete_pending=False, directory=False)
    assert decode(sp.FileStandardInformation, pipe)["number_of_links"].get_value() == 1


@pytest.mark.parametrize(
    ("info_class", "structure", "field", "expected"),
    [
        (FileInfoClass.INTERNAL, sp.FileInternalInformation, "index_number", 0x1122334455667788),
        (FileInfoClass.EA, sp.FileEaInformation, "ea_size", 0),
        (FileInfoClass.ACCESS, sp.FileAccessInformation, "access_flags", 0x001F01FF),
        (FileInfoClass.POSITION, sp.FilePositionInformation, "current_byte_offset", 77),
        (FileInfoClass.MODE, sp.FileModeInformation, "mode", 0x20),
        (FileInfoClass.ALIGNMENT, sp.FileAlignmentInformation, "alignment_requirement", 0),
        (FileInfoClass.NAME, sp.FileNameInformation, "file_name", "\\dir\\file.txt"),
        (FileInfoClass.NORMALIZED_NAME, sp.FileNameInformation, "file_name", "\\dir\\file.txt"),
        (FileInfoClass.ALTERNATE_NAME, sp.FileNameInformation, "file_name", "file.txt"),
        (FileInfoClass.ATTRIBUTE_TAG, sp.FileAttributeTagInformation, "file_attributes", 0x22),
    ],
)
def test_small_classes(info_class: int, structure: type, field: str, expected: Any) -> None:
    data = query(info_class)
    d = decode(structure, data)
    assert len(d) == len(data)  # the decoder used every byte
    assert d[field].get_value() == expected


def test_alternate_name_when_the_caller_has_one() -> None:
    data = query(FileInfoClass.ALTERNATE_NAME, short_name="FILE~1.TXT")
    assert decode(sp.FileNameInformation, data)["file_name"].get_value() == "FILE~1.TXT"


def test_all_information_decodes_with_both_libraries() -> None:
    data = query(FileInfoClass.ALL, delete_pending=True)
    name = "\\dir\\file.txt".encode("utf-16-le")
    assert len(data) == 100 + len(name)
    d = decode(sp.FileAllInformation, data)
    assert d["basic_information"]["change_time"].get_value() == CHANGED
    assert d["standard_information"]["end_of_file"].get_value() == 123456789
    assert d["standard_information"]["number_of_links"].get_value() == 2
    assert d["standard_information"]["delete_pending"].get_value() is True
    assert d["internal_information"]["index_number"].get_value() == 0x1122334455667788
    assert d["access_information"]["access_flags"].get_value() == 0x001F01FF
    assert d["position_information"]["current_byte_offset"].get_value() == 77
    assert d["mode_information"]["mode"].get_value() == 0x20
    assert d["name_information"]["file_name"].get_value() == "\\dir\\file.txt"
    i = smb3structs.FILE_ALL_INFORMATION(data)
    assert i["NameInformation"]["FileName"] == name
    assert i["PositionInformation"]["CurrentByteOffset"] == 77


def test_stream_information() -> None:
    data = query(FileInfoClass.STREAM)
    d = decode(sp.FileStreamInformation, data)
    assert len(d) == len(data) == 24 + 14
    assert d["next_entry_offset"].get_value() == 0
    assert d["stream_name"].get_value() == "::$DATA"
    assert d["stream_size"].get_value() == 123456789
    assert d["stream_allocation_size"].get_value() == 123457536
    assert query(FileInfoClass.STREAM, make_info(is_dir=True)) == b""


def test_network_open_information() -> None:
    data = query(FileInfoClass.NETWORK_OPEN)
    assert len(data) == 56
    i = impacket_smb.SMBFileNetworkOpenInfo(data)
    times = (i["CreationTime"], i["LastAccessTime"], i["LastWriteTime"], i["ChangeTime"])
    assert times == (CREATED, ACCESSED, WRITTEN, CHANGED)
    assert (i["AllocationSize"], i["EndOfFile"]) == (123457536, 123456789)
    assert i["FileAttributes"] == 0x22


def test_classes_no_library_has() -> None:
    # FileCompressionInformation (MS-FSCC 2.4.9): CompressedFileSize 8, CompressionFormat 2,
    # CompressionUnitShift 1, ChunkShift 1, ClusterShift 1, Reserved 3.
    data = query(FileInfoClass.COMPRESSION)
    assert len(data) == 16
    assert struct.unpack("<QHBBB3s", data) == (123456789, 0, 0, 0, 0, b"\0\0\0")
    # FileIdInformation (2.4.21): VolumeSerialNumber 8, FileId 16.
    data = query(FileInfoClass.ID_INFORMATION)
    assert len(data) == 24
    serial, lo, hi = struct.unpack("<QQQ", data)
    assert serial == infoclass.volume_serial_of(0x0102030405060708) == 0x0404040C
    assert (lo, hi) == (0x1122334455667788, 0)


def test_unknown_and_set_only_classes_are_refused() -> None:
    for c in (FileInfoClass.RENAME, FileInfoClass.DISPOSITION, FileInfoClass.END_OF_FILE, 0, 99):
        assert status_of(query, c) == Status.INVALID_INFO_CLASS


# -- QUERY_DIRECTORY ------------------------------------------------------------------------

DIR_CLASSES = [
    (FileInfoClass.DIRECTORY, sp.FileDirectoryInformation, 64),
    (FileInfoClass.FULL_DIRECTORY, sp.FileFullDirectoryInformation, 68),
    (FileInfoClass.BOTH_DIRECTORY, sp.FileBothDirectoryInformation, 94),
    (FileInfoClass.NAMES, sp.FileNamesInformation, 12),
    (FileInfoClass.ID_BOTH_DIRECTORY, sp.FileIdBothDirectoryInformation, 104),
    (FileInfoClass.ID_FULL_DIRECTORY, sp.FileIdFullDirectoryInformation, 80),
]
ENTRIES = [
    (".", make_info(is_dir=True, attributes=0x10, size=0, allocation_size=0, inode=2)),
    ("..", make_info(is_dir=True, attributes=0x10, size=0, allocation_size=0, inode=1)),
    ("a", make_info(size=1, inode=10)),
    ("long name \u00e9\u00e8 \U0001f600.txt", make_info(size=2, inode=11)),
    ("b" * 255, make_info(size=3, inode=12)),
]


def walk(data: bytes, structure: type) -> list[Any]:
    """Follow NextEntryOffset; every entry must start 8-byte aligned."""
    out, offset = [], 0
    while True:
        assert offset % 8 == 0
        item = decode(structure, data[offset:])
        out.append(item)
        nxt = item["next_entry_offset"].get_value()
        if nxt == 0:
            assert offset + len(item) == len(data)  # the last entry is not padded
            return out
        assert nxt >= len(item) and nxt - len(item) < 8
        offset += nxt


@pytest.mark.parametrize(("info_class", "structure", "fixed"), DIR_CLASSES)
def test_directory_classes_decode(info_class: int, structure: type, fixed: int) -> None:
    data, used = infoclass.pack_directory(info_class, ENTRIES, 65536)
    assert used == len(ENTRIES)
    items = walk(data, structure)
    assert len(items) == len(ENTRIES)
    for item, (name, info) in zip(items, ENTRIES, strict=True):
        raw = name.encode("utf-16-le")
        assert item["file_name"].get_value() == raw
        assert item["file_name_length"].get_value() == len(raw)
        assert len(item) == fixed + len(raw) == infoclass.directory_entry_size(info_class, name)
        assert item["file_index"].get_value() == 0
        if info_class == FileInfoClass.NAMES:
            continue
        assert ft(item["creation_time"].get_value()) == info.creation_time
        assert ft(item["last_access_time"].get_value()) == info.last_access_time
        assert ft(item["last_write_time"].get_value()) == info.last_write_time
        assert ft(item["change_time"].get_value()) == info.change_time
        assert item["end_of_file"].get_value() == info.size
        assert item["allocation_size"].get_value() == info.allocation_size
        assert item["file_attributes"].get_value() == info.attributes
        if "ea_size" in item.fields:
            assert item["ea_size"].get_value() == 0
        if "short_name" in item.fields:
            assert item["short_name_length"].get_value() == 0
        if "file_id" in item.fields:
            assert item["file_id"].get_value() == info.inode


def test_id_both_directory_decodes_with_impacket() -> None:
    data, _ = infoclass.pack_directory(FileInfoClass.ID_BOTH_DIRECTORY, ENTRIES[2:3], 4096)
    i = impacket_smb.SMBFindFileIdBothDirectoryInfo(impacket_smb.SMB.FLAGS2_UNICODE, data=data)
    assert i["FileName"] == "a".encode("utf-16-le") and i["FileID"] == 10
    assert i["EndOfFile"] == 1 and i["ExtFileAttributes"] == 0x22


def test_id_extd_directory_layout() -> None:
    # FileIdExtdDirectoryInformation (2.4.19): the common 64 bytes, EaSize 4,
    # ReparsePointTag 4, FileId 16, FileName.
    data, _ = infoclass.pack_directory(FileInfoClass.ID_EXTD_DIRECTORY, ENTRIES[2:4], 4096)
    first = struct.unpack_from("<IIQQQQQQIIIIQQ", data)
    assert first[2:8] == (CREATED, ACCESSED, WRITTEN, CHANGED, 1, 123457536)
    assert first[8:] == (0x22, 2, 0, 0, 10, 0)
    assert data[88:90] == "a".encode("utf-16-le")
    assert first[0] == 96  # 88 + 2, aligned to 8
    second = struct.unpack_from("<IIQQQQQQIIIIQQ", data, 96)
    assert second[0] == 0 and second[12] == 11


def test_packing_stops_at_the_buffer_size() -> None:
    c = FileInfoClass.BOTH_DIRECTORY
    one, _ = infoclass.pack_directory(c, ENTRIES[:1], 65536)
    two, _ = infoclass.pack_directory(c, ENTRIES[:2], 65536)
    assert infoclass.pack_directory(c, ENTRIES, len(one)) == (one, 1)
    assert infoclass.pack_directory(c, ENTRIES, len(two) - 1) == (one, 1)
    assert infoclass.pack_directory(c, ENTRIES, len(two)) == (two, 2)
    assert infoclass.pack_directory(c, ENTRIES, len(one) - 1) == (b"", 0)
    assert infoclass.pack_directory(c, [], 65536) == (b"", 0)


def test_unencodable_names_are_used_up_not_sent() -> None:
    entries = [("ok", make_info()), ("bad\udcff", make_info()), ("fine", make_info())]
    data, used = infoclass.pack_directory(FileInfoClass.NAMES, entries, 4096)
    assert used == 3
    names = [i["file_name"].get_value().decode("utf-16-le")
             for i in walk(data, sp.FileNamesInformation)]  # fmt: skip
    assert names == ["ok", "fine"]


def test_directory_class_must_be_known() -> None:
    assert status_of(infoclass.pack_directory, FileInfoClass.BASIC, ENTRIES, 4096) == (
        Status.INVALID_INFO_CLASS
    )
    assert FileInfoClass.BASIC not in infoclass.DIRECTORY_CLASSES
    assert FileInfoClass.ID_EXTD_DIRECTORY in infoclass.DIRECTORY_CLASSES


def test_listing_of_real_files_round_trips(tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(b"z" * 10)
    (tmp_path / "d").mkdir()
    fs = ShareFS(str(tmp_path))
    listing = fs.listdir(fs.root)
    data, used = infoclass.pack_directory(FileInfoClass.ID_BOTH_DIRECTORY, listing, 65536)
    assert used == len(listing)
    got = {i["file_name"].get_value().decode("utf-16-le"): i
           for i in walk(data, sp.FileIdBothDirectoryInformation)}  # fmt: skip
    assert set(got) == {".", "..", "f.bin", "d"}
    assert got["f.bin"]["end_of_file"].get_value() == 10
    assert got["f.bin"]["file_id"].get_value() == os.stat(tmp_path / "f.bin").st_ino
    assert got["d"]["file_attributes"].get_value() == FileAttributes.DIRECTORY
    assert ft(got["f.bin"]["last_write_time"].get_value()) == (
        os.stat(tmp_path / "f.bin").st_mtime_ns // 1000 * 10 + FILETIME_EPOCH
    )


# -- file-system classes ------------------------------------------------------------------


class FakeVolume:
    """A volume with chosen numbers (the real one is in test_fs_info_of_a_real_share)."""

    volume_serial = 0xCAFEBABE
    volume_created = CREATED

    def volume_size(self) -> VolumeSize:
        return VolumeSize(1000, 300, 400, 8, 512)


def fs_query(info_class: int) -> bytes:
    return infoclass.query_fs_info(info_class, FakeVolume(), label="share")


def test_output_buffer_rules() -> None:
    """Below a class's structure size: INFO_LENGTH_MISMATCH; above it but short of
    the answer: BUFFER_OVERFLOW with the bytes that fit (MS-FSA 2.1.5.12)."""
    volume = infoclass.fs_volume(0x1234, "share")
    fit = infoclass.fit_fs_output
    assert status_of(fit, FsInfoClass.VOLUME, volume, 23) == Status.INFO_LENGTH_MISMATCH
    assert fit(FsInfoClass.VOLUME, volume, 24) == (Status.BUFFER_OVERFLOW, volume[:24])
    assert fit(FsInfoClass.VOLUME, volume, 100) == (Status.SUCCESS, volume)
    basic = query(FileInfoClass.BASIC)
    assert status_of(infoclass.fit_file_output, FileInfoClass.BASIC, basic, 39) == (
        Status.INFO_LENGTH_MISMATCH
    )
    everything = query(FileInfoClass.ALL)
    assert infoclass.fit_file_output(FileInfoClass.ALL, everything, 104) == (
        Status.BUFFER_OVERFLOW, everything[:104]
    )  # fmt: skip
    assert status_of(infoclass.fit_file_output, FileInfoClass.ALL, everything, 103) == (
        Status.INFO_LENGTH_MISMATCH
    )


def test_fs_volume_information() -> None:
    data = fs_query(FsInfoClass.VOLUME)
    assert len(data) == 18 + 10
    d = decode(sp.FileFsVolumeInformation, data)
    assert ft(d["volume_creation_time"].get_value()) == CREATED
    assert d["volume_serial_number"].get_value() == 0xCAFEBABE
    assert d["volume_label"].get_value() == "share"
    assert d["supports_objects"].get_value() is False


def test_fs_size_classes() -> None:
    i = impacket_smb.FileFsSizeInformation(fs_query(FsInfoClass.SIZE))
    assert (i["TotalAllocationUnits"], i["AvailableAllocationUnits"]) == (1000, 300)
    assert (i["SectorsPerAllocationUnit"], i["BytesPerSector"]) == (8, 512)
    data = fs_query(FsInfoClass.FULL_SIZE)
    d = decode(sp.FileFsFullSizeInformation, data)
    assert len(data) == 32
    assert d["total_allocation_units"].get_value() == 1000
    assert d["caller_available_units"].get_value() == 300
    assert d["actual_available_units"].get_value() == 400
    assert d["sectors_per_unit"].get_value() == 8 and d["bytes_per_sector"].get_value() == 512
    f = impacket_smb.SMBFileFsFullSizeInformation(data)
    assert f["ActualAvailableAllocationUnits"] == 400


def test_fs_device_and_attribute_information() -> None:
    d = impacket_smb.SMBQueryFsDeviceInfo(fs_query(FsInfoClass.DEVICE))
    assert (d["DeviceType"], d["DeviceCharacteristics"]) == (0x07, 0x20)  # disk, mounted
    data = fs_query(FsInfoClass.ATTRIBUTE)
    a = impacket_smb.SMBQueryFsAttributeInfo(data)
    assert a["FileSystemName"] == "NTFS".encode("utf-16-le")
    assert a["MaxFilenNameLengthInBytes"] == 255
    # case-sensitive search, case-preserved names, Unicode on disk, named streams
    # (0x40000), extended attributes (0x800000); no persistent ACLs (0x8), and
    # sparse files (0x40) only where the caller says the volume keeps xattrs.
    assert a["FileSystemAttributes"] == 0x840007


def test_fs_object_id_and_sector_size() -> None:
    data = fs_query(FsInfoClass.OBJECT_ID)
    d = decode(sp.FileFsObjectIdInformation, data)
    assert len(data) == 64 and d["extended_info"].get_value() == bytes(48)
    assert d["object_id"].get_value().bytes == struct.pack("<Q", 0xCAFEBABE) + bytes(8)
    # FileFsSectorSizeInformation (2.5.7): seven ULONGs; aligned, TRIM enabled (0x8).
    data = fs_query(FsInfoClass.SECTOR_SIZE)
    assert struct.unpack("<7I", data) == (512, 512, 512, 512, 0xB, 0, 0)


def test_fs_unknown_classes_are_refused() -> None:
    for c in (FsInfoClass.LABEL, FsInfoClass.CONTROL, FsInfoClass.DRIVER_PATH, 0, 42):
        assert status_of(fs_query, c) == Status.INVALID_INFO_CLASS


def test_fs_info_of_a_real_share(tmp_path: Path) -> None:
    fs = ShareFS(str(tmp_path))
    d = decode(sp.FileFsFullSizeInformation,
               infoclass.query_fs_info(FsInfoClass.FULL_SIZE, fs, label="x"))  # fmt: skip
    sv = os.statvfs(tmp_path)
    unit = d["sectors_per_unit"].get_value() * d["bytes_per_sector"].get_value()
    assert d["total_allocation_units"].get_value() * unit == sv.f_blocks * sv.f_frsize
    v = decode(sp.FileFsVolumeInformation,
               infoclass.query_fs_info(FsInfoClass.VOLUME, fs, label="x"))  # fmt: skip
    assert v["volume_serial_number"].get_value() == fs.volume_serial


# -- SET_INFO parsers -----------------------------------------------------------------------


def build(structure: type, **fields: Any) -> bytes:
    item = structure()
    for k, v in fields.items():
        item[k] = v
    return bytes(item.pack())


def test_parse_basic() -> None:
    buf = build(sp.FileBasicInformation, creation_time=CREATED, last_access_time=0,
                last_write_time=0xFFFFFFFFFFFFFFFF, change_time=CHANGED,
                file_attributes=0x21)  # fmt: skip
    assert len(buf) == 40
    b = infoclass.parse_basic(buf)
    times = (b.creation_time, b.last_access_time, b.last_write_time, b.change_time)
    assert times == (CREATED, 0, 0xFFFFFFFFFFFFFFFF, CHANGED)
    assert b.file_attributes == 0x21
    assert status_of(infoclass.parse_basic, buf[:36]) == Status.INFO_LENGTH_MISMATCH
    assert infoclass.parse_basic(buf + b"extra") == b  # longer is accepted
    minus_three = struct.pack("<QQQQI4x", 0, 2**64 - 3, 0, 0, 0)
    assert status_of(infoclass.parse_basic, minus_three) == Status.INVALID_PARAMETER


def test_parse_rename() -> None:
    buf = build(sp.FileRenameInformation, replace_if_exists=True, root_directory=0,
                file_name="dir\\new name \u00e9.txt".encode("utf-16-le"))  # fmt: skip
    assert infoclass.parse_rename(buf) == (True, "dir\\new name \u00e9.txt")
    imp = smb3structs.FILE_RENAME_INFORMATION_TYPE_2()
    imp["ReplaceIfExists"] = 0
    imp["FileName"] = "x.txt".encode("utf-16-le")
    imp["FileNameLength"] = 10
    r = infoclass.parse_rename_info(imp.getData())
    assert (r.replace_if_exists, r.root_directory, r.file_name) == (False, 0, "x.txt")
    assert status_of(infoclass.parse_rename, buf[:19]) == Status.INFO_LENGTH_MISMATCH
    too_long = struct.pack("<B7xQI", 0, 0, 100) + b"a\0"
    assert status_of(infoclass.parse_rename, too_long) == Status.INVALID_PARAMETER
    odd = struct.pack("<B7xQI", 0, 0, 3) + b"a\0b"
    assert status_of(infoclass.parse_rename, odd) == Status.INVALID_PARAMETER
    empty = struct.pack("<B7xQI", 0, 0, 0)
    assert status_of(infoclass.parse_rename, empty) == Status.INVALID_PARAMETER
    lone = struct.pack("<B7xQI", 0, 0, 2) + b"\x00\xd8"
    assert status_of(infoclass.parse_rename, lone) == Status.OBJECT_NAME_INVALID


def test_parse_disposition() -> None:
    assert infoclass.parse_disposition(build(sp.FileDispositionInformation,
                                             delete_pending=True)) is True  # fmt: skip
    assert infoclass.parse_disposition(b"\x00") is False
    assert status_of(infoclass.parse_disposition, b"") == Status.INFO_LENGTH_MISMATCH
    flags = infoclass.FILE_DISPOSITION_DELETE | infoclass.FILE_DISPOSITION_POSIX_SEMANTICS
    assert infoclass.parse_disposition(struct.pack("<I", flags), ex=True) is True
    assert infoclass.parse_disposition_ex(struct.pack("<I", flags)) == flags
    assert infoclass.parse_disposition(struct.pack("<I", 0x10), ex=True) is False
    assert status_of(infoclass.parse_disposition, b"\x01\x00", ex=True) == (
        Status.INFO_LENGTH_MISMATCH
    )


@pytest.mark.parametrize(
    "parse", [infoclass.parse_end_of_file, infoclass.parse_allocation, infoclass.parse_position]
)
def test_parse_offsets(parse: Any) -> None:
    assert parse(build(sp.FileEndOfFileInformation, end_of_file=12345)) == 12345
    assert parse(struct.pack("<Q", 2**63 - 1)) == 2**63 - 1
    assert status_of(parse, struct.pack("<Q", 2**63)) == Status.INVALID_PARAMETER
    assert status_of(parse, b"\0" * 7) == Status.INFO_LENGTH_MISMATCH


def test_parse_mode() -> None:
    assert infoclass.parse_mode(struct.pack("<I", 0x1000 | 0x20 | 0x2)) == 0x1022
    assert status_of(infoclass.parse_mode, struct.pack("<I", 0x1)) == Status.INVALID_PARAMETER
    assert status_of(infoclass.parse_mode, b"\0\0") == Status.INFO_LENGTH_MISMATCH


# -- security descriptors ---------------------------------------------------------------------


def sd(data: bytes) -> Any:
    return ldaptypes.SR_SECURITY_DESCRIPTOR(data=data)


def test_default_descriptor_for_a_file() -> None:
    data = descriptors.default_descriptor(1000, 100, False, 0x7)
    d = sd(data)
    assert d["Revision"] == b"\x01"
    assert d["Control"] == sd_codec.SE_SELF_RELATIVE | sd_codec.SE_DACL_PRESENT
    assert d["OwnerSid"].formatCanonical() == "S-1-22-1-1000"
    assert d["GroupSid"].formatCanonical() == "S-1-22-2-100"
    assert d["OffsetSacl"] == 0
    aces = d["Dacl"].aces
    assert [(a["AceType"], a["AceFlags"], a["Ace"]["Mask"]["Mask"],
             a["Ace"]["Sid"].formatCanonical()) for a in aces] == [
        (0, 0, 0x001F01FF, "S-1-22-1-1000"),
        (0, 0, 0x001F01FF, "S-1-5-18"),
        (0, 0, 0x001F01FF, "S-1-1-0"),
    ]  # fmt: skip
    assert d["Dacl"]["AclRevision"] == 2
    # Every offset points inside the buffer and the parts do not overlap.
    assert 20 <= d["OffsetOwner"] < d["OffsetGroup"] < d["OffsetDacl"] < len(data)


def test_default_descriptor_for_a_directory_inherits() -> None:
    d = sd(descriptors.default_descriptor(0, 0, True, acl.DACL_SECURITY_INFORMATION))
    assert all(a["AceFlags"] == 0x3 for a in d["Dacl"].aces)  # object + container inherit
    assert d["OffsetOwner"] == d["OffsetGroup"] == 0


@pytest.mark.parametrize(
    ("additional", "owner", "group", "dacl"),
    [
        (0x0, False, False, False),
        (0x1, True, False, False),
        (0x2, False, True, False),
        (0x4, False, False, True),
        (0x8, False, False, False),  # a SACL asked for: there is none
        (0x3, True, True, False),
        (0xF, True, True, True),
    ],
)
def test_descriptor_holds_what_was_asked(
    additional: int, owner: bool, group: bool, dacl: bool
) -> None:
    data = descriptors.default_descriptor(1000, 100, False, additional)
    revision, _sbz, control, o_owner, o_group, o_sacl, o_dacl = struct.unpack_from("<BBHIIII",
                                                                                  data)  # fmt: skip
    assert revision == 1 and o_sacl == 0
    assert bool(o_owner) is owner and bool(o_group) is group and bool(o_dacl) is dacl
    assert bool(control & sd_codec.SE_DACL_PRESENT) is dacl
    assert not control & sd_codec.SE_SACL_PRESENT and control & sd_codec.SE_SELF_RELATIVE
    if additional == 0:
        assert len(data) == 20


def test_sid_bytes() -> None:
    assert sd_codec.sid_bytes("S-1-5-18") == bytes.fromhex("010100000000000512000000")
    assert ldaptypes.LDAP_SID(data=sd_codec.sid_bytes("S-1-5-21-1-2-3-500")).formatCanonical() == (
        "S-1-5-21-1-2-3-500"
    )
    for bad in ("X-1-5", "S-1", "S-2-5-1", "S-1-x-1", "S-1-5-" + "-".join(["1"] * 16)):
        with pytest.raises(ValueError):
            sd_codec.sid_bytes(bad)


def test_info_type_constants_match() -> None:
    assert InfoType.SECURITY == 3  # what handle_query_info dispatches security on
