"""Harness for the lock-bus contract tests: backends and simulated clients.

Imported by the bus test modules (not a pytest plugin, so it stays out of
the gateway's conftest). Redis backends run on real servers from
``tests/redis_fixtures.py``; each bus gets a fresh key namespace, and
delivers even its own nodes' breaks through Redis, so the suite exercises
the cross-node path.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from oplock_bus import make_bus
from oplock_bus.api import (
    OPLOCK_NONE,
    BreakNotice,
    Disposition,
    LeaseKey,
    LeaseRequest,
    LockBus,
    OpenRequest,
    OpenResult,
)
from oplock_bus.redis_bus import RedisBus

from .redis_fixtures import isolated, shared_url

T = TypeVar("T")

BACKENDS = ["memory", "redis", "redis-cluster", "redis-sentinel"]
REDIS_BACKENDS = BACKENDS[1:]
# Buses whose break deliveries settle() must wait for.
_redis_buses: weakref.WeakSet[RedisBus] = weakref.WeakSet()
# Short, so "never acks" tests stay fast, yet long enough that a prompt ack
# always lands first.
BREAK_TIMEOUT = 0.25

FILE_READ_DATA = 0x1
FILE_WRITE_DATA = 0x2
FILE_READ_ATTRIBUTES = 0x80
DELETE = 0x10000
RW = FILE_READ_DATA | FILE_WRITE_DATA
SHARE_NONE = 0
SHARE_RW = 0x1 | 0x2
SHARE_ALL = 0x7


def make_test_bus(
    backend: str, break_timeout: float = BREAK_TIMEOUT, *, url: str | None = None
) -> LockBus:
    """A bus on an empty lock space; ``url`` joins an existing one instead."""
    if backend == "memory":
        return make_bus("memory://", node_id="test", break_timeout=break_timeout)
    if backend in REDIS_BACKENDS:
        bus = make_bus(
            url or isolated(shared_url(backend)),
            node_id="test",
            break_timeout=break_timeout,
            local_delivery=False,
        )
        assert isinstance(bus, RedisBus)
        _redis_buses.add(bus)
        return bus
    raise ValueError(backend)


def run(coro: Awaitable[T], timeout: float = 10.0) -> T:
    """Run one async test body (pytest-asyncio is not a dependency)."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


Policy = Literal["ack", "ignore", "close"]


@dataclass
class Client:
    """A client behind one node that caches like the Windows redirector.

    ``policy``: "ack" acknowledges every break that wants it (to the offered
    level), "ignore" never answers (a hung or dead client), "close" closes
    the handle instead (smbtorture's torture_oplock_handler_close).
    """

    bus: LockBus
    node: str
    policy: Policy = "ack"
    client_guid: bytes = b""
    notices: list[BreakNotice] = field(default_factory=list)
    acks: list[int] = field(default_factory=list)  # statuses of the acks sent
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not self.client_guid:
            self.client_guid = self.node.encode().ljust(16, b"\0")[:16]
        self.bus.register_node(self.node, self._on_break)

    async def _on_break(self, notice: BreakNotice) -> None:
        self.notices.append(notice)
        if not notice.ack_required or self.policy == "ignore":
            return
        # Answer later, like a real client: the handler must return at once.
        task = asyncio.create_task(self._answer(notice))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, notice: BreakNotice) -> None:
        await asyncio.sleep(0)
        if self.policy == "close" and notice.open_id is not None:
            await self.bus.close(notice.file, notice.open_id)
            return
        if notice.lease is not None:
            result = await self.bus.ack_lease(notice.lease, notice.new_level)
        else:
            assert notice.open_id is not None
            result = await self.bus.ack_oplock(notice.file, notice.open_id, notice.new_level)
        self.acks.append(result.status)

    def lease(self, key: int, state: int, *, version: int = 1, epoch: int = 0) -> LeaseRequest:
        return LeaseRequest(
            LeaseKey(self.client_guid, key.to_bytes(16, "little")), state, version, epoch
        )

    async def open(
        self,
        handle: str,
        file: str = "vol:1",
        *,
        access: int = RW,
        share: int = SHARE_RW,
        oplock: int = OPLOCK_NONE,
        lease: LeaseRequest | None = None,
        disposition: Disposition = Disposition.OPEN,
        durable_ms: int = 0,
        persistent: bool = False,
    ) -> OpenResult:
        req = OpenRequest(
            open_id=f"{self.node}/{handle}",
            node_id=self.node,
            file=file,
            access=access,
            share=share,
            oplock=0xFF if lease is not None else oplock,
            lease=lease,
            disposition=disposition,
            durable_ms=durable_ms,
            persistent=persistent,
            durable_key=handle if durable_ms else "",
            reclaim={"client": self.node} if durable_ms else None,
        )
        return await self.bus.open(req)

    def oid(self, handle: str) -> str:
        return f"{self.node}/{handle}"


async def settle() -> None:
    """Let queued break deliveries and client answers run."""
    for _ in range(10):
        await asyncio.sleep(0)
    # Only this event loop's buses: a failed test may leave its buses
    # unstopped, bound to a loop that no longer runs.
    loop = asyncio.get_running_loop()
    buses = [b for b in _redis_buses if b.redis_store.running and _loop_of(b) is loop]
    if buses:
        await asyncio.gather(*(b.redis_store.sync() for b in buses))
        for _ in range(10):
            await asyncio.sleep(0)


def _loop_of(bus: RedisBus) -> asyncio.AbstractEventLoop | None:
    hub = bus.redis_store.hub
    task = hub._task if hub is not None else None
    return task.get_loop() if task is not None else None


async def started(backend: str, break_timeout: float = BREAK_TIMEOUT) -> LockBus:
    bus = make_test_bus(backend, break_timeout)
    await bus.start()
    return bus
