"""The bus's public contract: what a gateway node asks and what it is told.

The bus knows nothing of the SMB wire. It speaks of files (a cluster-wide
identity), opens (one per handle, owned by one node), caching grants (oplock
levels and lease states, with the numeric values MS-SMB2 uses, because those
are also the natural encoding of the MS-FSA rules) and byte-range locks.

Every backend (in-process, Redis) implements :class:`LockBus`; the decisions
themselves come from one rules engine (``oplock_bus.rules``) shared by all.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

# A file's cluster-wide identity: "<volume-id>:<inode>" (plus ":<stream>" for a
# named stream). Never a path: paths change on rename.
FileKey = str
# An open's cluster-wide identity: "<node-id>/<handle>"; unique while it lives.
OpenId = str
NodeId = str

# Oplock levels (MS-SMB2 2.2.13).
OPLOCK_NONE = 0x00
OPLOCK_II = 0x01
OPLOCK_EXCLUSIVE = 0x08
OPLOCK_BATCH = 0x09
OPLOCK_LEASE = 0xFF

# Lease state bits (MS-SMB2 2.2.13.2.8).
LEASE_NONE = 0x0
LEASE_READ = 0x1
LEASE_HANDLE = 0x2
LEASE_WRITE = 0x4

# Status codes the bus returns (NTSTATUS values, MS-ERREF).
STATUS_SUCCESS = 0x00000000
STATUS_SHARING_VIOLATION = 0xC0000043
STATUS_DELETE_PENDING = 0xC0000056
STATUS_LOCK_NOT_GRANTED = 0xC0000055
STATUS_FILE_LOCK_CONFLICT = 0xC0000054
STATUS_RANGE_NOT_LOCKED = 0xC000007E
STATUS_INVALID_PARAMETER = 0xC000000D
STATUS_INVALID_DEVICE_STATE = 0xC0000184
STATUS_INVALID_OPLOCK_PROTOCOL = 0xC00000E3
STATUS_OBJECT_NAME_NOT_FOUND = 0xC0000034
STATUS_CANCELLED = 0xC0000120
STATUS_BUS_UNAVAILABLE = 0xC00000E5  # STATUS_INTERNAL_ERROR: the bus cannot be reached
# Added: MS-SMB2 3.3.5.22.2 answers a lease ack for a lease not breaking with
# STATUS_UNSUCCESSFUL and an ack outside the break-to state with
# STATUS_REQUEST_NOT_ACCEPTED; an ack or lock on an open the bus does not know
# gets STATUS_FILE_CLOSED; MS-FSA 2.1.5.8 rejects a wrapping range.
STATUS_UNSUCCESSFUL = 0xC0000001
STATUS_REQUEST_NOT_ACCEPTED = 0xC00000D0
STATUS_FILE_CLOSED = 0xC0000128
STATUS_INVALID_LOCK_RANGE = 0xC00001A1
# Added: an open that would break, or conflict with, a disconnected persistent
# open waits for nobody: it is refused at once (MS-SMB2 3.3.5.9).
STATUS_FILE_NOT_AVAILABLE = 0xC0000467

class BusUnavailable(RuntimeError):
    """The bus cannot decide right now: Redis is unreachable, or this node's
    registration lapsed and it is re-registering under a new epoch.

    Raised by :meth:`LockBus.open` (and any other call that needs the shared
    state) instead of granting anything. The gateway answers the request with
    ``status`` (STATUS_INTERNAL_ERROR, which any handler exception already
    becomes); the client may retry, and succeeds once the bus is back.
    """

    status = STATUS_BUS_UNAVAILABLE


class GenerationChanged(BusUnavailable):
    """A write refused because the bus generation is not the writer's: Redis
    lost its state or changed master, and the nodes are (or must start)
    re-asserting what they hold (``oplock_bus.recovery``). Nothing was
    written; the same transaction may run again once the recovery is over."""


class NodeIdInUse(RuntimeError):
    """Another live process is registered under this node id.

    Two processes under one id would each take the other's heartbeat for a
    lapse of their own and fence themselves over and over: the second one
    must not start. ``address`` is what the other one registered with.
    """

    def __init__(self, node_id: NodeId, address: str) -> None:
        super().__init__(f"node id {node_id} is in use by a live node at {address}")
        self.node_id = node_id
        self.address = address


# Lease flags in the create response (MS-SMB2 2.2.14.2.10).
LEASE_FLAG_BREAK_IN_PROGRESS = 0x02


@dataclass(frozen=True)
class LeaseKey:
    """A lease belongs to (ClientGUID, LeaseKey) cluster-wide."""

    client_guid: bytes
    key: bytes

    def __str__(self) -> str:
        return f"{self.client_guid.hex()}:{self.key.hex()}"


@dataclass(frozen=True)
class LeaseRequest:
    key: LeaseKey
    state: int  # requested R/H/W bits
    version: int = 1  # 1 = RqLs v1, 2 = RqLs v2
    epoch: int = 0  # v2: the epoch the client sent
    parent_key: bytes | None = None  # v2: parent directory lease key


class Disposition(enum.IntEnum):
    """The subset of the CREATE disposition that changes break rules."""

    OPEN = 0  # open (or create) without truncation
    OVERWRITE = 1  # OVERWRITE, OVERWRITE_IF or SUPERSEDE of an existing file


@dataclass(frozen=True)
class OpenRequest:
    open_id: OpenId
    node_id: NodeId
    file: FileKey
    access: int  # granted access mask (MS-SMB2 2.2.13.1)
    share: int  # share access (READ 1, WRITE 2, DELETE 4)
    oplock: int = OPLOCK_NONE  # requested oplock level; OPLOCK_LEASE with lease
    lease: LeaseRequest | None = None
    disposition: Disposition = Disposition.OPEN
    is_directory: bool = False
    # Opaque data the owning node wants back in break notices (e.g. its
    # connection id); the bus stores and returns it, never interprets it.
    owner_data: dict[str, Any] = field(default_factory=dict)
    # Added: the file's size when known. Byte-range locks starting at or past
    # the end of the file do not stop read/handle caching (Samba's
    # file_has_brlocks; smbtorture smb2.lease.lock2). None: every lock counts.
    file_size: int | None = None
    # Added: this open created the file. An attribute-only open may then get
    # an oplock (Samba open.c: only stat opens of existing files get none;
    # smbtorture smb2.oplock.batch9).
    created: bool = False
    # Added: store the open in the file's record even if it conflicts with
    # nothing (see rules.needs_record). A stream's companion open on its base
    # file sets it: while it lives, the base's delete-pending state stays.
    holds_record: bool = False
    # Added: keep this open across its node's death (a durable or persistent
    # handle). The bus makes it durable if it is persistent or gets handle
    # caching (a Batch oplock, an H lease); when its node dies it stays
    # registered, disconnected, for ``durable_ms``, and any node may take it
    # over (``reconnect``) under ``durable_key``. ``reclaim`` is opaque data
    # the taking node checks (who may reclaim it, and how to reopen it).
    durable_ms: int = 0
    persistent: bool = False
    durable_key: str = ""
    reclaim: dict[str, Any] | None = None
    # Set by the bus, not the gateway: the registration epoch of the owning
    # node, stored with the open so that the cleanup of a lapsed
    # registration never touches opens made under a newer one.
    epoch: int = 0


@dataclass(frozen=True)
class OpenResult:
    status: int
    oplock: int = OPLOCK_NONE  # granted level (OPLOCK_LEASE when a lease was granted)
    lease_state: int = LEASE_NONE
    lease_epoch: int = 0
    lease_flags: int = 0  # SMB2_LEASE_FLAG_BREAK_IN_PROGRESS 0x02 etc.
    # Added: the lease's own version (1 or 2), which decides the create
    # response context, whatever version this request used (smbtorture
    # smb2.lease.v2_epoch2/v2_epoch3).
    lease_version: int = 0


@dataclass(frozen=True)
class BreakNotice:
    """What the owning node must tell its client. Exactly one of open_id/lease is set."""

    file: FileKey
    node_id: NodeId
    open_id: OpenId | None  # oplock break of this open
    lease: LeaseKey | None  # lease break of this lease
    new_level: int  # oplock: level to break to; lease: the new lease state
    current_state: int = LEASE_NONE  # lease: the state being broken
    epoch: int = 0  # lease v2: the new epoch
    version: int = 1  # lease version
    ack_required: bool = False
    owner_data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AckResult:
    status: int
    level: int = OPLOCK_NONE  # oplock: the level now held; lease: the state now held
    epoch: int = 0


@dataclass(frozen=True)
class Leaving:
    """What a node knows of a durable or resilient open whose client's
    connection dropped, beyond what the open was made with."""

    timeout_ms: int | None = None  # replaces the open's (a resiliency request)
    handle: dict[str, Any] | None = None  # joins its reclaim data (file position...)
    # Kept whatever its caching, and a break it cannot answer lowers its
    # caching instead of closing it (MS-SMB2 3.3.5.15.9, as Windows does).
    resilient: bool = False
    durable_key: str = ""  # for an open made without one (resilient only)
    # Names the create that made it, so that a replay of that create finds
    # it (``find_replayable``); opaque to the bus.
    replay_key: str = ""
    # Its LockSequence array as the node knows it (index -> number): replaces
    # the bus's copy, which LOCKs through that node kept current already.
    lock_sequences: dict[int, int] | None = None


# A LOCK request's LockSequence (MS-SMB2 3.3.5.14): (index 1-64, number 0-15).
# The bus keeps each durable or resilient open's array with the open, so a
# LOCK replayed after a reconnect through any node, even after its node died,
# is recognised and not applied twice; opaque to the rules otherwise.
LockSequence = tuple[int, int]


@dataclass(frozen=True)
class DisconnectedOpen:
    """A disconnected durable open, as a node taking it over sees it."""

    file: FileKey
    open_id: OpenId
    persistent: bool
    reclaim: dict[str, Any]
    oplock: int  # the level still held (OPLOCK_LEASE with a lease)
    lease_state: int = LEASE_NONE
    lease_epoch: int = 0
    lease_version: int = 0
    lock_sequences: dict[int, int] = field(default_factory=dict)  # index -> number


@dataclass(frozen=True)
class LockRange:
    offset: int
    length: int
    exclusive: bool


class Operation(enum.Enum):
    """Operations on an open file that break other opens' caching (MS-FSA 2.1.4.12)."""

    WRITE = "write"  # also: byte-range lock, set end-of-file, set allocation
    LOCK = "lock"
    SET_SIZE = "set_size"
    RENAME = "rename"  # breaks handle caching of other opens
    DELETE = "delete"  # set disposition / delete-on-close: breaks handle caching


