"""Server-side copy and sparse files, seen by smbprotocol (an independent client).

smbclient.copyfile is smbprotocol's own server-side copy (resume key, then
FSCTL_SRV_COPYCHUNK_WRITE batches); the other tests send the FSCTLs with
smbprotocol's message classes and check the result on the volume itself.
"""

from __future__ import annotations

import os
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import smbclient
from smbprotocol.connection import Connection
from smbprotocol.exceptions import SMBResponseException
from smbprotocol.ioctl import (
    CtlCode,
    IOCTLFlags,
    SMB2IOCTLRequest,
    SMB2IOCTLResponse,
    SMB2SrvCopyChunk,
    SMB2SrvCopyChunkCopy,
    SMB2SrvCopyChunkResponse,
    SMB2SrvRequestResumeKey,
)
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    FilePipePrinterAccessMask,
    ImpersonationLevel,
    LockFlags,
    Open,
    ShareAccess,
    SMB2LockElement,
    SMB2QueryInfoRequest,
    SMB2QueryInfoResponse,
)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from . import smbinfo
from .conftest import PASSWORD, USER, GatewayNode, start_gateway

FSCTL_SET_SPARSE = 0x000900C4
FSCTL_SET_ZERO_DATA = 0x000980C8
FSCTL_QUERY_ALLOCATED_RANGES = 0x000940CF
FSCTL_FILE_LEVEL_TRIM = 0x00098208
FILE_ATTRIBUTE_SPARSE_FILE = 0x200
STATUS_INVALID_PARAMETER = 0xC000000D
STATUS_OBJECT_NAME_NOT_FOUND = 0xC0000034
STATUS_FILE_LOCK_CONFLICT = 0xC0000054
STATUS_ACCESS_DENIED = 0xC0000022
RW = FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE
ALL_SHARING = (
    ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
)
MIB = 1 << 20


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayNode]:
    work = tmp_path_factory.mktemp("gw")
    other = work / "other"
    other.mkdir()
    gw = start_gateway(work, extra=["--share", f"other={other}"])
    yield gw
    rc = gw.stop()
    assert rc == 0, gw.log()[-4000:]
    assert "Traceback" not in gw.log(), gw.log()[-4000:]


class Client:
    """One smbprotocol connection and session, with trees on demand."""

    def __init__(self, node: GatewayNode) -> None:
        self.node = node
        self.conn = Connection(uuid.uuid4(), node.host, node.port, require_signing=True)
        self.conn.connect(timeout=10)
        self.session = Session(self.conn, USER, PASSWORD, auth_protocol="ntlm")
        self.session.connect()
        self.trees: dict[str, TreeConnect] = {}

    def tree(self, share: str = "share") -> TreeConnect:
        if share not in self.trees:
            self.trees[share] = TreeConnect(self.session, rf"\\{self.node.host}\{share}")
            self.trees[share].connect()
        return self.trees[share]

    def open(self, name: str, access: int = RW, share: str = "share") -> Open:
        handle = Open(self.tree(share), name)
        handle.create(
            ImpersonationLevel.Impersonation,
            access,
            0,
            ALL_SHARING,
            CreateDisposition.FILE_OPEN_IF,
            CreateOptions.FILE_NON_DIRECTORY_FILE,
        )
        return handle

    def close(self) -> None:
        self.conn.disconnect(True)


@pytest.fixture
def client(node: GatewayNode) -> Iterator[Client]:
    c = Client(node)
    yield c
    c.close()


def ioctl(handle: Open, code: int, data: bytes = b"", max_out: int = 1024) -> bytes:
    """Send one FSCTL on ``handle``; its output, or SMBResponseException."""
    req = SMB2IOCTLRequest()
    req["ctl_code"] = code
    req["file_id"] = handle.file_id
    req["max_output_response"] = max_out
    req["flags"] = IOCTLFlags.SMB2_0_IOCTL_IS_FSCTL
    req["buffer"] = data
    tree = handle.tree_connect
    request = handle.connection.send(req, sid=tree.session.session_id, tid=tree.tree_connect_id)
    response = handle.connection.receive(request)
    resp = SMB2IOCTLResponse()
    resp.unpack(response["data"].get_value())
    return bytes(resp["buffer"].get_value())


def error_output(err: SMBResponseException) -> bytes:
    """The IOCTL output that came with an error status."""
    resp = SMB2IOCTLResponse()
    resp.unpack(err.header["data"].get_value())
    return bytes(resp["buffer"].get_value())


def resume_key(handle: Open) -> bytes:
    out = SMB2SrvRequestResumeKey()
    out.unpack(ioctl(handle, CtlCode.FSCTL_SRV_REQUEST_RESUME_KEY, max_out=32))
    return bytes(out["resume_key"].get_value())


