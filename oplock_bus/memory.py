"""The embedded default: one process, state in a dict, no Redis.

Documents are kept as JSON text so this backend stores exactly what a
shared store would, and nothing can alias live objects across calls.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterable

from .api import BreakHandler, BreakNotice, NodeId
from .coordinator import Coordinator
from .store import Doc, Store, Subscription

log = logging.getLogger("oplock_bus.memory")

SWEEP_INTERVAL = 1.0  # seconds


class _MemorySubscription(Subscription):
    def __init__(self, store: MemoryStore, channels: Iterable[str]) -> None:
        self._store = store
        self._channels = list(channels)
        self._event = asyncio.Event()
        for ch in self._channels:
            store._subscribers.setdefault(ch, set()).add(self)

    def _notify(self) -> None:
        self._event.set()

    async def wait(self, timeout: float | None) -> bool:
        if not self._event.is_set():
            try:
                await asyncio.wait_for(self._event.wait(), timeout)
            except TimeoutError:
                return False
        self._event.clear()
        return True

    def close(self) -> None:
        for ch in self._channels:
            subs = self._store._subscribers.get(ch)
            if subs is not None:
                subs.discard(self)
                if not subs:
                    del self._store._subscribers[ch]


class MemoryStore(Store):
    commits_without_yielding = True

    def __init__(self) -> None:
        self._docs: dict[str, tuple[str, str]] = {}
        self._tokens = itertools.count(1)
        self._subscribers: dict[str, set[_MemorySubscription]] = {}
        self._handlers: dict[NodeId, BreakHandler] = {}

    async def load(self, key: str) -> tuple[str | None, Doc | None]:
        return self._read(key)

    def peek(self, key: str) -> Doc | None:
        return self._read(key)[1]  # always current here

    def _read(self, key: str) -> tuple[str | None, Doc | None]:
        entry = self._docs.get(key)
        if entry is None:
            return None, None
        token, text = entry
        doc: Doc = json.loads(text)
        return token, doc

    async def compare_and_set(self, key: str, token: str | None, doc: Doc | None) -> bool:
        entry = self._docs.get(key)
        if (entry[0] if entry is not None else None) != token:
            return False
        if doc is None:
            self._docs.pop(key, None)
        else:
            self._docs[key] = (str(next(self._tokens)), json.dumps(doc))
        return True

    async def keys(self, prefix: str) -> list[str]:
        return sorted(k for k in self._docs if k.startswith(prefix))

    def subscribe(self, channels: Iterable[str]) -> Subscription:
        return _MemorySubscription(self, channels)

    async def publish(self, channels: Iterable[str]) -> None:
        for ch in channels:
            for sub in list(self._subscribers.get(ch, ())):
                sub._notify()

    def register_node(self, node_id: NodeId, handler: BreakHandler) -> None:
        self._handlers[node_id] = handler

    async def deliver(self, notice: BreakNotice) -> None:
        handler = self._handlers.get(notice.node_id)
        if handler is None:
            log.debug("break for unknown node %r dropped: %s", notice.node_id, notice)
            return
        # Called in the task of the request that caused the break, so the
        # node can tell that request is now waiting on a client (the
        # gateway sends its interim reply then). Notices about one open or
        # lease are causally ordered through the state, so no queue is needed.
        try:
            await handler(notice)
        except Exception:  # one faulty node must not fail another's request
            log.exception("break handler of node %s failed", notice.node_id)


class InProcessBus(Coordinator):
    """A lock bus living in this process: the single-node default."""

    def __init__(
        self,
        *,
        node_id: NodeId | None = None,
        break_timeout: float = 35.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(MemoryStore(), break_timeout=break_timeout, clock=clock)
        self.node_id = node_id
        self._sweeper: asyncio.Task[None] | None = None
        # node id -> probe name -> value (publish_probe): nodes sharing this
        # process, as in tests; they live as long as the bus.
        self._probes: dict[NodeId, dict[str, str]] = {}

    async def start(self) -> None:
        await super().start()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        await super().stop()

    async def publish_probe(self, node_id: NodeId, name: str, value: str) -> dict[NodeId, str]:
        self._probes.setdefault(node_id, {})[name] = value
        return {
            other: probes[name]
            for other, probes in self._probes.items()
            if other != node_id and name in probes
        }

    async def _sweep_loop(self) -> None:
        """Close disconnected opens nobody came back for (on Redis, the
        liveness watchers do it): an opener would close them anyway, but
        nothing else frees their records."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                await self.sweep_disconnected()
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("sweeping disconnected opens failed")
