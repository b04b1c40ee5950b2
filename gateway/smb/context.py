"""The per-request context handed to command handlers, and their reply type.

A handler sees its connection as ``ConnectionState`` and its node as
``NodeServices``: plain state and a Protocol, so it runs without a socket.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..protocol.constants import NtStatusError, Status
from ..protocol.credits import check_payload
from ..protocol.header import Header
from . import replay

if TYPE_CHECKING:
    from .services import NodeServices
    from .state import ConnectionState, Open, Session, TreeConnect

RELATED_FILE_ID = 0xFFFFFFFFFFFFFFFF
_FILE_ID = struct.Struct("<QQ")


class Disconnect(Exception):
    """Drop the connection (the protocol prescribes it, or the peer is hostile)."""


@dataclass(slots=True)
class Reply:
    status: int = Status.SUCCESS
    body: bytes | bytearray = b""  # a READ answers from the buffer it read into
    # Set when a handler created or used a handle, so related compound
    # requests that follow can name it with the all-ones FileId.
    file_id: tuple[int, int] | None = None


class RequestContext:
    """Everything a handler may need about one request, and how to go async."""

    __slots__ = (
        "conn", "node", "header", "body", "raw", "session", "tree", "related_file_id",
        "encrypted", "async_id", "_went_async", "related_follows", "used_file_id",
        "related_error",
    )  # fmt: skip

    def __init__(
        self,
        conn: ConnectionState,
        node: NodeServices,
        header: Header,
        body: bytes,
        raw: bytes,
        *,
        session: Session | None,
        tree: TreeConnect | None,
        related_file_id: tuple[int, int] | None,
        encrypted: bool,
        related_follows: bool = False,
        related_error: int | None = None,
    ) -> None:
        self.conn = conn
        self.node = node
        self.header = header
        self.body = body
        self.raw = raw
        self.session = session
        self.tree = tree
        self.related_file_id = related_file_id
        self.encrypted = encrypted
        self.async_id = 0
        # A related request of the same compound follows and waits for this
        # one: a wait that may never end must fail instead of going async.
        self.related_follows = related_follows
        # What the all-ones FileId resolves to when no handle precedes it:
        # the status of a CREATE of the chain that failed.
        self.related_error = related_error
        self._went_async: asyncio.Future[int] | None = None
        self.used_file_id: tuple[int, int] | None = None

    def go_async(self) -> None:
        """Answer STATUS_PENDING now and finish later (blocking waits must call this)."""
        if self.async_id or self._went_async is None:
            return
        self.async_id = self.conn.new_async_id()
        if not self._went_async.done():
            self._went_async.set_result(self.async_id)

    def check_payload(self, size: int) -> None:
        """A READ, WRITE, IOCTL, QUERY or CHANGE_NOTIFY moving ``size`` bytes must
        have paid for them: 64 KiB a credit (MS-SMB2 3.3.5.2.5)."""
        if not check_payload(size, self.header.credit_charge, self.conn.multi_credit):
            raise NtStatusError(Status.INVALID_PARAMETER, f"{size} bytes need more credits")

    def require_tree(self) -> TreeConnect:
        if self.tree is None:
            raise NtStatusError(Status.NETWORK_NAME_DELETED)
        return self.tree

    def file_id_at(self, offset: int) -> tuple[int, int]:
        if len(self.body) < offset + 16:
            raise NtStatusError(Status.INVALID_PARAMETER, "truncated FileId")
        pid, vid = _FILE_ID.unpack_from(self.body, offset)
        if pid == RELATED_FILE_ID and vid == RELATED_FILE_ID:
            if self.related_file_id is None:
                # Outside a related run it names no handle (smb2.compound.unrelated1).
                raise NtStatusError(self.related_error or Status.FILE_CLOSED, "no related FileId")
            return self.related_file_id
        return pid, vid

    def open_at(self, offset: int) -> Open:
        """The open named by the FileId at ``offset`` of the body, on this tree."""
        fid = self.file_id_at(offset)
        op = self.conn.opens.get(fid[1])
        if op is None and self.session is not None and len(self.session.channels) > 1:
            op = self.session.open_on_channels(fid[1])
        if op is None or op.persistent_id != fid[0] or op.closed:
            raise NtStatusError(Status.FILE_CLOSED)
        if self.tree is not None and op.tree is not self.tree:
            raise NtStatusError(Status.FILE_CLOSED)
        if self.session is not None and op.tree.session is not self.session:
            raise NtStatusError(Status.FILE_CLOSED)
        self.used_file_id = fid
        replay.used(
            self.node.replays, op, self.header.command, self.header.status & 0xFFFF,
            self.conn.codec.dialect,
        )  # fmt: skip
        return op
