"""Two nodes on one Redis bus behave as one server, seen by smbprotocol.

smbprotocol is an independent client; each test opens one connection per
node (node 1 on 127.0.0.1, node 2 on 127.0.0.2, the same port) and checks
what a user of a single server would see.
"""

from __future__ import annotations

import os
import signal
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from smbprotocol.connection import Connection
from smbprotocol.exceptions import SMBResponseException
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    FilePipePrinterAccessMask,
    ImpersonationLevel,
    LockFlags,
    Open,
    RequestedOplockLevel,
    ShareAccess,
    SMB2LockElement,
)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from gateway.cluster import ClusterSpec, LocalCluster
from gateway.fs import acl, sd

from . import smbinfo
from .conftest import PASSWORD, USER, free_port, write_users

STATUS_SHARING_VIOLATION = 0xC0000043
STATUS_LOCK_NOT_GRANTED = 0xC0000055
STATUS_ACCESS_DENIED = 0xC0000022
NODE_TTL = 3.0
RW = FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE


def _cluster(tmp: Path, *node_args: str) -> LocalCluster:
    share = tmp / "share"
    share.mkdir(parents=True, exist_ok=True)
    spec = ClusterSpec(
        nodes=2,
        port=free_port(),
        shares=[f"share={share}"],
        users=str(write_users(tmp / "users")),
        node_args=["--break-timeout", "10", "--node-ttl", str(NODE_TTL), *node_args],
        log_dir=tmp / "logs",
    )
    cluster = LocalCluster(spec)
    cluster.start()
    return cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    c = _cluster(tmp)
    yield c
    c.stop()
    for node in c.nodes:
        assert node.proc.returncode == 0, node.log_path
        assert node.log_path is not None and "Traceback" not in node.log_path.read_text()


class Client:
    """One smbprotocol connection, session and tree to one node."""

    def __init__(self, host: str, port: int) -> None:
        self.conn = Connection(uuid.uuid4(), host, port, require_signing=True)
        self.conn.connect(timeout=10)
        self.session = Session(self.conn, USER, PASSWORD, auth_protocol="ntlm")
        self.session.connect()
        self.tree = TreeConnect(self.session, rf"\\{host}\share")
        self.tree.connect()

    def open(
        self,
        name: str,
        share: int = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE,
        oplock: int = RequestedOplockLevel.SMB2_OPLOCK_LEVEL_NONE,
        access: int = RW,
        options: int = 0,
        disposition: int = CreateDisposition.FILE_OPEN_IF,
    ) -> Open:
        handle = Open(self.tree, name)
        handle.create(
            ImpersonationLevel.Impersonation,
            access,
            0,
            share,
            disposition,
            CreateOptions.FILE_NON_DIRECTORY_FILE | options,
            oplock_level=oplock,
        )
        return handle

    def list_root(self, pattern: str, info_class: int) -> list[Any]:
        """QUERY_DIRECTORY of the share root."""
        listing = Open(self.tree, "")
        listing.create(
            ImpersonationLevel.Impersonation, FilePipePrinterAccessMask.GENERIC_READ, 0,
            ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE,
            CreateDisposition.FILE_OPEN, CreateOptions.FILE_DIRECTORY_FILE,
        )  # fmt: skip
        try:
            return list(listing.query_directory(pattern, info_class))
        finally:
            listing.close()

    def close(self) -> None:
        try:
            self.conn.disconnect(True)
        except Exception:  # noqa: BLE001 - a killed node's socket is already gone
            pass


def _lock(handle: Open, offset: int, length: int, flags: int, wait: bool = True) -> None:
    element = SMB2LockElement()
    element["offset"] = offset
    element["length"] = length
    element["flags"] = flags
    handle.lock([element], wait=wait)


EXCL_NOW = LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK | LockFlags.SMB2_LOCKFLAG_FAIL_IMMEDIATELY


