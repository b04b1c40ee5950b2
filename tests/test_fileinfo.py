"""Times, information classes and delete-on-close as smbprotocol sees them on one node.

smbprotocol carries the requests; the info-class bytes are built and read here at
the MS-FSCC offsets (``tests/smbinfo.py``), so nothing of the gateway's own
encoders is trusted.
"""

from __future__ import annotations

import os
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
from smbprotocol.connection import Connection, Dialects
from smbprotocol.create_contexts import (
    CreateContextName,
    SMB2CreateContextRequest,
    SMB2CreateEABuffer,
)
from smbprotocol.exceptions import SMBResponseException
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    DirectoryAccessMask,
    FileAttributes,
    FileInformationClass,
    FilePipePrinterAccessMask,
    ImpersonationLevel,
    Open,
    ShareAccess,
)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from . import smbinfo
from .conftest import PASSWORD, USER, GatewayNode, need

ALL_SHARE = (
    ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
)
ID_BOTH = FileInformationClass.FILE_ID_BOTH_DIRECTORY_INFORMATION
READONLY = FileAttributes.FILE_ATTRIBUTE_READONLY
RW = FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE
STATUS_CANNOT_DELETE = 0xC0000121
STATUS_ACCESS_DENIED = 0xC0000022
STATUS_NO_EAS_ON_FILE = 0xC0000052


class Tree:
    def __init__(self, node: GatewayNode, dialect: int | None = None) -> None:
        self.conn = Connection(uuid.uuid4(), node.host, node.port, require_signing=True)
        self.conn.connect(dialect=dialect, timeout=10)
        self.session = Session(self.conn, USER, PASSWORD, auth_protocol="ntlm")
        self.session.connect()
        self.tree = TreeConnect(self.session, rf"\\{node.host}\share")
        self.tree.connect()

    def open(
        self,
        name: str,
        disposition: int = CreateDisposition.FILE_OPEN_IF,
        options: int = CreateOptions.FILE_NON_DIRECTORY_FILE,
        access: int = RW,
        attributes: int = 0,
    ) -> Open:
        handle = Open(self.tree, name)
        handle.create(ImpersonationLevel.Impersonation, access, attributes, ALL_SHARE,
                      disposition, options)  # fmt: skip
        return handle

    def close(self) -> None:
        self.conn.disconnect(True)


@pytest.fixture
def tree(module_gateway: GatewayNode) -> Iterator[Tree]:
    t = Tree(module_gateway)
    yield t
    t.close()


def _listed(tree: Tree, name: str) -> tuple[int, int, int, int]:
    """(creation, write, change, file id) of ``name`` in a FileIdBothDirectoryInformation
    listing of the share root."""
    root = tree.open("", CreateDisposition.FILE_OPEN, CreateOptions.FILE_DIRECTORY_FILE,
                     DirectoryAccessMask.FILE_LIST_DIRECTORY)  # fmt: skip
    try:
        entries = root.query_directory(name, ID_BOTH)
    finally:
        root.close()
    assert len(entries) == 1
    e = entries[0]
    return (
        e["creation_time"].get_value(), e["last_write_time"].get_value(),
        e["change_time"].get_value(), e["file_id"].get_value(),
    )  # fmt: skip


def _raw(value: object) -> int:
    """smbprotocol turns FILETIMEs into datetimes; back to 100 ns ticks."""
    import datetime

    assert isinstance(value, datetime.datetime)
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    return smbinfo.FILETIME_EPOCH + (value - epoch) // datetime.timedelta(microseconds=1) * 10


