"""Durable and resilient handles (MS-SMB2 3.3.5.9.6-3.3.5.9.12, 3.3.5.15.9).

A durable handle outlives its connection: when the transport drops, the
open keeps its bus registration (share mode, oplock or lease, byte-range
locks) for a while, so a client that reconnects gets the same handle back
and nobody else slipped in between. The node parks such opens in a
``DurableTable``; a reconnect request (DHnC/DH2C) takes them back. A break
aimed at a parked open cannot be delivered, so the open is closed instead
and the opener waiting for it proceeds at once (Samba does the same).

Durable opens are not parked here but left to the bus, which keeps them
disconnected (``oplock_bus.disconnected``) with what ``reclaim_data`` says of
them, when their connection drops or their node dies: a reconnect through any
node takes them over (``handlers.create``). The table keeps what the bus
cannot: resilient handles, stream handles, and durable ones while the bus is
unreachable. Persistent
handles (on continuously available shares) are kept whatever their caching,
and nobody else gets the file meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from oplock_bus.api import Leaving

from ..protocol.constants import Dialect, NtStatusError, OplockLevel, Status
from .replay import replay_bus_key
from .state import Open

log = logging.getLogger("smbgw.durable")

DHNQ, DH2Q, DHNC, DH2C = b"DHnQ", b"DH2Q", b"DHnC", b"DH2C"
LEASE_HANDLE_CACHING = 0x02
DH2_FLAG_PERSISTENT = 0x02
# Timeouts as Samba gives them: 60 s when the client leaves it to us,
# never more than 300 s (smbtorture smb2.durable-v2-open.create-blob).
DEFAULT_TIMEOUT_MS = 60_000
MAX_TIMEOUT_MS = 300_000

_DH2Q = struct.Struct("<II8s16s")  # timeout, flags, reserved, CreateGuid
_DH2C = struct.Struct("<QQ16sI")  # FileId, CreateGuid, flags


@dataclass(frozen=True)
class DurableAsk:
    """A create that asks for a durable handle."""

    version: int  # 1 = DHnQ, 2 = DH2Q
    timeout_ms: int = 0
    # A v1 handle counts as CreateGuid zero, so a DH2C naming it with a zero
    # guid reclaims it (smbtorture smb2.durable-open.reopen2-lease).
    create_guid: bytes = bytes(16)
    persistent: bool = False  # SMB2_DHANDLE_FLAG_PERSISTENT asked
    default_ms: int = DEFAULT_TIMEOUT_MS  # the node's durable_timeout

    def timeout(self) -> int:
        """The timeout granted, in ms."""
        if self.version == 1:
            return self.default_ms
        return min(self.timeout_ms or self.default_ms, MAX_TIMEOUT_MS)


@dataclass(frozen=True)
class Reclaim:
    """A create that asks for a disconnected durable handle back."""

    version: int  # 1 = DHnC, 2 = DH2C
    persistent_id: int
    create_guid: bytes = b""
    persistent: bool = False  # DH2C's SMB2_DHANDLE_FLAG_PERSISTENT
    volatile_id: int = 0  # the client's; kept where free (pike expects it)


def parse(
    contexts: dict[bytes, bytes], dialect: int, default_ms: int = DEFAULT_TIMEOUT_MS
) -> tuple[DurableAsk | None, Reclaim | None]:
    """The durable request in a create's contexts; contradictory sets are refused."""
    v2 = dialect >= Dialect.SMB3_0
    present = {n for n in (DHNQ, DH2Q, DHNC, DH2C) if n in contexts}
    if not v2:
        present -= {DH2Q, DH2C}
    if len(present) > 1:
        # A v1 ask beside a v1 reconnect is tolerated by Windows; any other
        # mix is a malformed request (MS-SMB2 3.3.5.9.6, 3.3.5.9.10).
        if present != {DHNQ, DHNC}:
            raise NtStatusError(Status.INVALID_PARAMETER, "conflicting durable contexts")
        present = {DHNC}
    if not present:
        return None, None
    name = present.pop()
    data = contexts[name]
    if name == DHNQ:
        if len(data) != 16:
            raise NtStatusError(Status.INVALID_PARAMETER, "bad DHnQ")
        return DurableAsk(1, default_ms=default_ms), None
    if name == DH2Q:
        if len(data) != _DH2Q.size:
            raise NtStatusError(Status.INVALID_PARAMETER, "bad DH2Q")
        timeout, flags, _r, guid = _DH2Q.unpack(data)
        return DurableAsk(2, timeout, guid, bool(flags & DH2_FLAG_PERSISTENT), default_ms), None
    if name == DHNC:
        if len(data) != 16:
            raise NtStatusError(Status.INVALID_PARAMETER, "bad DHnC")
        pid, vid = struct.unpack_from("<QQ", data)
        return None, Reclaim(1, pid, volatile_id=vid)
    if len(data) != _DH2C.size:
        raise NtStatusError(Status.INVALID_PARAMETER, "bad DH2C")
    pid, vid, guid, flags = _DH2C.unpack(data)
    return None, Reclaim(2, pid, guid, bool(flags & DH2_FLAG_PERSISTENT), vid)


def persistent(ask: DurableAsk | None, continuously_available: bool) -> bool:
    """Whether the handle asked for is persistent: only on a CA share (3.3.5.9.10)."""
    return ask is not None and ask.persistent and continuously_available