@pytest.fixture
def clients(cluster: LocalCluster) -> Iterator[tuple[Client, Client]]:
    (h1, p1), (h2, p2) = cluster.endpoints
    a, b = Client(h1, p1), Client(h2, p2)
    yield a, b
    a.close()
    b.close()


def test_share_mode_conflict_across_nodes(clients: tuple[Client, Client]) -> None:
    a, b = clients
    name = f"share-{uuid.uuid4().hex}.txt"
    held = a.open(name, share=0)
    with pytest.raises(SMBResponseException) as err:
        b.open(name)
    assert err.value.status == STATUS_SHARING_VIOLATION
    held.close()
    b.open(name).close()


def test_fail_immediately_lock_conflict_across_nodes(clients: tuple[Client, Client]) -> None:
    a, b = clients
    name = f"lock-{uuid.uuid4().hex}.db"
    fa, fb = a.open(name), b.open(name)
    _lock(fa, 0x10000000, 1, EXCL_NOW)
    with pytest.raises(SMBResponseException) as err:
        _lock(fb, 0x10000000, 1, EXCL_NOW)
    assert err.value.status == STATUS_LOCK_NOT_GRANTED
    _lock(fb, 0x10000001, 1, EXCL_NOW)  # the next byte is free
    fa.close()
    fb.close()


def test_blocking_lock_on_node2_granted_when_node1_unlocks(
    clients: tuple[Client, Client],
) -> None:
    a, b = clients
    name = f"block-{uuid.uuid4().hex}.db"
    fa, fb = a.open(name), b.open(name)
    _lock(fa, 100, 10, LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK)
    granted = threading.Event()
    errors: list[BaseException] = []

    def wait_for_lock() -> None:
        try:
            _lock(fb, 105, 1, LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK)
            granted.set()
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    waiter = threading.Thread(target=wait_for_lock, daemon=True)
    waiter.start()
    assert not granted.wait(1.0), "node 2 got a lock node 1 holds"
    started = time.monotonic()
    _lock(fa, 100, 10, LockFlags.SMB2_LOCKFLAG_UNLOCK)
    assert granted.wait(5.0), errors
    assert time.monotonic() - started < 1.0
    waiter.join(5)
    with pytest.raises(SMBResponseException) as err:
        _lock(fa, 105, 1, EXCL_NOW)
    assert err.value.status == STATUS_LOCK_NOT_GRANTED
    fa.close()
    fb.close()


def test_write_on_node2_then_read_on_node1(clients: tuple[Client, Client]) -> None:
    a, b = clients
    name = f"data-{uuid.uuid4().hex}.bin"
    payload = os.urandom(200_000)
    fb = b.open(name)
    fb.write(payload, 0)
    fb.close()
    fa = a.open(name)
    assert fa.read(0, len(payload)) == payload
    fa.close()


