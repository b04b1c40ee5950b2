"""smbprotocol holding a persistent handle, and taking it back through another node.

What ``tests/test_failover.py`` and ``bench/failover_reclaim.py`` share: a
client (connection, NTLM session, tree), a read-write open with an RWH lease
and a durable request (DH2Q, persistent or not), its reconnect (DH2C), a
byte-range lock, and the retry loop a client runs while the cluster has not
yet declared the old node dead (the reconnect is OBJECT_NAME_NOT_FOUND until
then). smbprotocol cannot take a lease break (its receiver dies on the
unsolicited message), so nothing here opens a file under another lease.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

from smbprotocol.connection import Connection
from smbprotocol.create_contexts import (
    CreateContextName,
    DurableHandleFlags,
    SMB2CreateContextRequest,
    SMB2CreateDurableHandleReconnectV2,
    SMB2CreateDurableHandleRequestV2,
    SMB2CreateRequestLeaseV2,
)
from smbprotocol.exceptions import SMBResponseException
from smbprotocol.open import (
    CreateDisposition,
    FileAttributes,
    FilePipePrinterAccessMask,
    ImpersonationLevel,
    Open,
    RequestedOplockLevel,
    ShareAccess,
    SMB2LockElement,
)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

USER, PASSWORD = "test", "test"
RWH = 0x7
RW = FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE
SHARE_READ_WRITE = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE
PERSISTENT = DurableHandleFlags.SMB2_DHANDLE_FLAG_PERSISTENT
STATUS_FILE_NOT_AVAILABLE = 0xC0000467
STATUS_OBJECT_NAME_NOT_FOUND = 0xC0000034
STATUS_ACCESS_DENIED = 0xC0000022
STATUS_LOCK_NOT_GRANTED = 0xC0000055
LOCK_EXCLUSIVE_FAIL_IMMEDIATELY = 0x02 | 0x10


class Client:
    """One smbprotocol connection, session and tree (``share``) on a node."""

    def __init__(self, host: str, port: int, guid: uuid.UUID, user: str = USER,
                 password: str = PASSWORD, timeout: float = 10.0) -> None:  # fmt: skip
        self.conn = Connection(guid, host, port)
        self.conn.connect(timeout=timeout)
        try:
            self.session = Session(self.conn, user, password, auth_protocol="ntlm")
            self.session.connect()
            self.tree = TreeConnect(self.session, rf"\\{host}\share")
            self.tree.connect()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        try:
            self.conn.disconnect()
        except Exception:  # noqa: BLE001 - the node may be gone
            pass


class Granted(NamedTuple):
    """A durable open and what the server granted: DH2Q flags, lease state."""

    open: Open
    durable_flags: int
    lease_state: int


def context(name: Any, data: Any) -> SMB2CreateContextRequest:
    ctx = SMB2CreateContextRequest()
    ctx["buffer_name"] = name
    ctx["buffer_data"] = data
    return ctx


def lease(key: bytes) -> SMB2CreateContextRequest:
    """An RWH lease request (v2) under ``key``."""
    ask = SMB2CreateRequestLeaseV2()
    ask["lease_key"] = key
    ask["lease_state"] = RWH
    ask["parent_lease_key"] = bytes(16)
    ask["epoch"] = bytes(2)
    return context(CreateContextName.SMB2_CREATE_REQUEST_LEASE_V2, ask)


def open_file(client: Client, name: str, contexts: list[Any], share: int, access: int = RW) -> Open:
    """An open (FILE_OPEN_IF), asking for a lease when ``contexts`` are given."""
    f = Open(client.tree, name)
    f.create(
        ImpersonationLevel.Impersonation, access, FileAttributes.FILE_ATTRIBUTE_NORMAL, share,
        CreateDisposition.FILE_OPEN_IF, 0, create_contexts=contexts,
        oplock_level=RequestedOplockLevel.SMB2_OPLOCK_LEVEL_LEASE if contexts else 0,
    )  # fmt: skip
    return f


def leased(
    client: Client, name: str, lease_key: bytes, disposition: int, durable: Any
) -> tuple[Open, list[Any]]:
    """A read-write open sharing only reads, with an RWH lease and a durable
    context (a request or a reconnect); the response's contexts."""
    f = Open(client.tree, name)
    got = f.create(
        ImpersonationLevel.Impersonation, RW, FileAttributes.FILE_ATTRIBUTE_NORMAL,
        ShareAccess.FILE_SHARE_READ, disposition, 0,
        create_contexts=[lease(lease_key), durable],
        oplock_level=RequestedOplockLevel.SMB2_OPLOCK_LEVEL_LEASE,
    )  # fmt: skip
    return f, list(got or [])


