"""The filesystem layer and the info-class encoders, on real files.

Layouts are decoded with smbprotocol's independent structures.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from smbprotocol.file_info import (
    FileAllInformation,
    FileBothDirectoryInformation,
    FileIdBothDirectoryInformation,
    FileNamesInformation,
)

from gateway.protocol import infoclass
from gateway.protocol.constants import FileAttributes, FileInfoClass, NtStatusError, Status
from gateway.vfs import ShareFS, status_from_oserror, wildcard_match


@pytest.fixture
def fs(tmp_path: Path) -> ShareFS:
    root = tmp_path / "share"
    root.mkdir()
    (root / "dir").mkdir()
    (root / "dir" / "a.txt").write_bytes(b"hello")
    (tmp_path / "outside.txt").write_text("secret")
    os.symlink(tmp_path / "outside.txt", root / "escape")
    os.symlink(tmp_path, root / "escape_dir")
    return ShareFS(str(root))


def status_of(fn, *args) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(NtStatusError) as err:
        fn(*args)
    return err.value.status


def test_lookup_finds_files_and_distinguishes_missing_parent(fs: ShareFS) -> None:
    path, info = fs.lookup("dir\\a.txt")
    assert path == os.path.join(fs.root, "dir", "a.txt")
    assert info is not None and info.size == 5 and not info.is_dir
    assert fs.lookup("dir\\missing.txt")[1] is None
    assert status_of(fs.lookup, "nodir\\x.txt") == Status.OBJECT_PATH_NOT_FOUND


@pytest.mark.parametrize(
    "name, status",
    [
        ("..\\outside.txt", Status.INVALID_PARAMETER),
        ("dir\\..\\..\\outside.txt", Status.OBJECT_PATH_SYNTAX_BAD),
        ("\\dir\\a.txt", Status.INVALID_PARAMETER),
        ("dir\\a.txt:secret", Status.OBJECT_NAME_INVALID),
        ("dir\\*.txt", Status.OBJECT_NAME_INVALID),
        ("CON", Status.OBJECT_NAME_INVALID),
        ("dir\\lpt1.txt", Status.OBJECT_NAME_INVALID),
        ("escape", Status.ACCESS_DENIED),
        ("escape_dir\\outside.txt", Status.ACCESS_DENIED),
    ],
)
def test_names_that_leave_the_share_or_are_invalid(fs: ShareFS, name: str, status: int) -> None:
    assert status_of(fs.lookup, name) == status


def test_default_data_stream_is_the_file(fs: ShareFS) -> None:
    assert fs.lookup("dir\\a.txt::$DATA")[0] == fs.lookup("dir\\a.txt")[0]


def test_identity_is_volume_and_inode_and_survives_rename(fs: ShareFS) -> None:
    _, before = fs.lookup("dir\\a.txt")
    assert before is not None
    fs.rename(os.path.join(fs.root, "dir", "a.txt"), os.path.join(fs.root, "b.txt"), replace=False)
    _, after = fs.lookup("b.txt")
    assert after is not None and after.file_key == before.file_key
    assert before.file_key == f"{fs.volume_id:x}:{os.stat(os.path.join(fs.root, 'b.txt')).st_ino:x}"




@pytest.mark.parametrize(
    "code, status",
    [
        (errno.ENOENT, Status.OBJECT_NAME_NOT_FOUND),
        (errno.EEXIST, Status.OBJECT_NAME_COLLISION),
        (errno.EACCES, Status.ACCESS_DENIED),
        (errno.ENOTEMPTY, Status.DIRECTORY_NOT_EMPTY),
        (errno.ENOSPC, Status.DISK_FULL),
        (errno.EISDIR, Status.FILE_IS_A_DIRECTORY),
        (errno.ENAMETOOLONG, Status.NAME_TOO_LONG),
    ],
)
def test_errno_mapping(code: int, status: int) -> None:
    assert status_from_oserror(OSError(code, os.strerror(code))) == status


@pytest.mark.parametrize(
    "pattern, name, expected",
    [
        ("*", "anything", True),
        ("*.txt", "A.TXT", True),
        ("*.txt", "a.txt.bak", False),
        ("a?c", "abc", True),
        ("a?c", "abbc", False),
        ("REPORT.XLSX", "report.xlsx", True),
        ("<.mdb", "data.mdb", True),
        ("[x]", "[x]", True),
    ],
)
def test_wildcards(pattern: str, name: str, expected: bool) -> None:
    assert wildcard_match(pattern, name) is expected


def test_listing_has_dot_entries_and_children(fs: ShareFS) -> None:
    names = [n for n, _ in fs.listdir(os.path.join(fs.root, "dir"))]
    assert names[:2] == [".", ".."] and "a.txt" in names


def test_all_information_decodes_with_smbprotocol(fs: ShareFS) -> None:
    _, info = fs.lookup("dir\\a.txt")
    assert info is not None
    data = infoclass.query_file_info(
        FileInfoClass.ALL, info, name="\\dir\\a.txt", delete_pending=False,
        access=0x1F01FF, position=3, mode=0,
    )  # fmt: skip
    decoded = FileAllInformation()
    decoded.unpack(data)
    assert decoded["standard_information"]["end_of_file"].get_value() == 5
    assert decoded["internal_information"]["index_number"].get_value() == info.inode
    assert decoded["position_information"]["current_byte_offset"].get_value() == 3
    assert decoded["name_information"]["file_name"].get_value() == "\\dir\\a.txt"
    attrs = decoded["basic_information"]["file_attributes"].get_value()
    assert attrs & FileAttributes.ARCHIVE


@pytest.mark.parametrize(
    "info_class, structure",
    [
        (FileInfoClass.BOTH_DIRECTORY, FileBothDirectoryInformation),
        (FileInfoClass.ID_BOTH_DIRECTORY, FileIdBothDirectoryInformation),
        (FileInfoClass.NAMES, FileNamesInformation),
    ],
)
def test_directory_entries_chain_and_decode(fs: ShareFS, info_class: int, structure: type) -> None:
    entries = fs.listdir(os.path.join(fs.root, "dir"))
    data, count = infoclass.pack_directory(info_class, entries, 65536)
    assert count == len(entries)
    names = []
    offset = 0
    while True:
        item = structure()
        item.unpack(data[offset:])
        raw = item["file_name"].get_value()
        names.append(raw.decode("utf-16-le") if isinstance(raw, bytes) else raw)
        nxt = item["next_entry_offset"].get_value()
        if nxt == 0:
            break
        assert nxt % 8 == 0
        offset += nxt
    assert names == [n for n, _ in entries]


def test_directory_packing_stops_at_the_buffer_size(fs: ShareFS) -> None:
    entries = fs.listdir(os.path.join(fs.root, "dir"))
    one, _ = infoclass.pack_directory(FileInfoClass.BOTH_DIRECTORY, entries[:1], 65536)
    data, count = infoclass.pack_directory(FileInfoClass.BOTH_DIRECTORY, entries, len(one))
    assert count == 1 and data == one


def test_rename_without_replace_refuses_an_existing_target(fs: ShareFS) -> None:
    (Path(fs.root) / "b.txt").write_text("x")
    src = os.path.join(fs.root, "dir", "a.txt")
    with pytest.raises(NtStatusError) as err:
        fs.rename(src, os.path.join(fs.root, "b.txt"), replace=False)
    assert err.value.status == Status.OBJECT_NAME_COLLISION
    assert Path(src).exists()
