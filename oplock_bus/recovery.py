"""Bus recovery: rebuild the lock space from the nodes when Redis loses it.

Every node holds, in memory, what it was granted; Redis holds the same as
the shared record. When Redis restarts empty, or Sentinel promotes a replica
(which may have missed the last writes), the record is gone or stale, but
the nodes are not. So, as clustered Samba's recovery (freeze, collect,
thaw) and unlike dropping every client:

1. **Generation.** ``{nodes}:gen`` names the record's lineage (a random id
   set by the first node to register). Every write of a file's record (the
   CAS script) carries the writer's generation and is refused (-2) unless
   the key holds exactly it: a Redis that came back empty has none, so
   nothing is granted on it before the nodes have put back what they hold.
2. **Noticing.** A node notices the loss when its heartbeat renewal finds
   the generation gone or changed, when a write is refused for it, or when
   the master's run id changed (a restart, or a failover: the new master
   may lack the last writes even where it has the generation key).
3. **Recovery** (``BEGIN_RECOVERY``): the first to notice sets the
   generation to ``"<new> r"`` and lists the nodes it knew alive as
   expected. Each node re-registers (its epochs keep rising), writes back
   its opens, leases, locks and queued locks under the new generation with
   the re-assert flag (only those writes pass while it runs), closes what
   the record still has of its older epochs (a stale replica's leftovers)
   and says it is done (``FINISH_RECOVERY``). Once every expected node has,
   or the node TTL has gone by since the start, the generation opens and
   grants resume. Requests meanwhile wait (the store retries a refused
   write once the recovery is over), so a client sees a pause.
4. **What it cannot tell apart** it does not try to: a node that reaches no
   Redis for 0.6 of its TTL still fences itself (``liveness``); only a Redis
   back, or another master, before then is recovered.

Re-asserted state cannot conflict if the rules held; ``rules.reassert``
checks anyway, and an open of this node that would conflict gives way and
is reported lost (the gateway drops that client's connection).

Disconnected durable and persistent opens are in no node's memory: they
survive a restart only if Redis persists them (AOF with ``appendfsync
always``), and a failover only if the replica had them (see
docs/operations.md, "Redis").

On Redis Cluster a script touches one hash slot, so each slot in use keeps
a copy of the generation (:mod:`oplock_bus.redis_slots`), which the CAS
checks: a master that lost its data lost its slots' copies, and a write
there is refused as above (a node that meets that while ``{nodes}:gen``
still holds its generation begins a recovery). A recovery marks the copies
running after ``BEGIN_RECOVERY`` and opens them before ``FINISH_RECOVERY``
opens ``{nodes}:gen``. A failover to a replica that has the copies, which
may still have missed the master's last writes, is told instead by who
serves the slots (no run id check there): each heartbeat reads CLUSTER
NODES, and a former replica now serving slots begins a recovery, as a new
run id does behind Sentinel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from . import redis_scripts as scripts
from . import redis_slots, rules
from .api import BusUnavailable, FileKey, NodeId, OpenId
from .leaseindex import lease_doc_key
from .model import FileState
from .redis_store import REASSERTING, RedisStore, _decode, bus_errors

if TYPE_CHECKING:
    from .coordinator import Coordinator

log = logging.getLogger("oplock_bus.recovery")

# How often a node that has re-asserted looks whether the others have.
POLL = 0.05
# Broadcast when a recovery begins, so the other nodes join at once rather
# than at their next heartbeat (payload: the generation).
RECOVERY_TOPIC = "recovery"

# (node id, [(file, open id)]): opens of this node it had to give up.
Lost = Callable[[NodeId, list[tuple[FileKey, OpenId]]], Awaitable[None]]
# Registers the node again (a new epoch, the heartbeat set) and returns
# (the new epoch, the epoch it held before).
Reregister = Callable[[NodeId], Awaitable[tuple[int, int]]]


def new_generation() -> str:
    return secrets.token_hex(8)


def split(value: bytes | str | None) -> tuple[str, bool]:
    """A generation key's value: (generation, whether its recovery runs)."""
    if value is None:
        return "", False
    text = value.decode() if isinstance(value, bytes) else value
    return text.removesuffix(" r"), text.endswith(" r")