# 1968, just before 1970, 1970, 2106 (past 32 bits), 2286, and 3000: past what ext4
# holds (2446), so the exact time lives in the DOS xattr beside the clamped inode.
@pytest.mark.parametrize("when", [-63158400, -1, 0, 4294967295, 10_000_000_000, 32503680000])
def test_times_outside_the_posix_range_are_kept_exactly(
    tree: Tree, module_gateway: GatewayNode, when: int
) -> None:
    name = f"t{when}-{uuid.uuid4().hex[:6]}.txt"
    ft = smbinfo.filetime(when)
    h = tree.open(name)
    smbinfo.set_basic(h, creation=ft, write=ft, change=ft)
    created, _access, written, changed, _attrs = smbinfo.basic(h)
    assert (created, written, changed) == (ft, ft, ft)
    h.close()
    h = tree.open(name, CreateDisposition.FILE_OPEN)
    assert smbinfo.basic(h)[:4:2] == (ft, ft) and smbinfo.basic(h)[3] == ft
    h.close()
    c, w, ch, _fid = _listed(tree, name)
    assert (_raw(c), _raw(w), _raw(ch)) == (ft, ft, ft)
    # The write time is the inode's own where the filesystem can hold it.
    if -(2**31) <= when < 2**31:
        assert os.stat(module_gateway.share_dir / name).st_mtime_ns == when * 10**9


def test_freeze_and_thaw(tree: Tree) -> None:
    """MS-FSA 2.1.5.14.2: -1 and -2 change no time; after -1 a write through the
    handle moves neither the write time nor the change time; -2 lets it again."""
    name = f"freeze-{uuid.uuid4().hex[:6]}.txt"
    h = tree.open(name)
    t = smbinfo.filetime(int(time.time()) - 3600)
    smbinfo.set_basic(h, creation=t, write=t, change=t)
    before = smbinfo.basic(h)
    smbinfo.set_basic(h, write=smbinfo.FREEZE, change=smbinfo.FREEZE, creation=smbinfo.FREEZE)
    assert smbinfo.basic(h) == before
    h.write(b"frozen", 0)
    assert smbinfo.basic(h) == before
    smbinfo.set_basic(h, write=smbinfo.THAW, change=smbinfo.THAW, creation=smbinfo.THAW)
    assert smbinfo.basic(h) == before
    h.close()
    # Thawed: the handle's next write moves the times again, at the latest at close.
    h = tree.open(name, CreateDisposition.FILE_OPEN)
    smbinfo.set_basic(h, write=smbinfo.FREEZE)
    smbinfo.set_basic(h, write=smbinfo.THAW)
    h.write(b"thawed", 0)
    h.close()
    h = tree.open(name, CreateDisposition.FILE_OPEN)
    after = smbinfo.basic(h)
    h.close()
    assert after[0] == before[0]  # creation time stays
    assert after[2] > before[2] and after[3] > before[3]


def test_write_time_moves_after_a_delay_not_at_each_write(tree: Tree) -> None:
    name = f"delay-{uuid.uuid4().hex[:6]}.txt"
    h = tree.open(name)
    start = smbinfo.basic(h)[2]
    time.sleep(0.05)
    h.write(b"one", 0)
    assert smbinfo.basic(h)[2] == start  # not at the write itself
    time.sleep(2.6)
    moved = smbinfo.basic(h)[2]
    assert moved > start  # about 2 s after the handle's first write
    h.write(b"two", 0)
    time.sleep(2.6)
    assert smbinfo.basic(h)[2] == moved  # later writes wait for the close
    sent = time.time()
    h.close()
    h = tree.open(name, CreateDisposition.FILE_OPEN)
    assert smbinfo.basic(h)[2] >= smbinfo.filetime(int(sent))
    h.close()


