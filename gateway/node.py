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
import uuid
from typing import Any

from oplock_bus.api import BreakNotice, LockBus
from oplock_bus.liveness import Liveness

from .config import Config, ConfigError
from .drain import DRAIN_TOPIC, NodeDrain
from .fs.vfs import ShareFS
from .smb import breaks, channels, opens
from .smb.channels import SESSION_TOPIC
from .smb.connection import SmbConnection
from .smb.durable import DurableTable
from .smb.limits import log_limit
from .smb.notify import ChangeEvent, NotifyHub, local_event
from .smb.replay import ReplayCache
from .smb.state import Open, Session, TreeConnect
from .takeover import AddressTakeover, listen_own, release_own

log = logging.getLogger("smbgw.node")

_SOCKET_RESERVE = 1024

NOTIFY_TOPIC = "notify"

Listener = tuple[str, int]  # (host, port) a node listens on


class Node:
    def __init__(self, config: Config, bus: LockBus) -> None:
        self.config = config
        self.bus = bus
        self.node_id = config.node_id
        self.server_guid = uuid.uuid5(uuid.NAMESPACE_URL, f"smbgw:{config.node_id}").bytes_le
        self.share_fs = {s.name.lower(): ShareFS(s.path) for s in config.shares}
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
        # Registered before the bus starts, so it listens before we serve.
        self.bus.register_node(self.node_id, self._deliver_break)
        self.bus.on_broadcast(NOTIFY_TOPIC, self._remote_change)
        self.bus.on_broadcast(SESSION_TOPIC, self._remote_previous_session)
        self.bus.on_broadcast(DRAIN_TOPIC, self._drain_requested)
        self.bus.fence_handler = self._fenced
        await self.bus.start()
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
        return self._servers[own]

    def _redis_liveness(self) -> Liveness | None:
        from oplock_bus.redis_bus import RedisBus

        return self.bus.liveness if isinstance(self.bus, RedisBus) else None

    def _liveness(self) -> Liveness:
        liveness = self._redis_liveness()
        if liveness is None:
            raise ConfigError("--takeover needs a Redis bus (--bus redis://...)")
        return liveness

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
        # Durable handles parked by that teardown cannot be trusted either.
        await self.drop_clients()

    async def stop(self) -> None:
        if self._drain is not None:
            await self._drain.stop()
        if self._takeover is not None:
            await self._takeover.stop()  # gives back what it took over, commands run
        servers = list(self._servers.values())
        for server in servers:
            server.close()
        for conn in list(self.connections):
            await conn.teardown()
        await self.durable.close_all()
        for server in servers:
            await server.wait_closed()
        await self.bus.stop()

    async def _accept(
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