class Recovery:
    def __init__(
        self,
        store: RedisStore,
        coordinator: Coordinator,
        *,
        ttl: float,
        nodes: Callable[[], Iterable[NodeId]],
        known_alive: Callable[[], Iterable[NodeId]],
        reregister: Reregister,
        vouches: Callable[[], bool],
        epochs: Callable[[NodeId], Iterable[int]],
    ) -> None:
        self.store = store
        self.coordinator = coordinator
        self.ttl = ttl
        self.nodes = nodes
        self.known_alive = known_alive
        self.reregister = reregister
        self.vouches = vouches
        self.epochs = epochs
        self.on_lost: Lost | None = None
        # Drops every client and registers afresh, holding nothing.
        self.fence: Callable[[], Awaitable[None]] | None = None
        self.settled = asyncio.Event()
        self.settled.set()
        self.task: asyncio.Task[None] | None = None
        self.run_id: str | None = None
        # On Redis Cluster: who served the slots at the last look (or since
        # the last recovery began, which rebuilt on those masters).
        self.topology: redis_slots.Topology | None = None
        # Read by metrics and status.
        self.recoveries = 0
        self.recovery_seconds: list[float] = []
        store.on_stale = self.wait
        store.on_unreachable = self.wait_reachable
        store.on_broadcast(RECOVERY_TOPIC, self._announced)

    @property
    def enabled(self) -> bool:
        return bool(self.store.gen_key)

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    @property
    def generation(self) -> str:
        return self.store.generation

    def key(self, name: str) -> str:
        return self.store.key(f"{{nodes}}:{name}")

    # -- noticing ---------------------------------------------------------------------

    def noticed(self, seen: bytes | str | None, why: str) -> None:
        """The generation key holds ``seen``, not ours: begin or join a recovery."""
        if not self.enabled or self.running:
            return
        gen, running = split(seen)
        if gen == self.generation and running:
            return  # ours, being finished
        if not self.vouches():
            return  # fenced meanwhile: liveness registers it afresh, holding nothing
        log.warning("the bus lost its state (%s): recovering", why)
        self.settled.clear()
        self.task = asyncio.get_running_loop().create_task(self._recover(), name="bus-recovery")

    async def check_master(self) -> None:
        """Notice a master that is not the one we wrote to (a restart or a
        failover) even where it still holds our generation."""
        if not self.enabled or self.running:
            return
        if self.store.slot_gens:
            await self._check_topology()
            return
        with bus_errors():
            # The default sections hold both (one round trip; a list of
            # sections needs Redis 7).
            info: dict[str, Any] = await self.store.client.info()
        self.store.replicas = int(info.get("connected_slaves", 0))
        run_id = str(info.get("run_id", ""))
        if self.run_id is None:
            self.run_id = run_id
        elif run_id != self.run_id:
            self.run_id = run_id
            self.noticed(None, f"Redis master changed, run id {run_id[:8]}")

    async def _check_topology(self) -> None:
        """On Redis Cluster: a replica promoted to serve slots may have
        missed its master's last writes, where the slot's generation copy
        (older) is intact. Each master's run id would tell only with a round
        trip to every master, and its replication offset only while the old
        master lives: who serves the slots is one round trip, to the server
        the heartbeat has just reached."""
        now = await self._read_topology()
        if now is None:
            return  # looked at again at the next heartbeat
        seen = self.topology
        if seen is not None and not now.newer(seen):
            return  # a server that has not heard of the last promotion yet
        self.topology = now
        promoted = now.promoted(seen) if seen is not None else {}
        if promoted:
            new, old = next(iter(promoted.items()))
            self.noticed(
                None, f"Redis Cluster replica {new[:8]} took over the slots of master {old[:8]}"
            )

    async def wait(self) -> None:
        """A write was refused for its generation: wait for the recovery
        (starting it if nobody noticed yet); BusUnavailable if it does not
        end while this node may still act."""
        if not self.running:
            with bus_errors():
                seen = await self.store.client.get(self.store.gen_key)
            gen, running = split(seen)
            if gen != self.generation or running:
                self.noticed(seen, "a write was refused for its generation")
            elif self.store.slot_gens:
                # {nodes}:gen is intact, the copy in the record's slot is not:
                # that slot's master lost its data.
                self.noticed(None, "a cluster slot lost its copy of the generation")
            if not self.running:
                if gen == self.generation and running:
                    await self._wait_finished(gen)
                    return
                raise BusUnavailable("the bus generation changed under a fenced node")
        try:
            await asyncio.wait_for(self.settled.wait(), self.ttl * 2)
        except TimeoutError:
            raise BusUnavailable("the bus recovery did not finish") from None

    async def wait_reachable(self, error: BusUnavailable) -> None:
        """No Redis could be reached for a write: wait a moment and let the
        caller try again, as long as this node may act (a restart or a
        Sentinel switch takes about as long as the node may wait); else
        ``error``."""
        if not self.vouches():
            raise error
        await asyncio.sleep(POLL * 2)

    # -- recovering -------------------------------------------------------------------------

    async def _recover(self) -> None:
        started = time.monotonic()
        self.recoveries += 1
        try:
            await self._take_topology()
            while True:
                try:
                    joined = await self._join()
                    if joined is None:
                        log.error(
                            "a bus recovery ended without this node: what it held may be "
                            "another's now, so it fences itself"
                        )
                        if self.fence is not None:
                            await self.fence()
                        return
                    gen = self.store.generation = joined
                    token = REASSERTING.set(True)
                    try:
                        count = await self._reassert(list(self.nodes()))
                    finally:
                        REASSERTING.reset(token)
                    if await self._finish(gen):
                        break
                except BusUnavailable as e:
                    if not self.vouches():
                        log.error("bus recovery abandoned, this node is fenced: %s", e)
                        return
                    log.warning("bus recovery interrupted, trying again: %s", e)
                    await asyncio.sleep(POLL)
            # The master it rebuilt on is the one to compare with from now.
            self.run_id = None
            took = time.monotonic() - started
            self.recovery_seconds.append(took)
            log.warning(
                "bus recovered under generation %s in %.2fs: re-asserted %d opens",
                gen, took, count,
            )  # fmt: skip
        finally:
            self.settled.set()

    async def _take_topology(self) -> None:
        """On Redis Cluster, the masters this recovery rebuilds on are the
        ones to compare with from now: a promotion it covers is not noticed
        again, one after this look is."""
        self.topology = await self._read_topology()

    async def _read_topology(self) -> redis_slots.Topology | None:
        """Who serves the slots now; None if not on Redis Cluster or no
        answer in time (the heartbeat waits for it)."""
        client = self.store.client
        if not isinstance(client, RedisCluster):
            return None
        try:
            with bus_errors():
                return await asyncio.wait_for(
                    redis_slots.read_topology(client, self.store.gen_key), self.ttl / 3
                )
        except (BusUnavailable, TimeoutError, RedisError, RedisClusterException) as e:
            log.debug("Redis Cluster topology not read: %s", e)
            return None

    @property
    def _keys(self) -> list[str]:
        return [
            self.store.gen_key, self.key("recovery"), self.key("expect"), self.key("asserted"),
            self.key("recovered"),
        ]  # fmt: skip

    async def _join(self) -> str | None:
        """Begin a recovery, or join the one running; its generation, or
        None if one ended without this node."""
        alive = sorted(set(self.known_alive()) | set(self.nodes()))
        ttl_ms = int(self.ttl * 1000)
        seen: Any = None
        with bus_errors():
            for node_id in self.nodes():
                seen = await scripts.begin_recovery(
                    self.store.client,
                    self._keys,
                    [new_generation(), node_id, ttl_ms, self.generation, *alive],
                )
        if seen == b"late":
            return None
        gen, running = split(seen)
        with contextlib.suppress(BusUnavailable):
            await self.store.broadcast(RECOVERY_TOPIC, {"generation": gen})
        if running:
            # Re-assertions pass in every slot in use, ordinary writes wait; a slot
            # already opened by a node that finished is left open.
            await self.store.mark_slots(gen + " r", never=gen)
        return gen

    def _announced(self, payload: dict[str, Any]) -> None:
        gen = payload.get("generation")
        if isinstance(gen, str) and gen != self.generation:
            self.noticed(gen + " r", "another node began a recovery")

    async def _reassert(self, nodes: list[NodeId]) -> int:
        """Write back what ``nodes`` (this process's) hold; how many opens."""
        count = 0
        older: dict[NodeId, int] = {}  # each node's epoch before this recovery
        for node_id in nodes:
            n, older[node_id] = await self._reassert_node(node_id)
            count += n
        # What the record still has of their older epochs is not theirs any
        # more (a stale replica's leftovers): close it. One scan for all.
        for key in await self.store.keys("file:"):
            _, doc = await self.store.load(key)
            for open_id, o in (doc or {}).get("opens", {}).items():
                old_epoch = older.get(o.get("node_id"))
                if old_epoch is not None and o.get("epoch", 0) <= old_epoch:
                    await self.coordinator.close(doc["file"], open_id)  # type: ignore[index]
        return count

    async def _reassert_node(self, node_id: NodeId) -> tuple[int, int]:
        """(opens written back, the node's epoch before)."""
        # Only what it holds under its current registration (and those a
        # recovery carried over): an open of an epoch that lapsed was given
        # up then, even if a record seen here still shows it.
        owned = set(self.epochs(node_id))
        epoch, old_epoch = await self.reregister(node_id)
        now = self.coordinator.clock()
        count = 0
        lost: list[tuple[FileKey, OpenId]] = []
        for raw in list(self.store.held.values()):
            _, doc = _decode(raw)
            if doc is None:
                continue
            mine = rules.held_by(FileState.from_dict(doc), node_id, owned)
            if not mine.opens:
                continue
            out = await self.coordinator.reassert(mine, epoch, now)
            count += len(out.reasserted)
            lost += [(mine.file, i) for i in out.lost]
            for lid in mine.leases:
                await self._bind(lid, mine.file)
        if lost:
            log.error(
                "node %s gave up %d opens that conflicted after the bus recovery: %s",
                node_id, len(lost), lost,
            )  # fmt: skip
            if self.on_lost is not None:
                await self.on_lost(node_id, lost)
        return count, old_epoch

    async def _bind(self, lid: str, file: FileKey) -> None:
        def bind(doc: Any) -> tuple[Any, None]:
            if doc is not None and doc.get("file") == file:
                return doc, None
            return {"file": file, "pending": 0}, None

        await self.store.transact(lease_doc_key(lid), bind)

    async def _finish(self, gen: str) -> bool:
        """Say this node is done; wait until all are. False: another
        recovery began meanwhile (join that one)."""
        for node_id in self.nodes():
            await self._finish_call(gen, node_id)
        return await self._wait_finished(gen)

    async def _finish_call(self, gen: str, node_id: NodeId) -> Any:
        """FINISH_RECOVERY; on Redis Cluster the slots' copies open first,
        so that once ``{nodes}:gen`` is open, every slot in use is."""
        slots = self.store.slot_gens
        with bus_errors():
            seen = await scripts.finish_recovery(
                self.store.client, self._keys, [gen, node_id, "1" if slots else "0"]
            )
        if slots and seen == f"{gen} ready".encode():
            await self.store.mark_slots(gen, held=gen + " r")
            with bus_errors():
                seen = await scripts.finish_recovery(self.store.client, self._keys, [gen, "", "0"])
        return seen

    async def _wait_finished(self, gen: str) -> bool:
        deadline = time.monotonic() + self.ttl * 2
        while time.monotonic() < deadline:
            seen = await self._finish_call(gen, "")
            now_gen, running = split(seen)
            if now_gen == gen and not running:
                return True
            if now_gen != gen:
                return False
            await asyncio.sleep(POLL)
        raise BusUnavailable("the bus recovery did not finish within twice the node TTL")


__all__ = ["Recovery", "new_generation", "split"]