def test_buffer_sizes_of_info_classes(tree: Tree) -> None:
    """Below a class's structure size: INFO_LENGTH_MISMATCH; at least that but short
    of the answer: BUFFER_OVERFLOW with what fits (MS-FSA 2.1.5.12)."""
    h = tree.open(f"buf-{uuid.uuid4().hex[:6]}.txt")
    status, volume = smbinfo.query(h, smbinfo.FS_VOLUME, info_type=smbinfo.INFO_FILESYSTEM)
    assert status == smbinfo.STATUS_SUCCESS and len(volume) == 18 + len("share") * 2
    label_len = struct.unpack_from("<I", volume, 12)[0]
    assert volume[18 : 18 + label_len].decode("utf-16-le") == "share"
    for out_len, expected in ((0, smbinfo.STATUS_INFO_LENGTH_MISMATCH),
                              (23, smbinfo.STATUS_INFO_LENGTH_MISMATCH),
                              (24, smbinfo.STATUS_BUFFER_OVERFLOW),
                              (len(volume) - 1, smbinfo.STATUS_BUFFER_OVERFLOW),
                              (len(volume), smbinfo.STATUS_SUCCESS)):  # fmt: skip
        status, data = smbinfo.query(h, smbinfo.FS_VOLUME, out_len, smbinfo.INFO_FILESYSTEM)
        assert status == expected, (out_len, hex(status))
        if status != smbinfo.STATUS_INFO_LENGTH_MISMATCH:
            assert data == volume[:out_len]
    # A fixed-size class: anything short of it is a mismatch, never partial data.
    assert smbinfo.query(h, smbinfo.FILE_BASIC, 39)[0] == smbinfo.STATUS_INFO_LENGTH_MISMATCH
    assert len(smbinfo.query_ok(h, smbinfo.FILE_BASIC, 40)) == 40
    h.close()


def test_normalized_name_is_the_stored_spelling(
    tree: Tree, module_gateway: GatewayNode
) -> None:
    stem = uuid.uuid4().hex[:6]
    d = tree.open(f"Dir{stem}", CreateDisposition.FILE_CREATE, CreateOptions.FILE_DIRECTORY_FILE,
                  DirectoryAccessMask.GENERIC_ALL)  # fmt: skip
    d.close()
    tree.open(rf"Dir{stem}\File.TXT", CreateDisposition.FILE_CREATE).close()
    h = tree.open(rf"dir{stem.upper()}\FILE.txt", CreateDisposition.FILE_OPEN)
    data = smbinfo.query_ok(h, smbinfo.FILE_NORMALIZED_NAME)
    length = struct.unpack_from("<I", data)[0]
    assert data[4 : 4 + length].decode("utf-16-le") == rf"Dir{stem}\File.TXT"
    h.close()
    root = tree.open("", CreateDisposition.FILE_OPEN, CreateOptions.FILE_DIRECTORY_FILE,
                     DirectoryAccessMask.FILE_LIST_DIRECTORY)  # fmt: skip
    assert smbinfo.query_ok(root, smbinfo.FILE_NORMALIZED_NAME) == b"\0\0\0\0"
    root.close()
    # Only SMB 3.1.1 offers the class.
    old = Tree(module_gateway, Dialects.SMB_3_0_2)
    try:
        h = old.open(rf"Dir{stem}\File.TXT", CreateDisposition.FILE_OPEN)
        assert smbinfo.query(h, smbinfo.FILE_NORMALIZED_NAME)[0] == smbinfo.STATUS_NOT_SUPPORTED
        h.close()
    finally:
        old.close()


def test_delete_on_close_of_a_new_read_only_file_creates_nothing(
    tree: Tree, module_gateway: GatewayNode
) -> None:
    name = f"ro-{uuid.uuid4().hex[:6]}.txt"
    with pytest.raises(SMBResponseException) as err:
        tree.open(name, CreateDisposition.FILE_CREATE,
                  CreateOptions.FILE_NON_DIRECTORY_FILE | CreateOptions.FILE_DELETE_ON_CLOSE,
                  FilePipePrinterAccessMask.GENERIC_ALL, READONLY)  # fmt: skip
    assert err.value.status == STATUS_CANNOT_DELETE
    assert not (module_gateway.share_dir / name).exists()
    # Without delete-on-close the same create works.
    tree.open(name, CreateDisposition.FILE_CREATE, attributes=READONLY,
              access=FilePipePrinterAccessMask.GENERIC_ALL).close()  # fmt: skip
    assert (module_gateway.share_dir / name).exists()


