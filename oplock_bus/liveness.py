"""Node liveness on Redis: registration epochs, heartbeats, reaping the dead.

Keys (after the namespace; one hash tag, so the scripts run on Cluster):

- ``{nodes}:epoch``: a counter; every registration takes a fresh epoch.
- ``{nodes}:members``: node id -> JSON record (id, address, start time,
  TTL, epoch, registration time). Stays after a crash: that is how the
  survivors know whom to look for.
- ``{nodes}:hb:<node-id>``: ``"<epoch> <redis time>"`` with a TTL, renewed
  every 0.5 s (TTL/3 if shorter). When it expires the node counts as dead. While it lives no
  other process may register under that id (``NodeIdInUse``).
- ``{nodes}:probes:<node-id>``: probe name -> value (``publish_probe``),
  written again at each registration, removed by a clean stop; only a live
  node's count.
- ``{nodes}:addresses``: node id -> JSON (id, listen address, the addresses
  it listens on now) for every node that runs with address takeover
  (``gateway/takeover.py``). Unlike the member record it stays when the node
  dies: that is how the others know which address to take over. A clean stop
  removes it (a node that leaves on purpose takes its address with it),
  unless the node was drained: then the others keep serving its address
  while it is down.
- ``{nodes}:drain``: node id -> JSON (id, epoch, state ``draining`` or
  ``drained``, what it gave up and to whom) for a node that ``smbgw drain``
  told to hand its clients and addresses to the others
  (``gateway/drain.py``). It counts only under the epoch it names: a node
  that registers again (restarted, or after a lapse) serves again, unless
  the same process had been drained, which enters it again.

Every node runs a watcher; whoever first sees a member without heartbeat
claims its cleanup (``{nodes}:reaping:...``, SET NX with expiry), closes
every open the node made under that epoch or before (so its oplocks,
leases and locks go and waiters proceed), and forgets the member unless it
re-registered meanwhile. Cleanup is idempotent, so a second reaper or a
reaper dying half-way does no harm.

A node that cannot renew stops admitting opens once half its TTL has gone
by without a renewal, and tells the gateway (``on_fenced``) before the
TTL runs out, so it can drop its clients. If its heartbeat has lapsed when
it reaches Redis again, it registers under a new epoch, first releasing
whatever it held under the old one: it never acts on old grants.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from . import redis_scripts as scripts
from .api import BusUnavailable, NodeId, NodeIdInUse
from .recovery import Recovery, new_generation, split
from .redis_store import RedisStore, bus_errors

log = logging.getLogger("oplock_bus.liveness")

DEFAULT_TTL = 5.0
HEARTBEAT_INTERVAL = 0.5  # at most; TTL/3 when that is shorter
RETRY_INTERVAL = 0.2  # after a failed renewal
MEMBER_TOPIC = "member"  # broadcast: a node registered (payload: its id)
# Past this fraction of its TTL without a confirmed renewal a node acts on
# nothing it was granted (``vouches``) and drops its clients; the others
# release its grants at the full TTL.
FENCE_FRACTION = 0.6

# (node id, epoch) -> release what that node held under that epoch or older
Release = Callable[[NodeId, int], Awaitable[object]]
Fenced = Callable[[NodeId], Awaitable[None]]
# Closes what expired while nobody held it (disconnected durable opens).
Sweep = Callable[[], Awaitable[object]]


def default_address() -> str:
    return f"{socket.gethostname()} pid {os.getpid()}"


@dataclass
class Registration:
    node_id: NodeId
    address: str
    started: float
    epoch: int = 0
    last_renewed: float = float("-inf")  # monotonic
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    fenced_told: bool = False
    task: asyncio.Task[None] | None = None
    # What this process published as its drain (``publish_drain``), if it
    # was drained: entered again under each new epoch.
    drain: dict[str, Any] | None = None
    # Epochs a bus recovery carried over to the current one (the same
    # process, its grants re-asserted): still this registration's.
    carried: set[int] = field(default_factory=set)
    failing: bool = False  # renewals fail: said once, and once when they work again
    # What it entered with ``publish_probe``: entered again under each epoch.
    probes: dict[str, str] = field(default_factory=dict)
    # Set once the first registration succeeded or was refused.
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    # Why the id could not be had: a first registration refused ends there;
    # a later one (after a lapse) keeps trying, and says so once.
    refused: NodeIdInUse | None = None


class Liveness:
    def __init__(
        self,
        store: RedisStore,
        *,
        ttl: float = DEFAULT_TTL,
        address: str | None = None,
        release: Release,
        on_fenced: Fenced | None = None,
        sweep: Sweep | None = None,
        takeover: bool = False,
    ) -> None:
        if ttl <= 0:
            raise ValueError("node_ttl must be positive")
        self.store = store
        self.ttl = ttl
        self.address = address or default_address()
        self.release = release
        self.on_fenced = on_fenced
        self.sweep = sweep
        # Shown in the member record: a live node with takeover may be chosen
        # to serve a dead one's address.
        self.takeover = takeover
        self.nodes: dict[NodeId, Registration] = {}
        # In this process's member records: a registration whose reply was
        # lost finds its own record, not another process holding the id.
        self.instance = secrets.token_hex(8)
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self.reaped: list[tuple[NodeId, int]] = []  # for logs and tests
        # Rebuilds the lock space when Redis loses it (set by RedisBus).
        self.recovery: Recovery | None = None
        # The members whose heartbeat the watcher last saw: a recovery
        # waits for them to re-assert what they hold.
        self.known_alive: set[NodeId] = set()
        self.fenced_events = 0
        self._kick = asyncio.Event()  # renew now (a waiting open, a retry)
        # A node that registers says so: the watcher would see it only on
        # its next pass, and Redis may be lost before then.
        store.on_broadcast(MEMBER_TOPIC, self._member_joined)

    # -- for metrics and status ----------------------------------------------------------

    @property
    def recoveries(self) -> int:
        return self.recovery.recoveries if self.recovery is not None else 0

    @property
    def recovery_seconds(self) -> list[float]:
        return self.recovery.recovery_seconds if self.recovery is not None else []

    @property
    def recovering(self) -> bool:
        return self.recovery is not None and self.recovery.running

    @property
    def generation(self) -> str:
        return self.store.generation

    # -- names -------------------------------------------------------------------

    @property
    def members_key(self) -> str:
        return self.store.key("{nodes}:members")

    def hb_key(self, node_id: NodeId) -> str:
        return self.store.key(f"{{nodes}}:hb:{node_id}")

    def probes_key(self, node_id: NodeId) -> str:
        return probes_key(self.store, node_id)

    @property
    def addresses_key(self) -> str:
        return addresses_key(self.store)

    @property
    def drain_key(self) -> str:
        return drain_key(self.store)

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self._started = True
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._heartbeat_loop(), name="bus-heartbeat"),
            loop.create_task(self._watch_loop(), name="bus-watcher"),
        ]
        for reg in self.nodes.values():
            self._spawn_register(reg)

    async def stop(self) -> None:
        tasks = self._tasks + [r.task for r in self.nodes.values() if r.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        self._tasks = []
        # A node refused its id leaves the live holder's entries alone.
        mine = [n for n, reg in self.nodes.items() if reg.refused is None]
        if mine:
            # First, so that nobody sees the entry without a heartbeat and
            # takes over the address of a node that leaves on purpose (also
            # one left by an earlier life that ran with takeover). A drained
            # node's entry stays: its address is served by another node
            # while it is down (a rolling upgrade), until it registers again.
            leaving = [n for n in mine if self.nodes[n].drain is None]
            with contextlib.suppress(Exception), bus_errors():
                if leaving:
                    await self.store.client.hdel(self.addresses_key, *leaving)
                await self.store.client.hdel(self.drain_key, *mine)
        for reg in self.nodes.values():
            if reg.ready.is_set():
                with contextlib.suppress(Exception), bus_errors():
                    await scripts.deregister(
                        self.store.client,
                        [self.members_key, self.hb_key(reg.node_id), self.probes_key(reg.node_id)],
                        [reg.node_id, reg.epoch],
                    )

    def register(self, node_id: NodeId) -> None:
        if node_id in self.nodes:
            return
        reg = Registration(node_id, self.address, time.time())
        self.nodes[node_id] = reg
        if self._started:
            self._spawn_register(reg)

    def _spawn_register(self, reg: Registration) -> None:
        if reg.task is None or reg.task.done():
            reg.task = asyncio.get_running_loop().create_task(self._register(reg))

    # -- admission -------------------------------------------------------------------

    async def admit(self, node_id: NodeId) -> int:
        """The epoch a new open of ``node_id`` is made under; BusUnavailable
        while the node is not (or no longer) safely registered."""
        reg = self.nodes.get(node_id)
        if reg is None:
            return 0  # a node without liveness (e.g. a tool): never reaped
        if not reg.ready.is_set():
            try:
                await asyncio.wait_for(reg.ready.wait(), self.store.target.timeout)
            except TimeoutError:
                raise BusUnavailable(f"node {node_id} is not registered on the bus") from None
        # A Redis restart or a Sentinel switch leaves the heartbeat unrenewed
        # and the subscriber down for a moment: the open waits (its client
        # sees a pause) while this node may still act, rather than fail.
        while True:
            if self.recovery is not None and self.recovery.running:
                await self.recovery.wait()
            hub = self.store.hub
            renewed = time.monotonic() - reg.last_renewed <= self.ttl / 2
            if renewed and hub is not None and hub.connected:
                return reg.epoch
            if not self.vouches(node_id):
                if not renewed:
                    raise BusUnavailable(f"node {node_id} cannot renew its heartbeat")
                raise BusUnavailable("the bus subscriber is disconnected")
            self._kick.set()
            await asyncio.sleep(0.05)

    def vouches(self, node_id: NodeId) -> bool:
        """See ``LockBus.vouches``: the monotonic clock keeps running while the
        process is stopped, so a node resumed after SIGSTOP fails this at once."""
        reg = self.nodes.get(node_id)
        if reg is None:
            return True
        age = time.monotonic() - reg.last_renewed
        return reg.ready.is_set() and age <= self.ttl * FENCE_FRACTION

    def current(self, node_id: NodeId, epoch: int) -> bool:
        reg = self.nodes.get(node_id)
        return reg is None or (
            reg.ready.is_set() and (reg.epoch == epoch or epoch in reg.carried)
        )

    # -- registration ------------------------------------------------------------------

    async def joined(self, node_id: NodeId) -> None:
        """See ``LockBus.joined``: waits for the first registration of
        ``node_id`` (retried meanwhile if Redis does not answer)."""
        reg = self.nodes.get(node_id)
        if reg is None:
            return
        timeout = 3 * self.store.target.timeout
        try:
            await asyncio.wait_for(reg.settled.wait(), timeout)
        except TimeoutError:
            raise BusUnavailable(
                f"node {node_id} could not register on the bus within {timeout:g} s"
            ) from None
        if reg.refused is not None:
            raise reg.refused

    async def _register(self, reg: Registration) -> None:
        delay = 0.05
        while True:
            try:
                await self._register_once(reg)
                reg.refused = None
                return
            except BusUnavailable as e:
                log.warning("node %s cannot register on the bus: %s", reg.node_id, e)
            except NodeIdInUse as e:
                if not reg.settled.is_set():
                    # Its first registration: this process must not serve.
                    reg.refused = e
                    reg.settled.set()
                    return
                # Lapsed, and another process took the id meanwhile: ours
                # stays fenced until that one leaves.
                if reg.refused is None:
                    log.error("node %s cannot register again: %s", reg.node_id, e)
                reg.refused = e
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def reregister(self, node_id: NodeId) -> tuple[int, int]:
        """For a recovery: register ``node_id`` again (the same process; what
        it held is re-asserted, not released); (new epoch, old epoch)."""
        reg = self.nodes[node_id]
        old = reg.epoch
        await self._register_once(reg, recovering=True)
        reg.carried.add(old)
        return reg.epoch, old

    def epochs(self, node_id: NodeId) -> set[int]:
        """The registration epochs whose grants are still ``node_id``'s."""
        reg = self.nodes.get(node_id)
        if reg is None or not reg.ready.is_set():
            return set()
        return {reg.epoch, *reg.carried}

    def _member_joined(self, payload: dict[str, Any]) -> None:
        node = payload.get("node")
        if isinstance(node, str):
            self.known_alive.add(node)

    async def fence_all(self) -> None:
        """A recovery went on without this process: drop every client and
        register afresh (releasing what the old epochs held), holding nothing."""
        self.store.generation = ""
        for reg in self.nodes.values():
            reg.ready.clear()
            reg.carried.clear()
            await self._tell_fenced(reg)
            self._spawn_register(reg)

    async def _register_once(self, reg: Registration, *, recovering: bool = False) -> None:
        hub = self.store.hub
        assert hub is not None
        # Listen for our breaks before anyone can address one to us.
        await hub.confirm([self.store.node_channel(reg.node_id)])
        marker = json.dumps({"instance": self.instance})[1:-1]
        record = json.dumps({
            "id": reg.node_id, "address": reg.address, "started": reg.started, "ttl": self.ttl,
            "takeover": self.takeover,
        })[:-1] + ", " + marker  # fmt: skip
        probes = [part for item in sorted(reg.probes.items()) for part in item]
        store = self.store
        first = not store.generation
        with bus_errors():
            epoch, previous, *rest = await scripts.register(
                store.client,
                [
                    store.key("{nodes}:epoch"), self.members_key,
                    self.hb_key(reg.node_id), self.probes_key(reg.node_id),
                    store.key("{nodes}:gen"),
                ],
                [
                    reg.node_id, record, int(self.ttl * 1000), marker, reg.epoch,
                    new_generation() if first else "", *probes,
                ],
            )  # fmt: skip
        epoch = int(epoch)
        if first and epoch != 0 and rest:
            store.generation, running = split(rest[0])
            if running and self.recovery is not None:
                # Started while the others rebuild: hold nothing, but say so.
                self.recovery.noticed(rest[0], "a recovery was running at start")
        if epoch == 0:
            holder = json.loads(previous) if previous is not None else {}
            raise NodeIdInUse(reg.node_id, str(holder.get("address", "an unknown address")))
        if previous is not None and not recovering:
            # An earlier life of this node id (crashed, or this process
            # before its heartbeat lapsed): what it held is not ours.
            n = await self.release(reg.node_id, epoch - 1)
            log.warning(
                "node %s re-registered under epoch %d; released %s opens of its earlier epochs",
                reg.node_id, epoch, n,
            )  # fmt: skip
        if not recovering:
            reg.carried.clear()
        reg.epoch = epoch
        reg.last_renewed = time.monotonic()
        reg.fenced_told = False
        reg.ready.set()
        reg.settled.set()
        if not recovering:
            # Whom a recovery must wait for, known from the start: the
            # watcher refreshes it, but Redis may be lost before it runs.
            with contextlib.suppress(BusUnavailable), bus_errors():
                members: dict[Any, Any] = await self.store.client.hgetall(self.members_key)
                self.known_alive |= {k.decode() for k in members}
            with contextlib.suppress(BusUnavailable):
                await self.store.broadcast(MEMBER_TOPIC, {"node": reg.node_id})
        await self._enter_drain(reg)

    async def _enter_drain(self, reg: Registration) -> None:
        """Under a new epoch: a drained process stays drained (it listens on
        nothing; its address must stay with the others), any other drops an
        earlier life's record. Best effort: a record of another epoch counts
        for nothing anyway."""
        try:
            with bus_errors():
                if reg.drain is None:
                    await self.store.client.hdel(self.drain_key, reg.node_id)
                else:
                    await self._write_drain(reg)
        except BusUnavailable as e:
            log.warning("node %s: drain state not entered under epoch %d: %s",
                        reg.node_id, reg.epoch, e)  # fmt: skip

    # -- heartbeat ---------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        # Often, so that a node that lost Redis for a Sentinel switch (about
        # 2 s) still has most of its fence window left when it is back.
        interval = min(self.ttl / 3, HEARTBEAT_INTERVAL)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), interval)
            self._kick.clear()
            for reg in list(self.nodes.values()):
                if reg.ready.is_set():
                    await self._renew(reg)

    async def _renew(self, reg: Registration) -> None:
        try:
            with bus_errors():
                # Bounded by the heartbeat interval, not the command timeout:
                # a Redis that hangs must not keep us from fencing ourselves
                # before the other nodes release our grants at the TTL.
                got = await asyncio.wait_for(
                    scripts.renew(
                        self.store.client,
                        [self.hb_key(reg.node_id), self.store.key("{nodes}:gen")],
                        [reg.epoch, int(self.ttl * 1000), self.store.generation],
                    ),
                    self.ttl / 3,
                )
        except (BusUnavailable, TimeoutError) as e:
            age = time.monotonic() - reg.last_renewed
            if not reg.failing:
                reg.failing = True
                log.warning("node %s: heartbeat not renewed for %.1fs: %s", reg.node_id, age, e)
            # Try again soon: Redis may be back in a moment.
            asyncio.get_running_loop().call_later(RETRY_INTERVAL, self._kick.set)
            if age > self.ttl * FENCE_FRACTION:
                await self._tell_fenced(reg)
            return
        code = int(got[0])
        recovery = self.recovery
        if code == 2 and recovery is not None and recovery.enabled:
            if self.vouches(reg.node_id):
                recovery.noticed(
                    got[1] if len(got) > 1 else None, "its generation is gone or changed"
                )
                return
            # Fenced meanwhile: it holds nothing to re-assert, so it registers
            # afresh under whatever generation the bus has now.
            self.store.generation = ""
        if code == 1:
            age = time.monotonic() - reg.last_renewed
            if age > self.ttl / 2:
                self._reconnected()
            if reg.failing:
                reg.failing = False
                log.warning("node %s: heartbeat renewed again after %.1fs", reg.node_id, age)
            reg.last_renewed = time.monotonic()
            if recovery is not None:
                with contextlib.suppress(BusUnavailable):
                    await recovery.check_master()
            return
        if recovery is not None and recovery.running:
            return  # re-registering under the recovery's generation
        log.error(
            "node %s: registration under epoch %d lapsed; its opens are lost",
            reg.node_id, reg.epoch,
        )  # fmt: skip
        reg.ready.clear()
        await self._tell_fenced(reg)
        self._reconnected()
        self._spawn_register(reg)

    def _reconnected(self) -> None:
        # The subscriber may have sat on a dead connection meanwhile.
        hub = self.store.hub
        if hub is not None:
            hub.reconnect()

    async def _tell_fenced(self, reg: Registration) -> None:
        if reg.fenced_told or self.on_fenced is None:
            return
        reg.fenced_told = True
        self.fenced_events += 1
        try:
            await self.on_fenced(reg.node_id)
        except Exception:
            log.exception("fence handler of node %s failed", reg.node_id)

    # -- watching the others --------------------------------------------------------------

    async def _watch_loop(self) -> None:
        interval = min(0.5, self.ttl / 8)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reap_once()
                if self.sweep is not None and any(self.vouches(n) for n in self.nodes):
                    await self.sweep()
            except BusUnavailable as e:
                log.debug("watcher: %s", e)
            except Exception:
                log.exception("watcher failed")

    async def reap_once(self) -> list[tuple[NodeId, int]]:
        """Clean up after every member whose heartbeat expired; returns them."""
        client = self.store.client
        with bus_errors():
            members: dict[Any, Any] = await client.hgetall(self.members_key)
            if not members:
                return []
            ids = [k.decode() for k in members]
            found = await scripts.expired(
                client, [self.members_key, *(self.hb_key(i) for i in ids)], ids
            )
        dead = {found[i].decode() for i in range(0, len(found), 2)}
        self.known_alive = set(ids) - dead
        done = []
        for i in range(0, len(found), 2):
            node_id, record = found[i].decode(), found[i + 1]
            epoch = int(json.loads(record)["epoch"])
            local = self.nodes.get(node_id)
            if local is not None and local.epoch == epoch:
                continue  # our own lapse: the heartbeat loop re-registers
            if await self._reap(node_id, epoch, record):
                done.append((node_id, epoch))
        return done

    async def _reap(self, node_id: NodeId, epoch: int, record: bytes) -> bool:
        client = self.store.client
        claim = self.store.key(f"{{nodes}}:reaping:{node_id}:{epoch}")
        with bus_errors():
            mine = await client.set(claim, self.address, nx=True, px=5000)
        if not mine:
            return False
        closed = await self.release(node_id, epoch)
        with bus_errors():
            await scripts.forget(
                client, [self.members_key, self.hb_key(node_id)], [node_id, record]
            )
        log.warning(
            "node %s (epoch %d) missed its heartbeat: released %s opens", node_id, epoch, closed
        )
        self.reaped.append((node_id, epoch))
        return True

    # -- address takeover ------------------------------------------------------------------

    async def wait_registered(self, node_id: NodeId) -> bool:
        """Whether ``node_id`` is registered, waiting up to the command timeout."""
        reg = self.nodes.get(node_id)
        if reg is None:
            return False
        try:
            await asyncio.wait_for(reg.ready.wait(), self.store.target.timeout)
        except TimeoutError:
            return False
        return True

    async def publish_serving(self, node_id: NodeId, serving: list[str]) -> None:
        """Enter ``node_id`` (its address) as movable, with the addresses it
        listens on now; only while it is registered, so that an entry never
        shows up without a heartbeat beside it."""
        reg = self.nodes.get(node_id)
        if reg is None or not reg.ready.is_set():
            return
        entry = json.dumps({"id": node_id, "address": reg.address, "serving": sorted(serving)})
        with bus_errors():
            await self.store.client.hset(self.addresses_key, node_id, entry)

    async def address_view(self) -> AddressView:
        return await read_address_view(self.store)

    # -- planned moves (``smbgw drain``) ------------------------------------------------

    def epoch(self, node_id: NodeId) -> int | None:
        """The epoch ``node_id`` is registered under now, if it is."""
        reg = self.nodes.get(node_id)
        return reg.epoch if reg is not None and reg.ready.is_set() else None

    async def publish_drain(self, node_id: NodeId, record: dict[str, Any]) -> None:
        """Enter ``node_id`` as draining or drained (``record["state"]``) under
        its current epoch; kept for later epochs of this process, and it keeps
        the node's address entry when it stops."""
        reg = self.nodes[node_id]
        reg.drain = dict(record)
        if reg.ready.is_set():
            await self._write_drain(reg)

    async def _write_drain(self, reg: Registration) -> None:
        assert reg.drain is not None
        entry = json.dumps({**reg.drain, "id": reg.node_id, "epoch": reg.epoch})
        with bus_errors():
            await self.store.client.hset(self.drain_key, reg.node_id, entry)

    # -- probes (``LockBus.publish_probe``) -------------------------------------------------

    async def publish_probe(self, node_id: NodeId, name: str, value: str) -> dict[NodeId, str]:
        reg = self.nodes.get(node_id)
        if reg is None or not reg.ready.is_set():
            raise BusUnavailable(f"node {node_id} is not registered on the bus")
        reg.probes[name] = value
        client = self.store.client
        # Written before the others are read: of two nodes doing this at
        # once, the later reader sees the earlier writer.
        with bus_errors():
            await client.hset(self.probes_key(node_id), name, value)
        others: dict[NodeId, str] = {}
        for member in await read_members(self.store):
            other = str(member["id"])
            if other == node_id or not member["alive"]:
                continue
            with bus_errors():
                raw: Any = await client.hget(self.probes_key(other), name)
            if raw is not None:
                others[other] = raw.decode()
        return others

    # -- introspection ---------------------------------------------------------------------