def test_kill9_of_node1_frees_its_oplock_and_lock_for_node2(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    try:
        (h1, p), (h2, _) = cluster.endpoints
        a, b = Client(h1, p), Client(h2, p)
        name = "victim.mdb"
        fa = a.open(name, share=0, oplock=RequestedOplockLevel.SMB2_OPLOCK_LEVEL_BATCH)
        assert fa.oplock_level == RequestedOplockLevel.SMB2_OPLOCK_LEVEL_BATCH
        _lock(fa, 0x10000000, 1, EXCL_NOW)
        os.kill(cluster.nodes[0].proc.pid, signal.SIGKILL)
        started = time.monotonic()
        fb = b.open(name, share=0)  # waits for node 1's share mode and oplock to go
        _lock(fb, 0x10000000, 1, LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK)
        elapsed = time.monotonic() - started
        assert elapsed <= NODE_TTL + 1.0, f"node 2 waited {elapsed:.1f} s"
        fb.write(b"still serving", 0)
        assert fb.read(0, 13) == b"still serving"
        fb.close()
        b.close()
        a.close()
    finally:
        cluster.stop()


OWNER_GROUP_DACL = 0x7


def _query_sd(handle: Open, additional: int = OWNER_GROUP_DACL) -> bytes:
    status, data = smbinfo.query(handle, 0, info_type=smbinfo.INFO_SECURITY, additional=additional)
    assert status == smbinfo.STATUS_SUCCESS, hex(status)
    return data


def test_a_dacl_set_through_node1_holds_on_node2(clients: tuple[Client, Client]) -> None:
    a, b = clients
    name = f"dacl-{uuid.uuid4().hex}.txt"
    handle = a.open(name, access=FilePipePrinterAccessMask.GENERIC_ALL)
    read_only = sd.Ace(sd.ACCESS_ALLOWED, 0, 0x00120089, acl.user_sid(USER))  # FILE_GENERIC_READ
    written = sd.SecurityDescriptor(
        sd.SE_SELF_RELATIVE | sd.SE_DACL_PRESENT, dacl=sd.acl_of(read_only)
    )
    smbinfo.set_info(
        handle, 0, written.encode(), smbinfo.INFO_SECURITY, acl.DACL_SECURITY_INFORMATION
    )
    mine = _query_sd(handle)
    handle.close()
    # Node 2 reads the same descriptor from the volume...
    other = b.open(name, access=FilePipePrinterAccessMask.READ_CONTROL)
    assert _query_sd(other) == mine
    assert sd.parse(mine).dacl == sd.acl_of(read_only)
    assert sd.parse(mine).owner == acl.user_sid(USER)
    other.close()
    # ...and enforces it: reading is allowed, writing is not.
    b.open(name, access=FilePipePrinterAccessMask.GENERIC_READ).close()
    with pytest.raises(SMBResponseException) as err:
        b.open(name, access=FilePipePrinterAccessMask.FILE_WRITE_DATA)
    assert err.value.status == STATUS_ACCESS_DENIED


def test_a_change_through_node1_completes_a_watch_held_on_node2(
    cluster: LocalCluster,
) -> None:
    import smbclient
    from smbprotocol.change_notify import (
        ChangeNotifyFlags,
        CompletionFilter,
        FileAction,
        FileSystemWatcher,
    )

    (h1, port), (h2, _) = cluster.endpoints
    caches: list[dict[str, object]] = [{}, {}]
    for host, cache in zip((h1, h2), caches, strict=True):
        smbclient.register_session(
            host, username=USER, password=PASSWORD, port=port, connection_cache=cache,
            auth_protocol="ntlm",
        )  # fmt: skip
    on1 = {"port": port, "connection_cache": caches[0]}
    on2 = {"port": port, "connection_cache": caches[1]}
    name = f"watched-{uuid.uuid4().hex[:8]}"
    try:
        smbclient.mkdir(rf"\\{h1}\share\{name}", **on1)
        with smbclient.open_file(
            rf"\\{h2}\share\{name}", mode="rb", buffering=0, file_type="dir", **on2
        ) as d:
            watcher = FileSystemWatcher(d.fd)
            watcher.start(
                CompletionFilter.FILE_NOTIFY_CHANGE_FILE_NAME,
                flags=ChangeNotifyFlags.SMB2_WATCH_TREE,
            )
            time.sleep(0.2)
            assert not watcher.response_event.is_set()
            with smbclient.open_file(rf"\\{h1}\share\{name}\from-node1.txt", "wb", **on1) as f:
                f.write(b"hello")
            assert watcher.response_event.wait(timeout=10), "node 2's watch never completed"
            changes = [
                (c["action"].get_value(), c["file_name"].get_value()) for c in watcher.result
            ]
            assert changes == [(FileAction.FILE_ACTION_ADDED, "from-node1.txt")]
        smbclient.remove(rf"\\{h1}\share\{name}\from-node1.txt", **on1)
        smbclient.rmdir(rf"\\{h1}\share\{name}", **on1)
    finally:
        for cache in caches:
            smbclient.reset_connection_cache(connection_cache=cache)


def test_a_write_through_node2_breaks_a_level2_oplock_held_through_node1(
    cluster: LocalCluster, clients: tuple[Client, Client]
) -> None:
    """The holder uses the project's break-aware client; the writer is smbprotocol."""
    import asyncio

    from clients.smb2client import SMB2Client

    (h1, port), _ = cluster.endpoints
    _, writer = clients
    name = f"levelii-{uuid.uuid4().hex}.dat"
    writer.open(name).close()

    async def body() -> None:
        holder = await SMB2Client.connect(h1, port, user=USER, password=PASSWORD)
        tree = await holder.tree_connect("share")
        broken = asyncio.Event()
        levels: list[int] = []

        def on_break(_op: object, notice: object) -> None:
            levels.append(getattr(notice, "new_oplock", -1))
            broken.set()

        held = await tree.create(name, oplock=0x01, on_break=on_break)  # Level II
        assert held.oplock_level == 0x01
        loop = asyncio.get_running_loop()
        handle = await loop.run_in_executor(None, writer.open, name)
        await loop.run_in_executor(None, handle.write, b"written via node 2", 0)
        await asyncio.wait_for(broken.wait(), 5)
        assert levels == [0x00]  # Level II breaks to none, no ack needed
        await loop.run_in_executor(None, handle.close)
        await held.close()
        await holder.close()

    asyncio.run(body())


def test_names_ignore_case_across_nodes(clients: tuple[Client, Client]) -> None:
    a, b = clients
    stem = uuid.uuid4().hex[:8]
    stored = f"Data-{stem}.MDB"
    fa = a.open(stored)
    fa.write(b"records", 0)
    fa.close()
    # Another spelling through the other node finds the same file at once.
    fb = b.open(stored.lower())
    assert fb.read(0, 7) == b"records"
    fb.close()
    # Creating it anew under a third spelling collides, as on Windows.
    again = Open(b.tree, stored.upper())
    with pytest.raises(SMBResponseException) as err:
        again.create(
            ImpersonationLevel.Impersonation, RW, 0, ShareAccess.FILE_SHARE_READ,
            CreateDisposition.FILE_CREATE, CreateOptions.FILE_NON_DIRECTORY_FILE,
        )  # fmt: skip
    assert err.value.status == 0xC0000035  # STATUS_OBJECT_NAME_COLLISION
    # The directory keeps the case it was created with.
    names = [e["file_name"].get_value().decode("utf-16-le") for e in a.list_root(f"*{stem}*", 1)]
    assert names == [stored]


# An existing file only, shared every way and open for delete too.
SHARE_ALL = (
    ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
)
EXISTING = {
    "share": SHARE_ALL,
    "access": RW | FilePipePrinterAccessMask.DELETE,
    "disposition": CreateDisposition.FILE_OPEN,
}


def test_a_large_directory_sees_names_made_and_removed_through_the_other_node(
    cluster: LocalCluster, clients: tuple[Client, Client]
) -> None:
    """Node 1 keeps a name map of a large directory; node 2's changes must show at once."""
    a, b = clients
    share = Path(cluster.spec.shares[0].split("=", 1)[1])
    big = f"big-{uuid.uuid4().hex[:8]}"
    (share / big).mkdir()
    for i in range(800):
        (share / big / f"file-{i:05d}.dat").touch()
    time.sleep(2.5)  # past the racy window: node 1 may now keep a map of the directory
    a.open(rf"{big.upper()}\FILE-00007.DAT", **EXISTING).close()
    b.open(rf"{big}\NewName.TXT").close()
    a.open(rf"{big}\NEWNAME.txt", **EXISTING).close()
    b.open(rf"{big}\newname.TXT", options=CreateOptions.FILE_DELETE_ON_CLOSE, **EXISTING).close()
    with pytest.raises(SMBResponseException) as err:
        a.open(rf"{big}\NEWNAME.txt", **EXISTING)
    assert err.value.status == 0xC0000034  # STATUS_OBJECT_NAME_NOT_FOUND
    assert sorted(os.listdir(share / big))[-1] == "file-00799.dat"


FILE_STREAM_INFORMATION = 22
STATUS_DELETE_PENDING = 0xC0000056
STATUS_OBJECT_NAME_NOT_FOUND = 0xC0000034


def _stream_names(handle: Open) -> list[str]:
    buf, names, pos = smbinfo.query_ok(handle, FILE_STREAM_INFORMATION), [], 0
    while buf:
        nxt, length = struct.unpack_from("<II", buf, pos)
        names.append(buf[pos + 24 : pos + 24 + length].decode("utf-16-le"))
        if not nxt:
            return names
        pos += nxt
    return names


def test_a_stream_written_through_node1_reads_back_through_node2(
    clients: tuple[Client, Client],
) -> None:
    a, b = clients
    name = f"ads-{uuid.uuid4().hex}.txt"
    payload = os.urandom(100_000)
    fa = a.open(f"{name}:Zone.Identifier")
    fa.write(payload, 0)
    fa.close()
    fb = b.open(f"{name}:zone.identifier:$DATA")
    assert fb.read(0, len(payload)) == payload
    fb.close()
    base = b.open(name)
    assert _stream_names(base) == ["::$DATA", ":Zone.Identifier:$DATA"]
    base.close()


def test_a_file_deleted_through_node2_waits_for_its_stream_open_on_node1(
    clients: tuple[Client, Client],
) -> None:
    a, b = clients
    name = f"ads-del-{uuid.uuid4().hex}.txt"
    delete = FilePipePrinterAccessMask.DELETE
    rw_share = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE
    # A stream open on node 1 that does not share delete stops node 2 deleting the file...
    held = a.open(f"{name}:s", share=rw_share)
    held.write(b"stream data", 0)
    with pytest.raises(SMBResponseException) as err:
        b.open(name, share=rw_share | ShareAccess.FILE_SHARE_DELETE, access=delete)
    assert err.value.status == STATUS_SHARING_VIOLATION
    held.close()
    # ...one that does lets it, and keeps the file (delete-pending) until it closes.
    held = a.open(f"{name}:s", share=rw_share | ShareAccess.FILE_SHARE_DELETE)
    b.open(name, share=0x7, access=delete, options=CreateOptions.FILE_DELETE_ON_CLOSE).close()
    for node, target in ((b, name), (a, f"{name}:s")):
        with pytest.raises(SMBResponseException) as err:
            node.open(target, share=0x7)
        assert err.value.status == STATUS_DELETE_PENDING
    assert held.read(0, 11) == b"stream data"
    held.close()
    gone = Open(b.tree, name)
    with pytest.raises(SMBResponseException) as err:
        gone.create(
            ImpersonationLevel.Impersonation, RW, 0, 0x7, CreateDisposition.FILE_OPEN,
            CreateOptions.FILE_NON_DIRECTORY_FILE,
        )  # fmt: skip
    assert err.value.status == STATUS_OBJECT_NAME_NOT_FOUND


def test_copychunk_and_sparse_across_nodes(clients: tuple[Client, Client]) -> None:
    """A lock taken through node 2 stops a server-side copy through node 1, and the
    SPARSE attribute set through node 1 is what node 2 reports."""
    from .test_ioctl import FSCTL_SET_SPARSE, copychunk, error_output, ioctl, resume_key

    a, b = clients
    stem = uuid.uuid4().hex
    data = os.urandom(8192)
    src = a.open(f"cc-{stem}.bin")
    src.write(data, 0)
    dst = a.open(f"cc-{stem}.copy")
    locker = b.open(f"cc-{stem}.bin")
    _lock(locker, 4000, 10, EXCL_NOW)
    key = resume_key(src)
    with pytest.raises(SMBResponseException) as err:
        copychunk(dst, key, [(0, 0, 4096)])
    assert err.value.status == 0xC0000054  # STATUS_FILE_LOCK_CONFLICT
    assert error_output(err.value)[:4] == b"\x00\x00\x00\x00"  # no chunk written
    _lock(locker, 4000, 10, LockFlags.SMB2_LOCKFLAG_UNLOCK)
    assert copychunk(dst, key, [(0, 0, 8192)]) == (1, 0, 8192)
    copy = b.open(f"cc-{stem}.copy")
    assert copy.read(0, 8192) == data
    ioctl(dst, FSCTL_SET_SPARSE, b"\x01", max_out=0)
    assert b.open(f"cc-{stem}.copy").file_attributes & 0x200  # FILE_ATTRIBUTE_SPARSE_FILE
    for handle in (src, dst, locker, copy):
        handle.close()


def test_times_attributes_eas_and_ids_set_through_node1_read_the_same_on_node2(
    clients: tuple[Client, Client],
) -> None:
    """Everything FileBasicInformation sets is on the volume: a creation time of
    1968, a write time past what ext4 holds (kept in the DOS xattr), a ChangeTime
    (which POSIX cannot set) and attributes read back byte for byte through the
    other node, as do extended attributes and the file ids (volume id + inode)."""
    a, b = clients
    name = f"times-{uuid.uuid4().hex}.txt"
    created, written = smbinfo.filetime(-63158400), smbinfo.filetime(32503680000)
    changed = smbinfo.filetime(int(time.time()) - 86400)
    attrs = 0x02 | 0x04 | 0x20  # HIDDEN | SYSTEM | ARCHIVE
    fa = a.open(name)
    ea = struct.pack("<IBBH", 0, 0, 7, 5) + b"CHECKED\0" + b"value"
    smbinfo.set_info(fa, smbinfo.FILE_FULL_EA, ea)
    smbinfo.set_basic(fa, creation=created, write=written, change=changed, attributes=attrs)
    classes = (
        smbinfo.FILE_BASIC, smbinfo.FILE_NETWORK_OPEN, smbinfo.FILE_ALL, smbinfo.FILE_INTERNAL,
        smbinfo.FILE_ID_INFORMATION, smbinfo.FILE_FULL_EA,
    )  # fmt: skip
    mine = [smbinfo.query_ok(fa, c) for c in classes]
    fa.close()
    fb = b.open(name)
    assert [smbinfo.query_ok(fb, c) for c in classes] == mine
    fb.close()
    c, _a, w, ch, at = smbinfo.BASIC.unpack(mine[0])
    assert (c, w, ch, at) == (created, written, changed, attrs)
    assert mine[5] == ea
    inode = struct.unpack("<Q", mine[3])[0]
    assert struct.unpack_from("<Q", mine[4], 8)[0] == inode
    (entry,) = b.list_root(name, 37)  # FileIdBothDirectoryInformation
    assert entry["file_id"].get_value() == inode
    assert entry["file_attributes"].get_value() == attrs


def test_a_write_through_node1_moves_the_write_time_node2_sees_at_its_close(
    clients: tuple[Client, Client],
) -> None:
    """Windows moves the write time later than the write (at close, or 2 s after the
    first write); the volume holds what Windows would show, so node 2 sees it too."""
    a, b = clients
    name = f"wt-{uuid.uuid4().hex}.txt"
    earlier = smbinfo.filetime(int(time.time()) - 3600)
    setter = a.open(name)
    smbinfo.set_basic(setter, write=earlier)
    setter.close()
    writer = a.open(name)
    writer.write(b"through node 1", 0)
    reader = b.open(name)
    assert smbinfo.basic(reader)[2] == earlier
    writer.close()
    assert smbinfo.basic(reader)[2] > smbinfo.filetime(int(time.time()) - 60)
    assert reader.read(0, 14) == b"through node 1"
    reader.close()