def lease_state(contexts: list[Any]) -> int:
    """The lease state a create response granted (0 without a lease)."""
    for c in contexts:
        if not isinstance(c, bytes) and "lease_state" in c.fields:
            return int(c["lease_state"].get_value())
    return 0


def durable_open(client: Client, name: str, lease_key: bytes, create_guid: uuid.UUID,
                 persistent: bool) -> Granted:  # fmt: skip
    """``name`` overwritten and opened with a DH2Q (60 s, persistent if asked)."""
    ask = SMB2CreateDurableHandleRequestV2()
    ask["timeout"] = 60_000
    ask["flags"] = PERSISTENT if persistent else 0
    ask["create_guid"] = create_guid
    f, got = leased(
        client, name, lease_key, CreateDisposition.FILE_OVERWRITE_IF,
        context(CreateContextName.SMB2_CREATE_DURABLE_HANDLE_REQUEST_V2, ask),
    )  # fmt: skip
    answer = next(
        c for c in got if not isinstance(c, bytes) and "flags" in c.fields and "timeout" in c.fields
    )  # DH2Q's
    return Granted(f, int(answer["flags"].get_value()), lease_state(got))



RECORD = b"committed record"


def committed(client: Client, name: str, lease_key: bytes, create_guid: uuid.UUID) -> Open:
    """A persistent handle with an RWH lease, ``RECORD`` written at 0 and
    bytes 0-9 locked: what a failover must give back intact."""
    f, flags, _ = durable_open(client, name, lease_key, create_guid, persistent=True)
    assert flags & PERSISTENT, "no persistent handle: is the share continuously available?"
    f.write(RECORD, 0)
    lock_range(f, 0, 10)
    return f

def reclaim(client: Client, name: str, old: Open, lease_key: bytes, create_guid: uuid.UUID,
            persistent: bool = True) -> Granted:  # fmt: skip
    """The durable handle ``old`` reconnected (DH2C) on ``client``; the DH2C
    carries the persistent flag if ``old`` was granted it (MS-SMB2 3.3.5.9.12)."""
    again = SMB2CreateDurableHandleReconnectV2()
    again["file_id"] = old.file_id
    again["create_guid"] = create_guid
    again["flags"] = PERSISTENT if persistent else 0
    f, got = leased(
        client, name, lease_key, CreateDisposition.FILE_OPEN,
        context(CreateContextName.SMB2_CREATE_DURABLE_HANDLE_RECONNECT_V2, again),
    )  # fmt: skip
    return Granted(f, int(again["flags"].get_value()), lease_state(got))


def status_of(call: Callable[[], object]) -> int:
    """The NTSTATUS ``call`` got: 0 when it succeeded."""
    try:
        call()
    except SMBResponseException as e:
        return int(e.status)
    return 0


def lock_range(f: Open, offset: int, length: int) -> None:
    """An exclusive lock, failing at once if it conflicts."""
    element = SMB2LockElement()
    element["offset"] = offset
    element["length"] = length
    element["flags"] = LOCK_EXCLUSIVE_FAIL_IMMEDIATELY
    f.lock([element])


class Reclaimed(NamedTuple):
    client: Client
    granted: Granted
    attempts: int


def until_reclaimed(host: str, port: int, guid: uuid.UUID, name: str, old: Open,
                    lease_key: bytes, create_guid: uuid.UUID, deadline: float,
                    interval: float = 0.2, persistent: bool = True) -> Reclaimed:  # fmt: skip
    """Reconnect as Windows does: until the cluster has declared the old node
    dead, the handle is still its own and the reconnect is NOT_FOUND, so the
    DH2C is sent again every ``interval`` seconds on one session, until it
    succeeds or ``deadline`` (``time.monotonic()``) has passed."""
    client = Client(host, port, guid)
    attempts = 0
    try:
        while True:
            attempts += 1
            try:
                granted = reclaim(client, name, old, lease_key, create_guid, persistent)
            except SMBResponseException as e:
                if e.status != STATUS_OBJECT_NAME_NOT_FOUND or time.monotonic() > deadline:
                    raise
                time.sleep(interval)
                continue
            return Reclaimed(client, granted, attempts)
    except BaseException:
        client.close()
        raise
