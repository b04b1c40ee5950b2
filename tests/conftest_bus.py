"""Harness for the lock-bus contract tests: backends and simulated clients.

Imported by the bus test modules (not a pytest plugin, so it stays out of
the gateway's conftest). A Redis backend joins by adding a name to
``BACKENDS`` and a branch to ``make_test_bus``.
"""

from __future__ import annotations

import asyncio
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

T = TypeVar("T")

BACKENDS = ["memory"]
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


def make_test_bus(backend: str, break_timeout: float = BREAK_TIMEOUT) -> LockBus:
    if backend == "memory":
        return make_bus("memory://", node_id="test", break_timeout=break_timeout)
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
        )
        return await self.bus.open(req)

    def oid(self, handle: str) -> str:
        return f"{self.node}/{handle}"


async def settle() -> None:
    """Let queued break deliveries and client answers run."""
    for _ in range(10):
        await asyncio.sleep(0)


async def started(backend: str, break_timeout: float = BREAK_TIMEOUT) -> LockBus:
    bus = make_test_bus(backend, break_timeout)
    await bus.start()
    return bus