def copy_request(key: bytes, chunks: list[tuple[int, int, int]]) -> bytes:
    structs = []
    for src, dst, length in chunks:
        c = SMB2SrvCopyChunk()
        c["source_offset"] = src
        c["target_offset"] = dst
        c["length"] = length
        structs.append(c)
    copy = SMB2SrvCopyChunkCopy()
    copy["source_key"] = key
    copy["chunks"] = structs
    return bytes(copy.pack())


def copy_response(raw: bytes) -> tuple[int, int, int]:
    resp = SMB2SrvCopyChunkResponse()
    resp.unpack(raw)
    return (
        resp["chunks_written"].get_value(),
        resp["chunk_bytes_written"].get_value(),
        resp["total_bytes_written"].get_value(),
    )


def copychunk(dest: Open, key: bytes, chunks: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    out = ioctl(dest, CtlCode.FSCTL_SRV_COPYCHUNK_WRITE, copy_request(key, chunks), max_out=12)
    return copy_response(out)


def test_smbclient_copyfile_is_server_side(node: GatewayNode) -> None:
    """smbclient.copyfile copies 20 MiB + a tail (two COPYCHUNK_WRITE requests)."""
    cache: dict[str, Any] = {}
    kw: dict[str, Any] = {
        "username": USER, "password": PASSWORD, "port": node.port,
        "connection_cache": cache, "auth_protocol": "ntlm",
    }  # fmt: skip
    payload = os.urandom(20 * MIB + 12345)
    (node.share_dir / "cc-src.bin").write_bytes(payload)
    try:
        smbclient.copyfile(
            rf"\\{node.host}\share\cc-src.bin", rf"\\{node.host}\share\cc-dst.bin", **kw
        )
    finally:
        smbclient.reset_connection_cache(connection_cache=cache)
    assert (node.share_dir / "cc-dst.bin").read_bytes() == payload


def test_copychunk_across_shares_and_chunks(client: Client, node: GatewayNode) -> None:
    """A key from one share is good on another share of the same session."""
    data = os.urandom(3 * MIB)
    (node.share_dir / "x-src.bin").write_bytes(data)
    src = client.open("x-src.bin")
    dst = client.open("x-dst.bin", share="other")
    key = resume_key(src)
    assert resume_key(src) == key  # one key per open
    written = copychunk(dst, key, [(MIB, 0, MIB), (0, MIB, MIB), (2 * MIB, 2 * MIB, 1000)])
    assert written == (3, 0, 2 * MIB + 1000)
    out = (node.share_dir.parent / "other" / "x-dst.bin").read_bytes()
    assert out == data[MIB : 2 * MIB] + data[:MIB] + data[2 * MIB : 2 * MIB + 1000]
    src.close()
    # The key dies with its handle.
    with pytest.raises(SMBResponseException) as err:
        copychunk(dst, key, [(0, 0, 10)])
    assert err.value.status == STATUS_OBJECT_NAME_NOT_FOUND


def test_copychunk_limits_and_bad_keys(client: Client, node: GatewayNode) -> None:
    (node.share_dir / "l-src.bin").write_bytes(os.urandom(4096))
    src = client.open("l-src.bin")
    dst = client.open("l-dst.bin")
    key = resume_key(src)
    for chunks in ([(0, 0, 1)] * 257, [(0, 0, MIB + 1)], [(0, 0, MIB)] * 17, [(0, 0, 0)]):
        with pytest.raises(SMBResponseException) as err:
            copychunk(dst, key, chunks)
        assert err.value.status == STATUS_INVALID_PARAMETER
        # The limits come back (MS-SMB2 3.3.5.15.6.2): Windows' 256 x 1 MiB, 16 MiB.
        assert copy_response(error_output(err.value)) == (256, MIB, 16 * MIB)
    forged = key[:8] + bytes(16)
    with pytest.raises(SMBResponseException) as err:
        copychunk(dst, forged, [(0, 0, 10)])
    assert err.value.status == STATUS_OBJECT_NAME_NOT_FOUND
    # Another session of the same user cannot use the key.
    other = Client(node)
    try:
        theirs = other.open("l-dst.bin")
        with pytest.raises(SMBResponseException) as err:
            copychunk(theirs, key, [(0, 0, 10)])
        assert err.value.status == STATUS_OBJECT_NAME_NOT_FOUND
    finally:
        other.close()
    # COPYCHUNK_WRITE needs write access on the target.
    reader = client.open("l-dst.bin", access=FilePipePrinterAccessMask.GENERIC_READ)
    with pytest.raises(SMBResponseException) as err:
        copychunk(reader, key, [(0, 0, 10)])
    assert err.value.status == STATUS_ACCESS_DENIED
    assert (node.share_dir / "l-dst.bin").stat().st_size == 0


def test_copychunk_respects_byte_range_locks(client: Client, node: GatewayNode) -> None:
    data = os.urandom(8192)
    (node.share_dir / "k-src.bin").write_bytes(data)
    src = client.open("k-src.bin")
    dst = client.open("k-dst.bin")
    locker = client.open("k-src.bin")
    _lock(locker, 4096, 10, LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK)
    key = resume_key(src)
    with pytest.raises(SMBResponseException) as err:
        copychunk(dst, key, [(0, 0, 4096), (4096, 4096, 4096)])
    assert err.value.status == STATUS_FILE_LOCK_CONFLICT
    # The first chunk was copied before the locked one stopped the request.
    assert copy_response(error_output(err.value)) == (1, 0, 4096)
    assert (node.share_dir / "k-dst.bin").read_bytes() == data[:4096]
    _lock(locker, 4096, 10, LockFlags.SMB2_LOCKFLAG_UNLOCK)
    assert copychunk(dst, key, [(4096, 4096, 4096)]) == (1, 0, 4096)
    assert (node.share_dir / "k-dst.bin").read_bytes() == data


@pytest.mark.parametrize("stream", ["", ":foo"])
def test_copychunk_moves_the_write_time_as_a_write(
    client: Client, node: GatewayNode, stream: str
) -> None:
    """Into a file or one of its streams (from another file's stream): the data
    lands there, and the target file's write time moves as a WRITE through the
    handle moves it: not at the copy, at the handle's close."""
    tag = uuid.uuid4().hex[:8]
    data = os.urandom(10000)
    src = client.open(f"t-src-{tag}.bin:foo")
    src.write(data, 0)
    target = f"t-dst-{tag}.bin"
    watcher = client.open(target)
    start = smbinfo.basic(watcher)[2]
    dst = client.open(target + stream)
    time.sleep(0.05)
    assert copychunk(dst, resume_key(src), [(0, 0, len(data))]) == (1, 0, len(data))
    assert smbinfo.basic(watcher)[2] == start
    assert dst.read(0, len(data)) == data
    assert (node.share_dir / target).stat().st_size == (0 if stream else len(data))
    dst.close()
    assert smbinfo.basic(watcher)[2] > start
    watcher.close()
    src.close()


def _lock(handle: Open, offset: int, length: int, flags: int) -> None:
    element = SMB2LockElement()
    element["offset"] = offset
    element["length"] = length
    element["flags"] = flags
    handle.lock([element], wait=True)


def _attributes(handle: Open) -> int:
    return int(handle.file_attributes)  # refreshed by each CREATE


def _zero(handle: Open, start: int, end: int) -> None:
    ioctl(handle, FSCTL_SET_ZERO_DATA, struct.pack("<qq", start, end), max_out=0)


def _ranges(handle: Open, start: int, length: int) -> list[tuple[int, int]]:
    out = ioctl(handle, FSCTL_QUERY_ALLOCATED_RANGES, struct.pack("<qq", start, length))
    return [struct.unpack_from("<qq", out, i) for i in range(0, len(out), 16)]


def _data_ranges(path: Path) -> list[tuple[int, int]]:
    """What the host filesystem itself says is allocated."""
    ranges = []
    with open(path, "rb") as f:
        fd, pos, size = f.fileno(), 0, os.fstat(f.fileno()).st_size
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            ranges.append((data, hole - data))
            pos = hole
    return ranges


def _fs_info(handle: Open, info_class: int) -> bytes:
    req = SMB2QueryInfoRequest()
    req["info_type"] = 2  # SMB2_0_INFO_FILESYSTEM
    req["file_info_class"] = info_class
    req["output_buffer_length"] = 1024
    req["file_id"] = handle.file_id
    tree = handle.tree_connect
    request = handle.connection.send(req, sid=tree.session.session_id, tid=tree.tree_connect_id)
    resp = SMB2QueryInfoResponse()
    resp.unpack(handle.connection.receive(request)["data"].get_value())
    return bytes(resp["buffer"].get_value())


def test_sparse_attribute_only_through_the_fsctl(client: Client, node: GatewayNode) -> None:
    """As on NTFS, FileBasicInformation neither sets nor clears SPARSE."""
    hidden, archive = 0x2, 0x20
    f = client.open("attr.bin")
    smbinfo.set_basic(f, attributes=archive | FILE_ATTRIBUTE_SPARSE_FILE)
    assert not _attributes(client.open("attr.bin")) & FILE_ATTRIBUTE_SPARSE_FILE
    ioctl(f, FSCTL_SET_SPARSE, b"", max_out=0)  # no buffer: TRUE
    smbinfo.set_basic(f, attributes=hidden)
    attributes = _attributes(client.open("attr.bin"))
    assert attributes & FILE_ATTRIBUTE_SPARSE_FILE and attributes & hidden
    assert not attributes & archive


def _random_file(client: Client, node: GatewayNode, name: str) -> tuple[Path, bytes, Open]:
    """4 MiB of random data made on the host, and an open of it."""
    path = node.share_dir / name
    payload = os.urandom(4 * MIB)
    path.write_bytes(payload)
    return path, payload, client.open(name)


def test_sparse_file_punch_and_query(client: Client, node: GatewayNode) -> None:
    path, payload, f = _random_file(client, node, "sparse.bin")
    # FileFsAttributeInformation says FILE_SUPPORTS_SPARSE_FILES (the volume keeps xattrs).
    assert struct.unpack_from("<I", _fs_info(f, 5))[0] & 0x40
    assert not _attributes(f) & FILE_ATTRIBUTE_SPARSE_FILE
    # Not sparse: zeroing keeps the range allocated, and the file is one range.
    _zero(f, 0, MIB)
    assert _ranges(f, 0, 8 * MIB) == [(0, 4 * MIB)]
    assert path.stat().st_blocks * 512 >= 4 * MIB
    assert path.read_bytes() == bytes(MIB) + payload[MIB:]
    ioctl(f, FSCTL_SET_SPARSE, b"\x01", max_out=0)
    # The flag is on the volume: another connection sees it at its open.
    other = Client(node)
    try:
        assert _attributes(other.open("sparse.bin")) & FILE_ATTRIBUTE_SPARSE_FILE
    finally:
        other.close()
    # Sparse: zeroing punches a hole, and the ranges are the host filesystem's.
    _zero(f, 2 * MIB, 3 * MIB)
    assert path.stat().st_size == 4 * MIB
    assert path.stat().st_blocks * 512 <= 3 * MIB + 64 * 1024
    got = _ranges(f, 0, 4 * MIB)
    assert got == _data_ranges(path)
    assert got and all(not (o < 3 * MIB and o + n > 2 * MIB) for o, n in got)
    assert _ranges(f, 3 * MIB, 10 * MIB) == [(3 * MIB, MIB)]
    content = path.read_bytes()
    assert content[2 * MIB : 3 * MIB] == bytes(MIB)
    assert content[3 * MIB :] == payload[3 * MIB :]
    # Clearing the flag allocates the holes again.
    ioctl(f, FSCTL_SET_SPARSE, b"\x00", max_out=0)
    assert path.stat().st_blocks * 512 >= 4 * MIB
    assert _ranges(f, 0, 8 * MIB) == [(0, 4 * MIB)]
    assert not _attributes(client.open("sparse.bin")) & FILE_ATTRIBUTE_SPARSE_FILE


def test_file_level_trim_gives_whole_pages_back(client: Client, node: GatewayNode) -> None:
    path, payload, f = _random_file(client, node, "trim.bin")
    # FileFsSectorSizeInformation says SSINFO_FLAGS_TRIM_ENABLED.
    assert struct.unpack_from("<5I", _fs_info(f, 11))[4] & 0x8
    ioctl(f, FSCTL_SET_SPARSE, b"\x01", max_out=0)
    blocks = path.stat().st_blocks
    trim = struct.pack("<II", 0, 1) + struct.pack("<QQ", 4096 + 100, 3 * MIB - 4096 - 50)
    out = ioctl(f, FSCTL_FILE_LEVEL_TRIM, trim, max_out=4)
    assert struct.unpack("<I", out) == (1,)  # NumRangesProcessed
    # The whole pages of [4196, 3 MiB + 50), 8192 to 3 MiB, went back to the
    # filesystem; the partial pages at either end kept their data.
    assert blocks - path.stat().st_blocks >= (3 * MIB - 8192) // 512
    content = path.read_bytes()
    assert content[:8192] == payload[:8192]
    assert content[8192 : 3 * MIB] == bytes(3 * MIB - 8192)
    assert content[3 * MIB :] == payload[3 * MIB :]
    reader = client.open("trim.bin", access=FilePipePrinterAccessMask.GENERIC_READ)
    with pytest.raises(SMBResponseException) as err:
        ioctl(reader, FSCTL_FILE_LEVEL_TRIM, trim, max_out=4)
    assert err.value.status == STATUS_ACCESS_DENIED
    with pytest.raises(SMBResponseException) as err:
        ioctl(f, FSCTL_FILE_LEVEL_TRIM, struct.pack("<II", 0, 0), max_out=4)
    assert err.value.status == STATUS_INVALID_PARAMETER