def grant(
    ask: DurableAsk | None, op: Open, lease_state: int, continuously_available: bool = False
) -> list[tuple[bytes, bytes]]:
    """Make ``op`` durable if its caching allows it; the response context, if any.

    Only a batch oplock or a handle lease makes a handle durable: without
    handle caching the client could not have kept the handle across a
    disconnect anyway (MS-SMB2 3.3.5.9.6). A persistent handle needs none.
    """
    if ask is None or op.is_dir:
        return []
    keep = persistent(ask, continuously_available)
    if keep or op.oplock_level == OplockLevel.BATCH:
        pass
    elif op.oplock_level != OplockLevel.LEASE or not lease_state & LEASE_HANDLE_CACHING:
        return []
    op.durable = True
    op.persistent = keep
    op.create_guid = ask.create_guid
    op.durable_timeout_ms = ask.timeout()
    if ask.version == 1:
        return [(DHNQ, bytes(8))]
    return granted_context(op)


def granted_context(op: Open) -> list[tuple[bytes, bytes]]:
    """The DH2Q response of a durable (v2) open."""
    flags = DH2_FLAG_PERSISTENT if op.persistent else 0
    return [(DH2Q, struct.pack("<II", op.durable_timeout_ms, flags))]


def reclaim_data(op: Open, ask: DurableAsk) -> dict[str, Any]:
    """What another node must know to hand ``op`` back to its client after
    this node died (MS-SMB2 3.3.5.9.7/12), as the bus keeps it: plain data."""
    session = op.tree.session
    return {
        "version": ask.version,
        "create_guid": ask.create_guid.hex(),
        "client_guid": op.client_guid.hex(),
        "user": session.username.lower(),
        "domain": session.domain.lower(),
        "share": op.tree.share.name.lower(),
        "name": op.smb_name,
        "access": op.access,
        "share_access": op.share_access,
        "options": op.create_options,
        "lease_key": op.lease_key.hex() if op.lease_key is not None else None,
        "lease_version": op.lease_version,
        "timeout_ms": ask.timeout(),
    }


def leaving(op: Open) -> Leaving:
    """What the bus must keep of ``op`` when its connection drops, beyond
    what it was opened with: its file position, its resiliency, its
    LockSequence array (MS-SMB2 3.3.5.14), and for a handle made resilient
    without being durable, all a reconnect checks."""
    handle: dict[str, Any] = {
        "position": op.position, "durable": op.durable,
        "persistent_id": op.persistent_id, "create_action": op.create_action,
    }  # fmt: skip
    if op.resilient:
        handle["resilient_ms"] = op.resilient_timeout_ms
    if not op.durable:
        handle |= reclaim_data(op, DurableAsk(1, default_ms=op.resilient_timeout_ms))
    return Leaving(
        timeout_ms=DurableTable.timeout_ms(op),
        handle=handle,
        resilient=op.resilient,
        durable_key=durable_key(op.persistent_id),
        replay_key=replay_bus_key(op.replay_key) if op.replay_key else "",
        lock_sequences=dict(op.lock_sequences),
    )


def new_persistent_id() -> int:
    """A FileId's persistent part, drawn at random: another node may take the
    open over, so the id must not collide with that node's own."""
    return secrets.randbits(63) or 1


def durable_key(persistent_id: int) -> str:
    """The bus's name for a durable open: its persistent FileId, unique
    cluster-wide because each node draws them at random."""
    return f"{persistent_id:016x}"


class DurableTable:
    """Opens whose connection is gone, waiting to be reclaimed or to expire."""

    def __init__(self, close: Callable[[Open], Coroutine[Any, Any, None]]) -> None:
        self._close = close
        self._parked: dict[int, Open] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._parked)

    def keeps(self, op: Open) -> bool:
        """Whether a dropped connection should park ``op`` rather than close it."""
        return (op.durable or op.resilient) and op.pipe is None

    @staticmethod
    def timeout_ms(op: Open) -> int:
        """How long ``op`` waits for its client once disconnected: a resiliency
        request replaces the durable timeout (MS-SMB2 3.3.5.15.9)."""
        return op.resilient_timeout_ms if op.resilient else op.durable_timeout_ms

    def park(self, op: Open) -> None:
        op.connection = None
        self._parked[op.persistent_id] = op
        timeout = self.timeout_ms(op) / 1000
        loop = asyncio.get_running_loop()
        self._timers[op.persistent_id] = loop.call_later(
            timeout, self._spawn_close, op.persistent_id, "expired"
        )
        log.debug("parked %s (%s) for %.0f s", op.bus_open_id, op.smb_name, timeout)

    def find(self, persistent_id: int) -> Open | None:
        return self._parked.get(persistent_id)

    def take(self, persistent_id: int) -> Open | None:
        """Hand a parked open back to a reconnecting client."""
        op = self._parked.pop(persistent_id, None)
        timer = self._timers.pop(persistent_id, None)
        if timer is not None:
            timer.cancel()
        return op

    def lease_holders(self, client_guid: bytes, lease_key: bytes) -> list[Open]:
        return [
            op
            for op in self._parked.values()
            if op.lease_key == lease_key and op.client_guid == client_guid
        ]

    def purge(self, op: Open, why: str) -> None:
        """Close a parked open without waiting (e.g. a break it cannot answer)."""
        if op.persistent_id in self._parked:
            self._spawn_close(op.persistent_id, why)

    def _spawn_close(self, persistent_id: int, why: str) -> None:
        op = self.take(persistent_id)
        if op is None:
            return
        log.debug("closing parked %s: %s", op.bus_open_id, why)
        task = asyncio.get_running_loop().create_task(self._close(op))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close_all(self) -> None:
        for pid in list(self._parked):
            self._spawn_close(pid, "node stopping")
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
