"""What one node remembers about its clients: connections, sessions, channels,
tree connects, opens. Plain data: no sockets, no bus calls."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..protocol import wire
from ..protocol.constants import Capabilities, Dialect

if TYPE_CHECKING:
    from ..auth import Authenticator
    from ..config import ShareConfig
    from ..fs.streamstore import Stream
    from ..fs.vfs import ShareFS
    from ..protocol.fileinfo import FileInfo
    from ..rpc.dcerpc import DcerpcPipe
    from .notify import Watch


class SessionState(enum.Enum):
    """MS-SMB2 3.3.1.8 Session.State."""

    IN_PROGRESS = "in progress"  # authenticating
    VALID = "valid"
    EXPIRED = "expired"  # logged off, or its re-authentication failed


class ConnectionState:
    """What a connection negotiated and holds, as handlers see it.

    The asyncio connection (``gateway.smb.connection.SmbConnection``) adds the
    socket; a handler needs only this, so it can run against a plain instance.
    """

    def __init__(self, codec: wire.WireCodec, peer: str = "?", local_address: str = "") -> None:
        self.codec = codec
        self.peer = peer
        self.local_address = local_address  # the address the client connected to
        self.sessions: dict[int, Session] = {}
        self.opens: dict[int, Open] = {}  # by volatile id
        self.client_guid = b"\x00" * 16
        self.client_dialects: tuple[int, ...] = ()
        self.client_capabilities = 0
        self.client_security_mode = 0
        self.server_capabilities = 0
        self.server_security_mode = 0
        self.preauth_hash = bytes(64)
        self.read_body_padding = 0  # set only by the smbtorture test hook
        # Samba's FSCTL_SMBTORTURE_FORCE_UNACKED_TIMEOUT test hook: after this
        # many more messages, what is sent counts as never acknowledged by
        # the client's TCP, and the connection is dropped a while later.
        self.sends_before_unacked: int | None = None
        self.negotiated = False
        self.closed = False
        self._async_ids = itertools.count(1)

    def new_async_id(self) -> int:
        return next(self._async_ids)

    @property
    def multi_credit(self) -> bool:
        """MS-SMB2 Connection.SupportsMultiCredit: 2.1 and later with LARGE_MTU."""
        return self.codec.dialect >= Dialect.SMB2_1 and bool(
            self.server_capabilities & Capabilities.LARGE_MTU
        )

    def send_notification(self, command: int, body: bytes, session: Session | None) -> None:
        """Send a server-initiated message (a break); only a transport can."""
        raise NotImplementedError


@dataclass(eq=False)
class Channel:
    """One connection a session is valid on, or is being bound to (see channels.py)."""

    session: Session
    connection: ConnectionState
    primary: bool  # the connection the session was authenticated on: signs with its key
    signing_algorithm: int
    signing_key: bytes = b""
    preauth_hash: bytes = b""
    authenticator: Authenticator | None = None  # set while a bind is in progress

    @property
    def session_id(self) -> int:
        return self.session.session_id

    @property
    def encryption_key(self) -> bytes:
        return self.session.encryption_key

    @property
    def decryption_key(self) -> bytes:
        return self.session.decryption_key

    @property
    def usable(self) -> bool:
        return self.authenticator is None and not self.connection.closed


@dataclass(eq=False)
class Session:
    session_id: int
    dialect: int
    state: SessionState = SessionState.IN_PROGRESS
    username: str = ""
    domain: str = ""
    is_guest: bool = False
    is_anonymous: bool = False
    session_key: bytes = b""
    signing_key: bytes = b""
    application_key: bytes = b""
    encryption_key: bytes = b""  # server -> client
    decryption_key: bytes = b""  # client -> server
    signing_required: bool = False
    encrypt_data: bool = False
    preauth_hash: bytes = b""
    sign_final: bool = False  # sign the final SESSION_SETUP reply (3.1.1, or signing required)
    authenticator: Authenticator | None = None
    trees: dict[int, TreeConnect] = field(default_factory=dict)
    # What binding another connection must match (MS-SMB2 3.3.5.5); see channels.py.
    owner: str = ""  # the user who first logged on; a re-authentication may only return to it
    signing_algorithm: int | None = None  # the algorithm signing_key signs with
    cipher: int | None = None
    channels: dict[ConnectionState, Channel] = field(default_factory=dict)
    # Opens of this session in its connections' tables (max_opens_per_session);
    # gateway.smb.opens keeps it, as the one place opens enter and leave them.
    open_count: int = 0
    # Set (monotonic time) when the previous session it replaces lives on
    # another node: that node hands the session's durable handles to the bus
    # moments later, and a reconnect until then waits for them (channels.py).
    handoff_until: float = 0.0
    _tree_ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def next_tree_id(self) -> int:
        return next(self._tree_ids)

    def heir(self, leaving: ConnectionState | None = None) -> ConnectionState | None:
        """A connection of this session, other than ``leaving``, still fit to
        carry it (where its opens go when a channel drops)."""
        for conn, channel in self.channels.items():
            if conn is not leaving and channel.usable and not conn.closed:
                return conn
        return None

    def open_on_channels(self, volatile_id: int) -> Open | None:
        """An open of this session made through another of its connections (multichannel)."""
        for conn in self.channels:
            op: Open | None = conn.opens.get(volatile_id)
            if op is not None:
                return op
        return None


@dataclass(eq=False)
class TreeConnect:
    tree_id: int
    session: Session
    share: ShareConfig
    fs: ShareFS | None  # None for IPC$
    maximal_access: int
    encrypt_data: bool = False

    @property
    def is_ipc(self) -> bool:
        return self.fs is None


@dataclass(slots=True, eq=False)
class HandleTimes:
    """What one handle owes its file's times (``gateway.smb.writetime``)."""

    user_set_write: bool = False
    user_set_change: bool = False
    due: bool = False  # a write through this handle has not moved the write time yet
    triggered: bool = False  # the first write's delayed update is scheduled or done
    left_mtime_ns: int = 0  # the mtime this handle's last write put back
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class Open:
    """One handle: the SMB2 FileId (persistent, volatile) of a tree connect."""

    persistent_id: int
    volatile_id: int
    tree: TreeConnect
    smb_name: str  # as the client named it, relative to the share root
    host_path: str
    is_dir: bool
    access: int
    share_access: int
    create_options: int
    file_key: str = ""
    bus_open_id: str = ""
    fd: int = -1
    pipe: DcerpcPipe | None = None
    oplock_level: int = 0
    lease_key: bytes | None = None
    lease_version: int = 0
    delete_on_close: bool = False
    position: int = 0
    mode: int = 0
    connection: ConnectionState | None = None  # the connection breaks go to; None: parked
    # Directory enumeration: a snapshot taken at the first QUERY_DIRECTORY
    # (or a RESTART/REOPEN) so a listing of a changing directory stays consistent.
    dir_entries: list[tuple[str, FileInfo]] | None = None
    dir_pattern: str | None = None
    dir_index: int = 0
    closed: bool = False
    notify: Watch | None = None
    durable: bool = False
    durable_timeout_ms: int = 0
    persistent: bool = False
    create_guid: bytes = b""
    app_instance: bytes = b""
    # FSCTL_LMR_REQUEST_RESILIENCY: kept across a disconnect like a durable handle.
    resilient: bool = False
    resilient_timeout_ms: int = 0
    # LOCK replay detection (MS-SMB2 3.3.5.14): bucket index -> sequence number.
    lock_sequences: dict[int, int] = field(default_factory=dict)
    # CREATE replay and ChannelSequence (gateway.smb.replay): the (ClientGuid,
    # CreateGuid) a replayed CREATE gets this open back by, while eligible; the
    # CreateAction it was answered with; the newest ChannelSequence seen.
    replay_key: tuple[bytes, bytes] | None = None
    create_action: int = 0
    channel_sequence: int = 0
    # Kept here because a parked durable open has no connection to ask.
    client_guid: bytes = b""
    lease_state: int = 0
    lease_epoch: int = 0
    # A named stream's handle: fd is the stream's, host_path its file's.
    stream: Stream | None = None
    # A previous version's handle (gateway.fs.snapshots): its @GMT token; read only.
    snapshot: str | None = None
    # FSCTL_SRV_REQUEST_RESUME_KEY (gateway.smb.handlers.copychunk); empty until asked for.
    resume_key: bytes = b""
    # Requests still using the handle after going async; CLOSE waits for them.
    busy: set[asyncio.Future[Any]] = field(default_factory=set)
    # A write-time update due through this handle (gateway.smb.writetime).
    times: HandleTimes | None = None

    @property
    def file_id(self) -> tuple[int, int]:
        return (self.persistent_id, self.volatile_id)

    @property
    def meta_target(self) -> str | int:
        """Where the file's times, descriptor and EAs are read and set: the
        descriptor, or the path (no descriptor; a stream's handle, whose
        descriptor is the stream's data and whose metadata is its file's)."""
        return self.fd if self.fd >= 0 and self.stream is None else self.host_path

    @contextlib.contextmanager
    def using(self) -> Iterator[None]:
        """Mark the handle busy for the running request (a CLOSE waits for it)."""
        task = asyncio.current_task()
        if task is None or task in self.busy:
            yield
            return
        self.busy.add(task)
        try:
            yield
        finally:
            self.busy.discard(task)

    def close_fd(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            finally:
                self.fd = -1
