"""One gateway node, the composition root: it owns the shares, the bus, the
listening socket and the node-wide tables, and wires the SMB layer to the bus
(breaks in, change notifications and session replacements across nodes).
It is the SMB layer's ``NodeServices``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import resource
import secrets
import socket
import time
import uuid
from typing import Any

from oplock_bus.api import BreakNotice, BusUnavailable, LockBus, NodeIdInUse
from oplock_bus.liveness import Liveness

from .busstate import BusWatch
from .config import Config, ConfigError, ShareConfig
from .connpass import ConnectionPasser
from .drain import DRAIN_TOPIC, NodeDrain
from .fs.vfs import ShareFS, VolumeIdUnavailable
from .metrics import NodeMetrics
from .smb import breaks, channels, opens
from .smb.breakclock import BreakClock
from .smb.busoutage import BusOutage
from .smb.channels import SESSION_TOPIC
from .smb.connection import SmbConnection
from .smb.durable import DurableTable
from .smb.limits import log_limit
from .smb.notify import ChangeEvent, NotifyHub, local_event
from .smb.relay import Relays, smb_address
from .smb.replay import ReplayCache
from .smb.state import Open, Session, TreeConnect
from .status import STATUS_TOPIC, NodeStatus, runtime_dir
from .takeover import AddressTakeover, listen_own, release_own

log = logging.getLogger("smbgw.node")

_SOCKET_RESERVE = 1024

NOTIFY_TOPIC = "notify"
# The probe (LockBus.publish_probe) by which the nodes compare a share's root.
SHARE_PROBE = "share:{}"

Listener = tuple[str, int]  # (host, port) a node listens on


class Node:
    def __init__(self, config: Config, bus: LockBus) -> None:
        self.config = config
        self.bus = bus
        self.node_id = config.node_id
        # A node's workers (gateway/workers.py) are one server to its clients.
        server = config.worker_of or config.node_id
        self.server_guid = uuid.uuid5(uuid.NAMESPACE_URL, f"smbgw:{server}").bytes_le
        self.share_fs = {s.name.lower(): self._share_fs(s) for s in config.shares}
        self.allows_guest = any(s.guest_ok for s in config.shares)
        self.connections: set[SmbConnection] = set()
        self._per_address: dict[str, int] = {}  # open connections by client address
        self.opens: dict[str, Open] = {}  # by bus open id
        self.sessions: dict[int, Session] = {}  # by id, whatever their connections (channels.py)
        # Volatile FileIds start at a random point: a handle reconnected here
        # keeps the one another node gave it, which must not come up again.
        self._ids = itertools.count(secrets.randbits(40) + 1)
        # Its own address, and those it took over from dead nodes (takeover.py).
        self._servers: dict[Listener, asyncio.base_events.Server] = {}
        self._listener_of: dict[SmbConnection, Listener] = {}  # where each was accepted
        self._takeover: AddressTakeover | None = None
        self._drain: NodeDrain | None = None  # once it serves, on a Redis bus
        # Directory changes made here also go to the other nodes' watches.
        self.notify_hub = NotifyHub(publish=self._publish_change)
        self._broadcasts: set[asyncio.Task[None]] = set()
        self.durable = DurableTable(self._close)
        self.replays = ReplayCache()
        self._unvouched = False  # told the log, and fenced, once per lapse
        self._fencing: set[asyncio.Task[None]] = set()
        self.break_clock = BreakClock()  # breaks sent and acknowledged (metrics)
        self.fencings = 0  # times _fenced dropped every client (metrics)
        self.metrics: NodeMetrics | None = None  # with --metrics-listen, once started
        self.last_fenced: float | None = None  # wall time of the last fencing (status)
        self.status: NodeStatus | None = None  # `smbgw status`'s answers, once it serves
        # Requests the bus could not decide, told once per outage (busstate.py).
        self.bus_outage = BusOutage(config.node_id, bus)
        # On a shared bus, once serving: no new clients while the bus cannot vouch.
        self.bus_watch: BusWatch | None = None
        self.draining = False  # stop_listening() ran: it listens on nothing for good
        # A worker of several: each client's connections go to one of them.
        self.passer: ConnectionPasser | None = None
        if config.worker_of is not None and config.workers > 1:
            self.passer = ConnectionPasser(
                config.worker_of, config.worker_index, config.workers,
                self._adopted, config.logon_timeout,
            )  # fmt: skip
        # Binds to other nodes' sessions go there (smb/relay.py): only with other nodes.
        self.relays: Relays | None = None
        if bus.shared and config.multichannel:
            self.relays = Relays(
                config.node_id, bus, smb_address(config.listen_host, config.listen_port),
                self.sessions, self._writer_of, config.worker_index if self.passer else 0,
            )  # fmt: skip

    def _share_fs(self, share: ShareConfig) -> ShareFS:
        # With other nodes on the bus, st_dev will not do as the volume id:
        # hosts mounting one NFS, CephFS or GlusterFS volume give it different
        # numbers, so they would name one file differently and no break or
        # lock would cross them. Better not to serve at all.
        try:
            return ShareFS(
                share.path, volume_id=share.volume_id, st_dev_fallback=not self.bus.shared
            )
        except VolumeIdUnavailable:
            raise ConfigError(
                f"share {share.name}: cannot read or store its volume id (xattr "
                f"user.smbgw.volume_id on {share.path}: no user xattrs, or read-only); set "
                "volume_id in its [[shares]] entry, the same on every node (docs/operations.md)"
            ) from None

    def next_id(self) -> int:
        return next(self._ids)

    def vouched(self) -> bool:
        if self.bus.vouches(self.node_id):
            self._unvouched = False
            return True
        if not self._unvouched:
            self._unvouched = True
            log.error(
                "node %s: the bus cannot vouch for this node (no heartbeat renewal confirmed "
                "for most of its TTL: frozen, or cut off from Redis); it touches the volume "
                "for none of its clients and drops them",
                self.node_id,
            )
            task = asyncio.get_running_loop().create_task(self._fenced(self.node_id))
            self._fencing.add(task)
            task.add_done_callback(self._fencing.discard)
        return False

    # -- lifecycle -----------------------------------------------------------

    def _raise_descriptor_limit(self) -> None:
        """Every open holds a descriptor: take all the system allows, and keep
        1024 of them for sockets so that new clients can still connect."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
                soft = hard
            except (OSError, ValueError) as e:
                log.warning("descriptor limit stays %d: %s", soft, e)
        if not self.config.max_opens_per_node:
            self.config.max_opens_per_node = max(64, soft - _SOCKET_RESERVE)

    async def start(self) -> asyncio.base_events.Server:
        self._raise_descriptor_limit()
        if self.config.metrics_listen is not None:
            # First: a port in use stops the node before it joins the bus.
            self.metrics = NodeMetrics(self, self._redis_liveness())
            await self.metrics.start(*self.config.metrics_listen)
        redis_liveness = self._redis_liveness()
        self.status = NodeStatus(
            self, redis_liveness.store if redis_liveness is not None else None, redis_liveness
        )
        # Early too: a --runtime-dir that cannot be used stops the node before it joins the bus.
        self.status.check_socket(*runtime_dir(self.config.runtime_dir))
        # Registered before the bus starts, so it listens before we serve.
        self.bus.register_node(self.node_id, self._deliver_break)
        self.bus.on_broadcast(NOTIFY_TOPIC, self._remote_change)
        self.bus.on_broadcast(SESSION_TOPIC, self._remote_previous_session)
        self.bus.on_broadcast(DRAIN_TOPIC, self._drain_requested)
        self.bus.on_broadcast(STATUS_TOPIC, self._status_requested)
        self.bus.fence_handler = self._fenced
        self.bus.lost_handler = self._lost
        await self.bus.start()
        try:
            await self.bus.joined(self.node_id)
        except NodeIdInUse as e:
            raise ConfigError(
                f"node id {self.node_id} is in use by a live node at {e.address}: give this "
                "node another --node-id (if that node was killed, its id is free again "
                "node_ttl seconds later)"
            ) from None
        await self._compare_shares()
        if self.relays is not None:  # before it serves: a session id names its node at once
            await self.relays.start()
        if self.passer is not None:  # before it accepts: another worker may pass at once
            await self.passer.start()
        own = (self.config.listen_host, self.config.listen_port)
        if not self.config.takeover:
            await self.listen(*own)
        else:
            liveness = self._liveness()
            await listen_own(
                self, liveness, self.node_id, *own, command=self.config.takeover_command
            )
            self._takeover = AddressTakeover(
                self.node_id, liveness, self, self.config.takeover_command
            )
            self._takeover.start()
        redis = self._redis_liveness()
        if redis is not None:  # only a Redis bus carries `smbgw drain`'s request
            self._drain = NodeDrain(self, redis, self.config.takeover)
        if self.bus.shared:
            self.bus_watch = BusWatch(self)
            self.bus_watch.start()
        # Last: it answers for a node that serves (its admin socket, and on a
        # Redis bus the requests of `smbgw status --bus`).
        await self.status.start()
        return self._servers[own]

    async def _compare_shares(self) -> None:
        """Refuse to serve a share whose root the other live nodes name
        differently (volume id or inode): every file's identity would differ
        too. The first node to enter a share's probe sets it, until it stops."""
        for share in self.config.shares:
            mine = self.share_fs[share.name.lower()].root_key()
            seen = await self.bus.publish_probe(
                self.node_id, SHARE_PROBE.format(share.name.lower()), mine
            )
            for other, theirs in sorted(seen.items()):
                if theirs != mine:
                    raise ConfigError(_differs(share.name, mine, other, theirs))

    def _redis_liveness(self) -> Liveness | None:
        from oplock_bus.redis_bus import RedisBus

        return self.bus.liveness if isinstance(self.bus, RedisBus) else None

    def _liveness(self) -> Liveness:
        liveness = self._redis_liveness()
        if liveness is None:
            raise ConfigError("--takeover needs a Redis bus (--bus redis://...)")
        return liveness

    def _status_requested(self, payload: dict[str, Any]) -> None:
        if self.status is not None:
            self.status.requested(payload)

    def _drain_requested(self, payload: dict[str, Any]) -> None:
        # Before it serves, a request waits: the command repeats it.
        if self._drain is not None:
            self._drain.requested(payload)

    # -- listening sockets (Listeners, for takeover.py) ------------------------

    async def listen(self, host: str, port: int) -> None:
        self._servers[(host, port)] = await asyncio.start_server(
            functools.partial(self._accept, listener=(host, port)),
            host,
            port,
            reuse_address=True,
            # The node's workers share its address; the kernel spreads clients.
            reuse_port=self.config.worker_of is not None,
            limit=1024 * 1024,
        )

    async def unlisten(self, host: str, port: int, drop_clients: bool = True) -> int:
        """Stop listening on (host, port) and drop the connections accepted
        there: their clients come back through the address's owner."""
        server = self._servers.pop((host, port), None)
        if server is None:
            return 0
        server.close()
        if not drop_clients:
            return 0
        accepted = [c for c, where in self._listener_of.items() if where == (host, port)]
        for conn in accepted:
            await conn.teardown()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5)
        return len(accepted)

    def listening(self) -> list[str]:
        return [f"{host}:{port}" for host, port in self._servers]

    # -- draining (Drainable, for drain.py) --------------------------------------

    async def stop_listening(self) -> list[str]:
        """Close every listening socket, taken over or our own, so that
        another node can bind the address; the connections stay for now.
        With a takeover command our own address leaves this host too
        (``remove``), for the taker to add it on its own."""
        self.draining = True  # the bus watch must not listen again
        if self.passer is not None:  # the other workers keep new clients of ours
            await self.passer.stop()
        addresses = self.listening()
        if self._takeover is not None:
            await self._takeover.stop("this node drains", drop_clients=False)
            self._takeover = None
        for host, port in list(self._servers):
            await self.unlisten(host, port, drop_clients=False)
        host, port = self.config.listen_host, self.config.listen_port
        command = self.config.takeover_command if self.config.takeover else None
        if command and f"{host}:{port}" in addresses:  # not again when a drain resumes
            await release_own(command, self.node_id, host, port)
        return addresses

    async def _lost(self, node_id: str, opens: list[tuple[str, str]]) -> None:
        """After a bus recovery these opens conflicted with what another node
        held, and were given up: their clients must not go on using them."""
        for _file, open_id in opens:
            op = self.opens.get(open_id)
            conn = op.connection if op is not None else None
            if conn in self.connections:
                log.error("dropping the client of %s: its open was lost in the bus recovery",
                          op.smb_name if op is not None else open_id)  # fmt: skip
                await conn.teardown()  # type: ignore[union-attr]

    async def drop_clients(self) -> int:
        """Close every client connection as if its transport had dropped:
        durable handles go to the bus (or are parked here), then those only
        this node could give back are closed, since it serves nobody now."""
        connections = list(self.connections)
        for conn in connections:
            await conn.teardown()
        await self.durable.close_all()
        return len(connections)

    def _publish_change(self, event: ChangeEvent) -> None:
        task = asyncio.get_running_loop().create_task(self._broadcast_change(event))
        self._broadcasts.add(task)
        task.add_done_callback(self._broadcasts.discard)

    async def _broadcast_change(self, event: ChangeEvent) -> None:
        try:
            await self.bus.broadcast(NOTIFY_TOPIC, event.to_dict())
        except BusUnavailable as e:  # expected while Redis is away: one line per outage
            self.bus_outage.failed(e, f"sending change {event} to the other nodes")
        except Exception as e:  # noqa: BLE001 - a watch elsewhere misses one change
            log.warning("change %s not sent to the other nodes: %s", event, e)

    def _remote_change(self, payload: dict[str, Any]) -> None:
        try:
            event = ChangeEvent.from_dict(payload)
        except ValueError as e:
            log.warning("malformed change from the bus: %s", e)
            return
        self.notify_hub.deliver(event)

    async def _fenced(self, node_id: str) -> None:
        """The bus can no longer vouch for us: the other nodes are about to
        release our grants, so no client may keep caching under them."""
        log.error("node %s lost the bus: dropping every client connection", node_id)
        self.fencings += 1
        self.last_fenced = time.time()
        # Durable handles parked by that teardown cannot be trusted either.
        await self.drop_clients()

    async def stop(self) -> None:
        if self.bus_watch is not None:  # first: it must not listen again meanwhile
            await self.bus_watch.stop()
        if self.status is not None:  # while the bus runs: its entries go with it
            await self.status.stop()
        if self._drain is not None:
            await self._drain.stop()
        if self._takeover is not None:
            await self._takeover.stop()  # gives back what it took over, commands run
        servers = list(self._servers.values())
        for server in servers:
            server.close()
        if self.passer is not None:
            await self.passer.stop()
        if self.relays is not None:
            await self.relays.stop()
        for conn in list(self.connections):
            await conn.teardown()
        await self.durable.close_all()
        for server in servers:
            await server.wait_closed()
        await self.bus.stop()
        if self.metrics is not None:  # last: a scrape shows the node until it is gone
            await self.metrics.stop()

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener: Listener
    ) -> None:
        if self.passer is not None:
            routed = await self.passer.route(reader, writer)
            if routed is None:  # gone to the worker that serves its client
                return
            reader, writer = routed
        await self._serve(reader, writer, listener)

    async def _adopted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A connection another worker accepted and passed here (connpass.py)."""
        await self._serve(reader, writer, (self.config.listen_host, self.config.listen_port))

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener: Listener
    ) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = writer.get_extra_info("peername")
        address = peer[0] if peer else "?"
        if self._per_address.get(address, 0) >= self.config.max_connections_per_address:
            log_limit(f"{address}:0", "max_connections_per_address")
            writer.close()
            return
        self._per_address[address] = self._per_address.get(address, 0) + 1
        conn = SmbConnection(self, reader, writer)
        self.connections.add(conn)
        self._listener_of[conn] = listener
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)
            self._listener_of.pop(conn, None)
            left = self._per_address.pop(address) - 1
            if left:
                self._per_address[address] = left

    def _writer_of(self, conn: object) -> asyncio.StreamWriter | None:
        return conn.writer if isinstance(conn, SmbConnection) else None

    async def _close(self, op: Open) -> None:
        await opens.close(self, op)

    async def _deliver_break(self, notice: BreakNotice) -> None:
        await breaks.deliver(self, notice)

    def _remote_previous_session(self, payload: dict[str, Any]) -> None:
        """Another node's new session replaces one of ours (MS-SMB2 3.3.5.5.3)."""
        task = channels.remote_previous_session(self, payload)
        if task is not None:
            self._broadcasts.add(task)
            task.add_done_callback(self._broadcasts.discard)

    def notify_change(
        self, tree: TreeConnect, host_path: str, action: str, is_dir: bool, mask: int = 0
    ) -> None:
        """Report a change made through ``tree``; ``mask`` 0 takes the action's usual bits."""
        root = None if tree.fs is None else tree.fs.root
        event = local_event(
            tree.share.name, root, host_path, action, is_dir, origin=self.node_id, mask=mask
        )
        if event is not None:
            self.notify_hub.report(event)

    def notify_rename(self, tree: TreeConnect, old_path: str, new_path: str, is_dir: bool) -> None:
        root = None if tree.fs is None else tree.fs.root
        event = local_event(
            tree.share.name, root, new_path, "renamed", is_dir,
            origin=self.node_id, old_host_path=old_path,
        )  # fmt: skip
        if event is not None:
            self.notify_hub.report(event)


def _differs(share: str, mine: str, other: str, theirs: str) -> str:
    """One line on how this node's view of a share differs from ``other``'s."""
    my_volume, _, my_inode = mine.partition(":")
    their_volume, _, their_inode = theirs.partition(":")
    if my_volume != their_volume:
        return (
            f"share {share}: volume id {my_volume} here, {their_volume} on node {other}: "
            "set the same volume_id for the share on every node (docs/operations.md)"
        )
    return (
        f"share {share}: its root is inode {my_inode} here, {their_inode} on node {other}: "
        "not the same directory, or a filesystem without stable inode numbers "
        "(docs/operations.md)"
    )
