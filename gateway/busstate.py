"""The node's view of its bus being down, an expected state on a Redis bus:

- at start, Redis not answering yet is waited for (``bus_wait`` seconds,
  ``wait_for_bus``), with a progress line, then one line and exit 2;
- requests the bus cannot decide (``BusUnavailable``) are answered with the
  exception's status and told once per outage (``gateway/smb/busoutage.py``),
  not with a traceback each;
- while the bus cannot vouch for the node (its heartbeat not renewed for most
  of its TTL: cut off from Redis, or frozen), the node closes its own listening
  socket, as CTDB gives up a node's public address, so that clients reach
  another node, or the node that takes the address over (``BusWatch``); it
  listens again once the bus vouches for it again.

A short Redis restart is none of this: the bus's recovery
(``oplock_bus/recovery.py``) makes requests wait meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from typing import TYPE_CHECKING, Protocol

from oplock_bus.api import BusUnavailable, LockBus, NodeId

from .config import Config, ConfigError
from .smb.busoutage import BusOutage

if TYPE_CHECKING:
    from oplock_bus.liveness import Liveness
    from oplock_bus.redis_url import RedisTarget

log = logging.getLogger("smbgw.bus")

# -- at start: waiting for Redis -------------------------------------------------------

START_RETRY = 0.5  # seconds between two tries while Redis does not answer
PROGRESS_EVERY = 5.0  # seconds between two "still waiting" lines


def _redis_liveness(bus: LockBus) -> Liveness | None:
    from oplock_bus.redis_bus import RedisBus

    return bus.liveness if isinstance(bus, RedisBus) else None


async def _ping(target: RedisTarget) -> None:
    """One connection and a PING, as ``smbgw status`` connects; BusUnavailable
    when Redis cannot be reached."""
    from oplock_bus.redis_store import RedisStore

    store = RedisStore(target)
    try:
        await store.start(subscriber=False)
    finally:
        with contextlib.suppress(Exception):
            await store.stop()


async def wait_for_bus(bus: LockBus, wait: float, shown: str) -> None:
    """Return once the Redis of ``bus`` answers (at once for the in-process
    bus); ConfigError after ``wait`` seconds of trying, or at once for an
    answer that waiting will not change (a password refused)."""
    from redis.exceptions import RedisError

    from oplock_bus.redis_bus import RedisBus

    if not isinstance(bus, RedisBus):
        return
    target = bus.redis_store.target
    started = time.monotonic()
    deadline = started + wait
    told = 0.0  # when the last progress line went out
    while True:
        try:
            # A Redis that accepts but never answers is bounded as well.
            await asyncio.wait_for(_ping(target), max(target.timeout, 0.1) + 1.0)
        except (BusUnavailable, TimeoutError, OSError) as e:
            cause = e.__cause__
            if isinstance(cause, RedisError) and _permanent(cause):
                refused = f"the bus refused us: {cause}"
                raise ConfigError(f"cannot start: {refused} (--bus {shown})") from None
            why = str(e).rstrip(".") or "no answer"
            now = time.monotonic()
            if now >= deadline:
                spent = f" for {now - started:.1f} s" if wait else " once"
                raise ConfigError(
                    f"cannot start: {why} (--bus {shown}); tried{spent}: start Redis, correct "
                    "--bus, or wait longer with --bus-wait SECONDS"
                ) from None
            if not told:
                log.warning("bus %s: %s; waiting up to %g s for it (--bus-wait)", shown, why, wait)
                told = now
            elif now - told >= PROGRESS_EVERY:
                waited = now - started
                log.warning("bus %s: still no answer after %.0f s of %g", shown, waited, wait)
                told = now
            await asyncio.sleep(min(START_RETRY, max(0.0, deadline - now)))
            continue
        except RedisError as e:
            raise ConfigError(f"cannot start: the bus refused us: {e} (--bus {shown})") from None
        if told:
            log.warning("bus %s answers after %.1f s", shown, time.monotonic() - started)
        return


def _permanent(error: Exception) -> bool:
    """A refusal that waiting will not change: a wrong password or user."""
    from redis.exceptions import AuthenticationError, AuthorizationError

    return isinstance(error, AuthenticationError | AuthorizationError)


# -- not accepting clients while the bus cannot vouch for the node ---------------------


class Watched(Protocol):
    """What the watch needs of the node (``gateway.node.Node``)."""

    node_id: NodeId
    bus: LockBus
    config: Config
    bus_outage: BusOutage

    @property
    def draining(self) -> bool:
        """Drained (``smbgw drain``): it listens on nothing, for good."""
        ...

    async def listen(self, host: str, port: int) -> None: ...

    async def unlisten(self, host: str, port: int, drop_clients: bool = True) -> int: ...

    def listening(self) -> list[str]: ...


class BusWatch:
    """Looks at the bus's vouching as often as the bus's own watcher looks
    for dead nodes, and closes or opens the node's own address on each
    change (a line each); ends outages (``BusOutage.check``) as it goes."""

    def __init__(self, node: Watched) -> None:
        self.node = node
        cfg = node.config
        self.own = (cfg.listen_host, cfg.listen_port)
        self.interval = min(0.5, cfg.node_ttl / 8)
        self.paused = False  # our own address given up for want of the bus
        self.pauses = 0
        self._relisten_failed: str | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="bus-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.tick()
            except Exception:
                log.exception("node %s: bus watch failed", self.node.node_id)

    async def tick(self) -> None:
        node = self.node
        node.bus_outage.check()
        if node.draining:
            self.paused = False  # the drain closed everything, and keeps it so
            return
        vouched = node.bus.vouches(node.node_id)
        if not vouched and not self.paused:
            await self._pause()
        elif vouched and self.paused:
            await self._resume()

    def _address(self) -> str:
        host, port = self.own
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def _pause(self) -> None:
        node = self.node
        self.paused = True
        self.pauses += 1
        host, port = self.own
        # Its clients are being dropped by the fence (Node._fenced): here only
        # no new ones. With takeover the address is free for a taker once the
        # others count this node dead.
        await node.unlisten(host, port, drop_clients=False)
        cfg = node.config
        if cfg.takeover and cfg.takeover_command:
            from .takeover import release_own

            # Off this host too, as CTDB releases an address, so that a taker
            # elsewhere can add it without a duplicate.
            await release_own(cfg.takeover_command, node.node_id, host, port)
        log.warning(
            "node %s: not accepting new connections while the bus cannot vouch for it "
            "(stopped listening on %s); it listens again once it is back on the bus",
            node.node_id, self._address(),
        )  # fmt: skip

    async def _resume(self) -> None:
        node = self.node
        host, port = self.own
        try:
            if node.config.takeover:
                from .takeover import listen_own

                liveness = _redis_liveness(node.bus)
                assert liveness is not None  # takeover needs a Redis bus (config)
                # A node that took the address over meanwhile gives it back
                # once it sees us registered again: listen_own waits for it.
                await listen_own(
                    node, liveness, node.node_id, host, port,
                    command=node.config.takeover_command,
                )  # fmt: skip
            else:
                await node.listen(host, port)
        except OSError as e:
            why = "address in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
            if self._relisten_failed != why:  # once per reason, then every tick quietly
                self._relisten_failed = why
                log.error("node %s: back on the bus, but cannot listen on %s: %s; trying again",
                          node.node_id, self._address(), why)  # fmt: skip
            return
        self.paused = False
        self._relisten_failed = None
        log.warning(
            "node %s: the bus vouches for it again: accepting new connections on %s",
            node.node_id, self._address(),
        )  # fmt: skip
