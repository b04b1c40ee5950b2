"""What one node remembers about its clients: sessions, tree connects, opens."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import ShareConfig
    from .rpc.srvsvc import SrvsvcPipe
    from .vfs import ShareFS


@dataclass(eq=False)
class Session:
    session_id: int
    dialect: int
    state: str = "in_progress"  # in_progress | valid | expired
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
    authenticator: Any = None
    trees: dict[int, TreeConnect] = field(default_factory=dict)
    _tree_ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def next_tree_id(self) -> int:
        return next(self._tree_ids)


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
    pipe: SrvsvcPipe | None = None
    oplock_level: int = 0
    lease_key: bytes | None = None
    lease_version: int = 0
    delete_on_close: bool = False
    position: int = 0
    mode: int = 0
    connection: Any = None  # the connection this handle was opened on (for breaks)
    # Directory enumeration: a snapshot taken at the first QUERY_DIRECTORY
    # (or a RESTART/REOPEN) so a listing of a changing directory stays consistent.
    dir_entries: list[Any] | None = None
    dir_pattern: str | None = None
    dir_index: int = 0
    closed: bool = False
    notify: Any = None
    durable: bool = False
    durable_timeout_ms: int = 0
    create_guid: bytes = b""
    app_instance: bytes = b""
    # FSCTL_LMR_REQUEST_RESILIENCY: kept across a disconnect like a durable handle.
    resilient: bool = False
    resilient_timeout_ms: int = 0
    # LOCK replay detection (MS-SMB2 3.3.5.14): bucket index -> sequence number.
    lock_sequences: dict[int, int] = field(default_factory=dict)
    # Kept here because a parked durable open has no connection to ask.
    client_guid: bytes = b""
    lease_state: int = 0
    lease_epoch: int = 0
    # gateway.writetime.HandleTimes: a write-time update due through this handle.
    times: Any = None

    @property
    def file_id(self) -> tuple[int, int]:
        return (self.persistent_id, self.volatile_id)

    def close_fd(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            finally:
                self.fd = -1
