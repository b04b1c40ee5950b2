"""``RedisBus``: the coordinator on a Redis store, with node liveness."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from .api import (
    STATUS_SUCCESS,
    BreakHandler,
    BroadcastHandler,
    BusUnavailable,
    DisconnectedOpen,
    FileKey,
    NodeId,
    OpenId,
    OpenRequest,
    OpenResult,
)
from .coordinator import Coordinator
from .liveness import DEFAULT_TTL, Liveness
from .recovery import Recovery
from .redis_store import RedisStore
from .redis_url import RedisTarget

log = logging.getLogger("oplock_bus.redis")


class RedisBus(Coordinator):
    """One lock space shared by every node on the same Redis (and namespace);
    calls ``fence_handler`` (see ``LockBus``) when a node of this process lapses."""

    shared = True

    def __init__(
        self,
        target: RedisTarget,
        *,
        node_id: NodeId | None = None,
        break_timeout: float = 35.0,
        node_ttl: float = DEFAULT_TTL,
        node_address: str | None = None,
        local_delivery: bool = True,
        clock: Callable[[], float] = time.time,
        takeover: bool = False,
    ) -> None:
        self.redis_store = RedisStore(target, local_delivery=local_delivery)
        super().__init__(self.redis_store, break_timeout=break_timeout, clock=clock)
        self.node_id = node_id
        self.liveness = Liveness(
            self.redis_store,
            ttl=node_ttl,
            address=node_address,
            release=self.drop_node,
            on_fenced=self._fenced,
            sweep=self.sweep_disconnected,
            takeover=takeover,
        )
        liveness = self.liveness
        self.recovery = Recovery(
            self.redis_store,
            self,
            ttl=node_ttl,
            nodes=lambda: [n for n, reg in liveness.nodes.items() if reg.refused is None],
            known_alive=lambda: liveness.known_alive,
            reregister=liveness.reregister,
            vouches=lambda: any(liveness.vouches(n) for n in liveness.nodes),
            epochs=liveness.epochs,
        )
        self.recovery.on_lost = self._lost
        self.recovery.fence = liveness.fence_all
        liveness.recovery = self.recovery

    async def start(self) -> None:
        await super().start()
        self.liveness.start()

    async def stop(self) -> None:
        await self.liveness.stop()
        await super().stop()

    def register_node(self, node_id: NodeId, handler: BreakHandler) -> None:
        super().register_node(node_id, handler)
        self.liveness.register(node_id)

    async def open(self, req: OpenRequest) -> OpenResult:
        epoch = await self.liveness.admit(req.node_id)
        req = dataclasses.replace(req, epoch=epoch)
        result = await super().open(req)
        if result.status == STATUS_SUCCESS and not self.liveness.current(req.node_id, epoch):
            # Granted under a registration that lapsed meanwhile: the other
            # nodes may already have released it. Give it back, refuse.
            await asyncio.shield(self.close(req.file, req.open_id))
            raise BusUnavailable(f"node {req.node_id} lost its registration during the open")
        return result

    async def _epoch(self, node_id: NodeId) -> int:
        return await self.liveness.admit(node_id)

    async def reconnect(
        self, found: DisconnectedOpen, open_id: OpenId, node_id: NodeId
    ) -> DisconnectedOpen | None:
        got = await super().reconnect(found, open_id, node_id)
        if got is not None and not self.vouches(node_id):
            # As for an open: taken under a registration that may have lapsed.
            raise BusUnavailable(f"node {node_id} lost its registration during a reconnect")
        return got

    def vouches(self, node_id: NodeId) -> bool:
        return self.liveness.vouches(node_id)

    async def joined(self, node_id: NodeId) -> None:
        await self.liveness.joined(node_id)

    async def publish_probe(self, node_id: NodeId, name: str, value: str) -> dict[NodeId, str]:
        return await self.liveness.publish_probe(node_id, name, value)

    async def broadcast(self, topic: str, payload: dict[str, Any]) -> None:
        await self.redis_store.broadcast(topic, payload)

    def on_broadcast(self, topic: str, handler: BroadcastHandler) -> None:
        self.redis_store.on_broadcast(topic, handler)

    async def _lost(self, node_id: NodeId, opens: list[tuple[FileKey, OpenId]]) -> None:
        if self.lost_handler is not None:
            await self.lost_handler(node_id, opens)

    async def _fenced(self, node_id: NodeId) -> None:
        log.error("node %s is fenced off the bus: its clients must drop their caching", node_id)
        if self.fence_handler is not None:
            await self.fence_handler(node_id)
