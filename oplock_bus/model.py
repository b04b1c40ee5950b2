"""Per-file lock state as plain data.

Everything here round-trips through JSON-able dicts (``to_dict``/``from_dict``)
because a shared store (Redis) keeps it; the in-process store does the same
so that both backends exercise identical code. Bytes (lease keys, client
GUIDs) travel as hex strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .api import (
    OPLOCK_NONE,
    Disposition,
    LeaseKey,
    LeaseRequest,
    NodeId,
    OpenId,
    OpenRequest,
    OpenResult,
)


def lease_id(key: LeaseKey) -> str:
    """The cluster-wide name of a lease: ClientGUID plus LeaseKey."""
    return str(key)


@dataclass
class OpenEntry:
    open_id: OpenId
    node_id: NodeId
    access: int
    share: int
    seq: int  # creation order within the file; picks the node a lease break goes to
    oplock: int = OPLOCK_NONE  # granted level; OPLOCK_LEASE when the open uses a lease
    lease_id: str | None = None
    is_directory: bool = False
    # An oplock break waiting for its acknowledgement (MS-SMB2 Open.OplockState).
    breaking: bool = False
    break_to: int = OPLOCK_NONE  # the level the notice offered
    break_to_required: int = OPLOCK_NONE  # narrowed by breaks arriving meanwhile
    break_deadline: float = 0.0
    # The last break needed no ack (Level II to none): an ack now is a
    # protocol error rather than a wrong state (smbtorture levelii500).
    unacked_break: bool = False
    owner_data: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0  # the owning node's registration epoch (0: no liveness)
    # Set when another node's transaction granted this open while its opener
    # waited (rules.admit_waiting): the OpenResult, for the opener to read.
    result: list[int] | None = None
    # A durable open (see OpenRequest.durable_ms) outlives its node: it is then
    # disconnected (node_id "", the wall time here) until reclaimed or expired.
    durable_ms: int = 0
    persistent: bool = False
    resilient: bool = False  # set when its connection dropped (see api.Leaving)
    replay_key: str = ""  # likewise
    durable_key: str = ""
    reclaim: dict[str, Any] | None = None
    disconnected: float = 0.0
    # Its LockSequence array (MS-SMB2 3.3.5.14), index (as text: JSON keys)
    # -> number, for a durable or resilient open (oplock_bus.disconnected).
    lock_sequences: dict[str, int] = field(default_factory=dict)

    def expires(self) -> float:
        """When a disconnected open is closed if nobody reclaimed it."""
        return self.disconnected + self.durable_ms / 1000


@dataclass
class LeaseEntry:
    lease_id: str
    client_guid: str  # hex
    key: str  # hex
    state: int
    epoch: int
    version: int
    parent_key: str | None = None  # hex
    breaking: bool = False
    break_to: int = 0  # the state the last notice offered (acks must be a subset)
    break_to_required: int = 0  # where the lease must end up; narrows meanwhile
    break_deadline: float = 0.0
    opens: list[OpenId] = field(default_factory=list)

    def lease_key(self) -> LeaseKey:
        return LeaseKey(bytes.fromhex(self.client_guid), bytes.fromhex(self.key))


@dataclass
class ByteRangeLock:
    open_id: OpenId
    offset: int
    length: int
    exclusive: bool


@dataclass
class RangeSpec:
    offset: int
    length: int
    exclusive: bool


@dataclass
class LockWaiter:
    """A blocking lock request queued FIFO; ``status`` is set once it is decided."""

    waiter_id: str
    open_id: OpenId
    ranges: list[RangeSpec]
    status: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LockWaiter:
        return cls(
            waiter_id=d["waiter_id"],
            open_id=d["open_id"],
            ranges=[RangeSpec(**r) for r in d["ranges"]],
            status=d.get("status"),
        )


@dataclass
class FileState:
    file: str
    version: int = 0  # bumped on every committed change
    next_seq: int = 0
    delete_pending: bool = False
    opens: dict[OpenId, OpenEntry] = field(default_factory=dict)
    leases: dict[str, LeaseEntry] = field(default_factory=dict)
    locks: list[ByteRangeLock] = field(default_factory=list)
    waiters: list[LockWaiter] = field(default_factory=list)
    # Opens waiting for breaks to be acknowledged, as their requests in plain
    # form (request_to_dict), in arrival order.
    pending: dict[OpenId, dict[str, Any]] = field(default_factory=dict)

    def clone(self) -> FileState:
        # A round trip through the plain form: much cheaper than deepcopy.
        return FileState.from_dict(self.to_dict())

    def is_idle(self) -> bool:
        """Nothing left worth storing: the record can be deleted."""
        return (
            not self.opens
            and not self.locks
            and not self.waiters
            and not self.leases
            and not self.pending
        )

    def to_dict(self) -> dict[str, Any]:
        # Written out rather than dataclasses.asdict: asdict deep-copies every
        # field, and this runs on every transaction (it was the top of the
        # open path's profile).
        return {
            "file": self.file,
            "version": self.version,
            "next_seq": self.next_seq,
            "delete_pending": self.delete_pending,
            "opens": {
                k: {
                    **vars(o),
                    "owner_data": dict(o.owner_data),
                    "lock_sequences": dict(o.lock_sequences),
                }
                for k, o in self.opens.items()
            },
            "leases": {k: {**vars(x), "opens": list(x.opens)} for k, x in self.leases.items()},
            "locks": [dict(vars(x)) for x in self.locks],
            "waiters": [
                {
                    "waiter_id": w.waiter_id,
                    "open_id": w.open_id,
                    "ranges": [dict(vars(r)) for r in w.ranges],
                    "status": w.status,
                }
                for w in self.waiters
            ],
            # Requests are never changed in place: sharing them is safe.
            "pending": dict(self.pending),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FileState:
        return cls(
            file=d["file"],
            version=d.get("version", 0),
            next_seq=d.get("next_seq", 0),
            delete_pending=d.get("delete_pending", False),
            opens={k: OpenEntry(**v) for k, v in d.get("opens", {}).items()},
            leases={k: LeaseEntry(**v) for k, v in d.get("leases", {}).items()},
            locks=[ByteRangeLock(**x) for x in d.get("locks", [])],
            waiters=[LockWaiter.from_dict(x) for x in d.get("waiters", [])],
            pending=dict(d.get("pending", {})),
        )


def request_to_dict(req: OpenRequest) -> dict[str, Any]:
    """An open request in plain form, as a waiting open is stored."""
    d = dict(vars(req))
    d["disposition"] = int(req.disposition)
    if req.lease is not None:
        lease = req.lease
        d["lease"] = {
            "client_guid": lease.key.client_guid.hex(),
            "key": lease.key.key.hex(),
            "state": lease.state,
            "version": lease.version,
            "epoch": lease.epoch,
            "parent_key": lease.parent_key.hex() if lease.parent_key is not None else None,
        }
    return d


def request_from_dict(d: dict[str, Any]) -> OpenRequest:
    fields = dict(d)
    fields["disposition"] = Disposition(d["disposition"])
    lease = d.get("lease")
    if lease is not None:
        fields["lease"] = LeaseRequest(
            key=LeaseKey(bytes.fromhex(lease["client_guid"]), bytes.fromhex(lease["key"])),
            state=lease["state"],
            version=lease["version"],
            epoch=lease["epoch"],
            parent_key=bytes.fromhex(lease["parent_key"]) if lease["parent_key"] else None,
        )
    return OpenRequest(**fields)


def result_to_list(r: OpenResult) -> list[int]:
    return [r.status, r.oplock, r.lease_state, r.lease_epoch, r.lease_flags, r.lease_version]


def result_from_list(values: list[int]) -> OpenResult:
    return OpenResult(*values)
