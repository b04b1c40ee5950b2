"""Alternate data streams seen by smbprotocol (an independent client) against one node.

What a user of ``file:stream`` would check: data written to a stream reads
back, the stream is listed (FileStreamInformation) beside ``::$DATA``, names
ignore case, the base file's data and listing are untouched, streams have
their own share modes, and they go with their file. The on-volume form is
checked from the host: one sidecar file per stream, gone with the base.
"""

from __future__ import annotations

import os
import struct
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import smbclient
from smbprotocol.connection import Connection
from smbprotocol.exceptions import SMBOSError, SMBResponseException
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    FilePipePrinterAccessMask,
    ImpersonationLevel,
    Open,
)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from gateway.fs.acl import EVERYONE
from gateway.fs.sd import (
    ACCESS_ALLOWED,
    SE_DACL_PRESENT,
    SE_SELF_RELATIVE,
    Ace,
    SecurityDescriptor,
    acl_of,
)
from gateway.fs.streamstore import SIDECAR, XATTR_ID
from gateway.fs.vfs import ShareFS

from . import smbinfo
from .conftest import PASSWORD, USER, GatewayNode

STATUS_ACCESS_DENIED = 0xC0000022
STATUS_OBJECT_NAME_INVALID = 0xC0000033
STATUS_OBJECT_NAME_NOT_FOUND = 0xC0000034
STATUS_SHARING_VIOLATION = 0xC0000043
RW = FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE
READ_ATTRIBUTES = FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES
READ_ATTRIBUTES_AND_DELETE = (
    READ_ATTRIBUTES | FilePipePrinterAccessMask.DELETE | FilePipePrinterAccessMask.READ_CONTROL
    | FilePipePrinterAccessMask.SYNCHRONIZE
)  # fmt: skip


@pytest.fixture
def smb(module_gateway: GatewayNode) -> Iterator[dict[str, Any]]:
    cache: dict[str, Any] = {}
    smbclient.register_session(
        module_gateway.host, username=USER, password=PASSWORD, port=module_gateway.port,
        require_signing=True, connection_cache=cache, auth_protocol="ntlm",
    )  # fmt: skip
    yield {"port": module_gateway.port, "connection_cache": cache}
    smbclient.reset_connection_cache(connection_cache=cache)


def _unc(node: GatewayNode, name: str) -> str:
    return rf"\\{node.host}\share\{name}"


def _stream_files(node: GatewayNode, base: str) -> list[str]:
    """The sidecar files of a file's streams, read from the host."""
    try:
        sid = os.getxattr(node.share_dir / base, XATTR_ID).decode()
    except OSError:
        return []
    directory = node.share_dir / SIDECAR / sid[:2] / sid
    return sorted(os.listdir(directory)) if directory.exists() else []


def test_write_read_and_list_a_stream(smb: dict[str, Any], module_gateway: GatewayNode) -> None:
    name = f"ads-{uuid.uuid4().hex}.txt"
    base = _unc(module_gateway, name)
    with smbclient.open_file(base, mode="wb", **smb) as f:
        f.write(b"the file's own data")
    # Bigger than any xattr value ext4 keeps: streams are not xattrs.
    payload = os.urandom(300_000)
    with smbclient.open_file(base + ":Meta Data", mode="wb", **smb) as f:
        f.write(payload)
    with smbclient.open_file(base + ":meta data:$DATA", mode="rb", **smb) as f:
        assert f.read() == payload
    with smbclient.open_file(base, mode="rb", **smb) as f:
        assert f.read() == b"the file's own data"
    streams = {s.name: s.size for s in smbclient.liststreams(base, **smb)}
    assert streams == {"::$DATA": 19, ":Meta Data:$DATA": len(payload)}
    # The stream is no directory entry, and its storage is hidden.
    assert name in smbclient.listdir(_unc(module_gateway, ""), **smb)
    assert SIDECAR not in smbclient.listdir(_unc(module_gateway, ""), **smb)
    assert _stream_files(module_gateway, name) == ["meta%20data"]
    smbclient.remove(base, **smb)
    assert _stream_files(module_gateway, name) == []
    assert not (module_gateway.share_dir / name).exists()


def test_a_stream_is_deleted_alone(smb: dict[str, Any], module_gateway: GatewayNode) -> None:
    base = _unc(module_gateway, f"ads-{uuid.uuid4().hex}.txt")
    for stream in ("one", "two"):
        with smbclient.open_file(f"{base}:{stream}", mode="wb", **smb) as f:
            f.write(stream.encode())
    smbclient.remove(base + ":ONE", **smb)
    assert [s.name for s in smbclient.liststreams(base, **smb)] == ["::$DATA", ":two:$DATA"]
    with pytest.raises(SMBOSError) as err:
        smbclient.open_file(base + ":one", mode="rb", **smb)
    assert err.value.ntstatus == STATUS_OBJECT_NAME_NOT_FOUND
    smbclient.remove(base, **smb)


class _Tree:
    def __init__(self, node: GatewayNode) -> None:
        self.conn = Connection(uuid.uuid4(), node.host, node.port, require_signing=True)
        self.conn.connect(timeout=10)
        self.session = Session(self.conn, USER, PASSWORD, auth_protocol="ntlm")
        self.session.connect()
        self.tree = TreeConnect(self.session, rf"\\{node.host}\share")
        self.tree.connect()

    def open(self, name: str, access: int = RW, share: int = 0) -> Open:
        handle = Open(self.tree, name)
        handle.create(
            ImpersonationLevel.Impersonation, access, 0, share,
            CreateDisposition.FILE_OPEN_IF, CreateOptions.FILE_NON_DIRECTORY_FILE,
        )  # fmt: skip
        return handle