async def read_members(store: RedisStore) -> list[dict[str, Any]]:
    """Every registered node with its last heartbeat (None once expired) and
    its drain state (``"draining"``, ``"drained"``, or None)."""
    client = store.client
    members_key = store.key("{nodes}:members")
    with bus_errors():
        members: dict[Any, Any] = await client.hgetall(members_key)
        drains = await read_drains(store)
        out = []
        for raw in members.values():
            rec = json.loads(raw)
            hb: Any = await client.get(store.key(f"{{nodes}}:hb:{rec['id']}"))
            beat = None
            if hb is not None:
                epoch, _, when = hb.decode().partition(" ")
                beat = float(when) if int(epoch) == rec["epoch"] else None
            rec["heartbeat"] = beat
            rec["alive"] = beat is not None
            drain = drains.get(str(rec["id"]))
            current = beat is not None and drain is not None and drain["epoch"] == rec["epoch"]
            rec["drain"] = drain["state"] if current and drain is not None else None
            out.append(rec)
    return sorted(out, key=lambda r: str(r["id"]))


def probes_key(store: RedisStore, node_id: NodeId) -> str:
    return store.key(f"{{nodes}}:probes:{node_id}")


def addresses_key(store: RedisStore) -> str:
    return store.key("{nodes}:addresses")