def _smbclient(node: GatewayNode, *commands: str) -> str:
    need("smbclient")
    out = subprocess.run(
        ["smbclient", f"//{node.host}/share", "-p", str(node.port), "-U", f"{USER}%{PASSWORD}",
         "-c", "; ".join(commands)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_extended_attributes_through_smbclient(module_gateway: GatewayNode) -> None:
    """smbclient's setea/geteas: names come back upper case (NTFS keeps them so), an
    empty value removes one, and the volume holds them in the user.smbgw.ea xattr."""
    name = f"ea-{uuid.uuid4().hex[:6]}.txt"
    (module_gateway.share_dir / name).write_bytes(b"data")
    listed = _smbclient(module_gateway, f"setea {name} myName myValue",
                        f'setea {name} Second "two words"', f"geteas {name}")  # fmt: skip
    assert "MYNAME (0) =" in listed and "SECOND (0) =" in listed and "myValue" in listed
    assert b"myValue" in os.getxattr(module_gateway.share_dir / name, "user.smbgw.ea")
    listed = _smbclient(module_gateway, f"setea {name} MyName", f"geteas {name}")
    assert "MYNAME" not in listed and "SECOND (0) =" in listed


def test_extended_attributes_at_create_and_their_access(tree: Tree) -> None:
    """The ExtA create context stores EAs on a new file; FileFullEaInformation needs
    FILE_READ_EA (FILE_READ_ATTRIBUTES is not enough), FileEaInformation nothing."""
    name = f"exta-{uuid.uuid4().hex[:6]}.txt"
    first, second = SMB2CreateEABuffer(), SMB2CreateEABuffer()
    first["ea_name"], first["ea_value"] = b"EAONE\0", b"VALUE1"
    second["ea_name"], second["ea_value"] = b"SecondEa\0", b"ValueTwo"
    first["next_entry_offset"] = len(first)
    context = SMB2CreateContextRequest()
    context["buffer_name"] = CreateContextName.SMB2_CREATE_EA_BUFFER
    context["buffer_data"] = first.pack() + second.pack()
    h = Open(tree.tree, name)
    h.create(ImpersonationLevel.Impersonation, RW, 0, ALL_SHARE, CreateDisposition.FILE_CREATE,
             CreateOptions.FILE_NON_DIRECTORY_FILE, create_contexts=[context])  # fmt: skip
    h.close()
    reader = tree.open(name, CreateDisposition.FILE_OPEN,
                       access=FilePipePrinterAccessMask.FILE_READ_EA)  # fmt: skip
    status, data = smbinfo.query(reader, smbinfo.FILE_FULL_EA)
    assert status == smbinfo.STATUS_SUCCESS
    entries = []
    pos = 0
    while True:
        nxt, _flags, name_len, value_len = struct.unpack_from("<IBBH", data, pos)
        entries.append((data[pos + 8 : pos + 8 + name_len],
                        data[pos + 9 + name_len : pos + 9 + name_len + value_len]))  # fmt: skip
        if not nxt:
            break
        pos += nxt
    assert entries == [(b"EAONE", b"VALUE1"), (b"SECONDEA", b"ValueTwo")]
    # EaSize is the same list's size, each entry padded to 4 bytes.
    ea_size = struct.unpack("<I", smbinfo.query_ok(reader, smbinfo.FILE_EA))[0]
    assert ea_size == (8 + 6 + 6 + 3) // 4 * 4 + (8 + 9 + 8 + 3) // 4 * 4
    # Room for the first entry only: the entries that fit, BUFFER_OVERFLOW.
    assert smbinfo.query(reader, smbinfo.FILE_FULL_EA, 24) == (
        smbinfo.STATUS_BUFFER_OVERFLOW, b"\0\0\0\0" + data[4:20]
    )
    reader.close()
    attrs_only = tree.open(name, CreateDisposition.FILE_OPEN,
                           access=FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES)  # fmt: skip
    assert smbinfo.query(attrs_only, smbinfo.FILE_FULL_EA)[0] == STATUS_ACCESS_DENIED
    attrs_only.close()
    plain = tree.open(f"plain-{uuid.uuid4().hex[:6]}.txt")
    assert smbinfo.query(plain, smbinfo.FILE_FULL_EA)[0] == STATUS_NO_EAS_ON_FILE
    assert smbinfo.query_ok(plain, smbinfo.FILE_EA) == b"\0\0\0\0"
    plain.close()