@pytest.fixture
def tree(module_gateway: GatewayNode) -> Iterator[_Tree]:
    t = _Tree(module_gateway)
    yield t
    t.conn.disconnect(True)


def _status(call: Any) -> int:
    with pytest.raises(SMBResponseException) as err:
        call()
    return int(err.value.status)


def test_share_modes_are_per_stream(tree: _Tree) -> None:
    name = f"share-{uuid.uuid4().hex}.txt"
    a = tree.open(f"{name}:a", share=0)
    b = tree.open(f"{name}:b", share=0)  # another stream: no conflict
    assert _status(lambda: tree.open(f"{name}:A")) == STATUS_SHARING_VIOLATION
    base = tree.open(name, share=0)  # the file's data is yet another stream
    base.close()
    # Opening the file for delete needs every open stream to share delete.
    delete = FilePipePrinterAccessMask.DELETE
    assert _status(lambda: tree.open(name, access=delete)) == STATUS_SHARING_VIOLATION
    a.close()
    b.close()
    tree.open(name, access=delete).close()


def test_names_windows_refuses(tree: _Tree, module_gateway: GatewayNode) -> None:
    name = f"names-{uuid.uuid4().hex}.txt"
    tree.open(name).close()
    for bad in (f"{name}:", f"{name}:s:", f"{name}:s:$FOO", f"{name}:a/b", f"{name}:s:$DATA:x",
                f"x*:{name}"):  # fmt: skip
        assert _status(lambda bad=bad: tree.open(bad)) == STATUS_OBJECT_NAME_INVALID, bad
    # Control characters and wildcards are fine in a stream name.
    odd = f"{name}:\x05?*<>|"
    tree.open(odd).close()
    listed = [n for n in os.listdir(module_gateway.share_dir) if n.startswith("names-")]
    assert listed == [name]


def test_a_write_through_a_stream_moves_its_file_write_time(
    tree: _Tree, module_gateway: GatewayNode
) -> None:
    """Windows shows the file's LastWriteTime move for a write to one of its
    streams, with the delay of a write to the file itself."""
    name = f"wt-{uuid.uuid4().hex}.txt"
    base = tree.open(name, share=0x7)
    start = smbinfo.basic(base)[2]
    stream = tree.open(f"{name}:times", share=0x7)
    time.sleep(0.05)
    stream.write(b"one", 0)
    assert smbinfo.basic(base)[2] == start  # not at the write itself
    time.sleep(2.6)
    moved = smbinfo.basic(base)[2]
    assert moved > start  # about 2 s after the stream handle's first write
    assert smbinfo.basic(stream)[2] == moved
    # On the volume, where every node reads it: the file's own inode.
    host = os.stat(module_gateway.share_dir / name).st_mtime_ns
    assert smbinfo.FILETIME_EPOCH + host // 100 == moved
    stream.write(b"two", 0)
    time.sleep(0.3)
    assert smbinfo.basic(base)[2] == moved  # later writes wait for the close
    stream.close()
    assert smbinfo.basic(base)[2] > moved
    base.close()


def test_a_stream_handle_reports_its_file_id_name_and_eas(tree: _Tree) -> None:
    stem = uuid.uuid4().hex[:8]
    name = f"Id-{stem}.TXT"
    base = tree.open(name, share=0x7)
    ea = b"COLOUR"
    smbinfo.set_info(base, smbinfo.FILE_FULL_EA,
                     struct.pack("<IBBH", 0, 0, len(ea), 4) + ea + b"\0blue")  # fmt: skip
    tree.open(f"{name}:Side Car", share=0x7).close()
    stream = tree.open(f"id-{stem}.txt:SIDE CAR:$DATA", share=0x7)
    # File ids (FileInternalInformation, FileIdInformation) are the file's.
    for info_class in (smbinfo.FILE_INTERNAL, smbinfo.FILE_ID_INFORMATION):
        assert smbinfo.query_ok(stream, info_class) == smbinfo.query_ok(base, info_class)
    # The normalized name: the file's stored spelling, then the stream's, no type.
    data = smbinfo.query_ok(stream, smbinfo.FILE_NORMALIZED_NAME)
    length = struct.unpack_from("<I", data)[0]
    assert data[4 : 4 + length].decode("utf-16-le") == f"{name}:Side Car"
    # EAs belong to the file.
    ea_size = smbinfo.query_ok(stream, smbinfo.FILE_EA)
    assert ea_size == smbinfo.query_ok(base, smbinfo.FILE_EA) != b"\0\0\0\0"
    stream.close()
    base.close()


def test_adding_a_stream_needs_write_access_to_its_file(
    tree: _Tree, module_gateway: GatewayNode
) -> None:
    """A user who may only read a file's attributes (or delete it) cannot hang
    a stream on it: adding a stream writes to the file (issue 16, finding 8)."""
    name = f"guarded-{uuid.uuid4().hex}.txt"
    tree.open(name).close(False)
    everyone_reads_attributes = SecurityDescriptor(
        SE_SELF_RELATIVE | SE_DACL_PRESENT, "S-1-22-1-0", "S-1-22-2-0", None,
        acl_of(Ace(ACCESS_ALLOWED, 0, READ_ATTRIBUTES_AND_DELETE, EVERYONE)),
    )  # fmt: skip
    ShareFS(str(module_gateway.share_dir)).write_sd(
        str(module_gateway.share_dir / name), everyone_reads_attributes.encode()
    )
    tree.open(name, access=READ_ATTRIBUTES, share=7).close(False)  # the file itself opens
    status = _status(lambda: tree.open(f"{name}:added", access=READ_ATTRIBUTES, share=7))
    assert status == STATUS_ACCESS_DENIED
    assert _stream_files(module_gateway, name) == []