def drain_key(store: RedisStore) -> str:
    return store.key("{nodes}:drain")


async def read_drains(store: RedisStore) -> dict[NodeId, dict[str, Any]]:
    """Every drain record by node id, whatever its epoch (compare it with
    the member's)."""
    with bus_errors():
        raw: dict[Any, Any] = await store.client.hgetall(drain_key(store))
    out = {}
    for value in raw.values():
        record = json.loads(value)
        out[str(record["id"])] = record
    return out


@dataclass(frozen=True)
class AddressView:
    """One read of who is alive and who listens where, for address takeover
    and ``smbgw status``."""

    alive: dict[NodeId, dict[str, Any]]  # live members' records, by id
    entries: dict[NodeId, dict[str, Any]]  # every takeover node's entry, dead ones too
    # Live nodes that are draining or drained: they serve no address, their
    # own goes to the others as a dead node's would.
    draining: frozenset[NodeId] = frozenset()

    def active(self) -> dict[NodeId, dict[str, Any]]:
        """The live members that serve: alive and not drained."""
        return {n: rec for n, rec in self.alive.items() if n not in self.draining}

    def owners(self) -> dict[str, NodeId]:
        """address -> the node whose listen address it is (a live one first)."""
        out = {e["address"]: node for node, e in self.entries.items()}
        out.update({rec["address"]: node for node, rec in self.alive.items()})
        return out

    def served(self) -> dict[str, list[NodeId]]:
        """address -> the live nodes listening on it: a takeover node as it
        told the bus, any other live node on its own address."""
        out: dict[str, list[NodeId]] = {}
        for node, rec in sorted(self.alive.items()):
            if rec.get("takeover"):
                listening = self.entries.get(node, {}).get("serving", [])
            elif node in self.draining:
                listening = []  # it closed its listener
            else:
                listening = [rec["address"]]
            for address in listening:
                out.setdefault(address, []).append(node)
        return out


async def read_address_view(
    store: RedisStore, members: list[dict[str, Any]] | None = None
) -> AddressView:
    """``members``: what ``read_members`` just returned, if the caller has it."""
    if members is None:
        members = await read_members(store)
    with bus_errors():
        raw: dict[Any, Any] = await store.client.hgetall(addresses_key(store))
    entries = {}
    for value in raw.values():
        entry = json.loads(value)
        entries[str(entry["id"])] = entry
    alive = {str(m["id"]): m for m in members if m["alive"]}
    draining = frozenset(node for node, m in alive.items() if m.get("drain"))
    return AddressView(alive, entries, draining)