BreakHandler = Callable[[BreakNotice], Awaitable[None]]
# Receives another node's broadcast payload (plain JSON-able data).
BroadcastHandler = Callable[[dict[str, Any]], None]


FenceHandler = Callable[[NodeId], Awaitable[None]]
LostHandler = Callable[[NodeId, list[tuple[FileKey, OpenId]]], Awaitable[None]]


class LockBus(abc.ABC):
    """One lock space. Implementations differ only in where the state lives."""

    # Awaited with a node id when the bus can no longer vouch for that node (no
    # heartbeat for most of its TTL, or its registration lapsed): the other
    # nodes are about to release its grants, so its clients must stop caching
    # under them. A bus no node can drop out of (in-process) never calls it.
    fence_handler: FenceHandler | None = None
    # Called after a bus recovery (Redis lost its state) with opens of a
    # node of this process that conflicted with what other nodes re-asserted
    # and were given up: their clients must not go on using them.
    lost_handler: LostHandler | None = None
    # Whether other processes share this lock space (Redis), so that what
    # this node sees of its volumes must agree with what they see.
    shared = False

    def vouches(self, node_id: NodeId) -> bool:
        """Whether ``node_id``'s grants are still its own right now.

        False once the node went most of its TTL without a confirmed heartbeat
        (a process frozen, a Redis out of reach): the other nodes may have
        released what it held, so it must not act on any of it, not even a
        request it had already read. Cheap (no I/O): callers ask right before
        they touch the volume. A bus no node can drop out of always vouches.
        """
        return True

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    def register_node(self, node_id: NodeId, handler: BreakHandler) -> None:
        """Declare a node living on this bus; its break notices go to ``handler``.

        The handler sends the break to the client and returns at once; the
        acknowledgement arrives later through :meth:`ack_oplock`/:meth:`ack_lease`.
        """

    @abc.abstractmethod
    async def open(self, req: OpenRequest) -> OpenResult:
        """Check share modes, break conflicting caching and wait for it, grant.

        On success the open is registered. Waits (without holding any lock)
        for acknowledgements or the break timeout.
        """

    @abc.abstractmethod
    async def close(self, file: FileKey, open_id: OpenId) -> None:
        """Forget an open: its locks go (waking waiters), a pending break ends."""

    @abc.abstractmethod
    async def ack_oplock(self, file: FileKey, open_id: OpenId, level: int) -> AckResult: ...

    @abc.abstractmethod
    async def ack_lease(self, key: LeaseKey, state: int) -> AckResult: ...

    @abc.abstractmethod
    async def lease_file(self, key: LeaseKey) -> FileKey | None:
        """The file a lease key is bound to, if any."""

    @abc.abstractmethod
    async def break_for(self, file: FileKey, open_id: OpenId, op: Operation) -> None:
        """Break other opens' caching before ``op`` proceeds (waits for acks if needed)."""

    @abc.abstractmethod
    async def lock(
        self,
        file: FileKey,
        open_id: OpenId,
        ranges: list[LockRange],
        *,
        wait: bool,
        sequence: LockSequence | None = None,
    ) -> int:
        """Take all ranges or none; with ``wait`` block until granted (cancellable).

        ``sequence``: the request's LockSequence, recorded with the open in
        the same transaction (valid once granted, forgotten if refused)."""

    @abc.abstractmethod
    async def unlock(
        self,
        file: FileKey,
        open_id: OpenId,
        ranges: list[LockRange],
        sequence: LockSequence | None = None,
    ) -> int: ...

    @abc.abstractmethod
    async def check_io(
        self, file: FileKey, open_id: OpenId, offset: int, length: int, write: bool
    ) -> bool:
        """True if a read/write of the range does not conflict with others' locks."""

    @abc.abstractmethod
    async def set_delete_pending(self, file: FileKey, pending: bool) -> None: ...

    @abc.abstractmethod
    async def snapshot(self) -> dict[str, Any]:
        """The whole lock space as plain data (for ``smbgw status``)."""

    # -- durable opens outliving their connection or node ------------------------------

    async def disconnect(
        self, file: FileKey, open_id: OpenId, leaving: Leaving | None = None
    ) -> bool:
        """Its client's connection dropped: keep durable or resilient
        ``open_id`` (share mode, caching, locks), disconnected, as ``leaving``
        says, for a reconnect through any node; or close it if it may not be
        kept (MS-SMB2 3.3.7.1). Whether it was kept."""
        raise NotImplementedError

    async def find_disconnected(self, durable_key: str) -> DisconnectedOpen | None:
        """The durable open left behind, by its connection or its dead node,
        under ``durable_key``."""
        return None

    async def find_replayable(self, replay_key: str) -> DisconnectedOpen | None:
        """The disconnected open its connection left with ``replay_key``."""
        return None

    async def find_connected(self, file: FileKey, durable_key: str) -> OpenId | None:
        """The durable open ``durable_key`` of ``file`` while it is still
        connected: its node has not handed it over yet (its connection's drop
        not yet seen, or its death not yet declared)."""
        return None

    async def reconnect(
        self, found: DisconnectedOpen, open_id: OpenId, node_id: NodeId
    ) -> DisconnectedOpen | None:
        """Make ``found`` ``node_id``'s open ``open_id``, with its share mode,
        caching and byte-range locks; None if it is gone or taken meanwhile."""
        return None

    # -- broadcasts: small best-effort messages to the other nodes -----------------
    # For what is not lock state but must still cross nodes (e.g. the
    # gateway's directory-change events). One node alone has nobody to tell,
    # so these are no-ops unless a backend shares the bus between nodes.

    async def broadcast(self, topic: str, payload: dict[str, Any]) -> None:
        """Send ``payload`` to every other node listening on ``topic``; never to itself."""
        return None

    def on_broadcast(self, topic: str, handler: BroadcastHandler) -> None:
        """Call ``handler`` with each payload another node broadcasts on ``topic``."""
        return None

    # -- joining: one id per live node, and views the nodes must share -------------

    async def joined(self, node_id: NodeId) -> None:
        """Return once ``node_id`` (declared with :meth:`register_node`, the bus
        started) is registered where the other nodes see it. Raises
        :class:`NodeIdInUse` if another live node holds the id, BusUnavailable
        if the registration does not complete in time. A bus no other process
        shares has nobody to register with."""
        return None

    async def publish_probe(self, node_id: NodeId, name: str, value: str) -> dict[NodeId, str]:
        """Enter ``node_id``'s ``value`` under ``name``, for as long as the node
        lives, and return what the other live nodes entered under ``name``.

        Opaque to the bus: the gateway uses it to check that every node sees a
        share's volume the same way. Entries of dead or stopped nodes do not
        count, so a changed setting is not held against the nodes that come
        after them. Call it after :meth:`joined`: two nodes entering different
        values at the same time, at least one of them sees the other's.
        """
        return {}
