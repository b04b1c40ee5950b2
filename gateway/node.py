"""One gateway node: its shares, its bus, its connections and their opens."""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct
import uuid
from typing import TYPE_CHECKING, Any

from oplock_bus.api import BreakNotice, LockBus

from .channels import forget
from .config import Config
from .connection import SmbConnection
from .durable import DurableTable
from .handlers.breaks import request_is_waiting_on_break
from .notify import ChangeEvent, NotifyHub, end_watch, local_event
from .protocol.constants import Command
from .state import Open, Session, TreeConnect
from .vfs import ShareFS

if TYPE_CHECKING:
    from .connection import Handler

log = logging.getLogger("smbgw.node")

NOTIFY_TOPIC = "notify"
SESSION_TOPIC = "previous-session"
_OPLOCK_BREAK = struct.Struct("<HBBIQQ")
_LEASE_BREAK = struct.Struct("<HHI16sIIIII")
LEASE_BREAK_ACK_REQUIRED = 0x01


class Node:
    def __init__(self, config: Config, bus: LockBus) -> None:
        self.config = config
        self.bus = bus
        self.node_id = config.node_id
        self.server_guid = uuid.uuid5(uuid.NAMESPACE_URL, f"smbgw:{config.node_id}").bytes_le
        self.share_fs = {s.name.lower(): ShareFS(s.path) for s in config.shares}
        self.allows_guest = any(s.guest_ok for s in config.shares)
        self.connections: set[SmbConnection] = set()
        self.opens: dict[str, Open] = {}  # by bus open id
        self.sessions: dict[int, Session] = {}  # by id, whatever their connections (channels.py)
        self._ids = itertools.count(1)
        self.handlers: dict[int, Handler] = _handler_table()
        self._server: asyncio.base_events.Server | None = None
        # Directory changes made here also go to the other nodes' watches.
        self.notify_hub = NotifyHub(publish=self._publish_change)
        self._broadcasts: set[asyncio.Task[None]] = set()
        self.durable = DurableTable(self.close_open)

    def next_id(self) -> int:
        return next(self._ids)

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> asyncio.base_events.Server:
        # Registered before the bus starts, so it listens before we serve.
        self.bus.register_node(self.node_id, self.deliver_break)
        self.bus.on_broadcast(NOTIFY_TOPIC, self._remote_change)
        self.bus.on_broadcast(SESSION_TOPIC, self._remote_previous_session)
        if hasattr(self.bus, "fence_handler"):
            self.bus.fence_handler = self._fenced
        await self.bus.start()
        self._server = await asyncio.start_server(
            self._accept,
            self.config.listen_host,
            self.config.listen_port,
            reuse_address=True,
            limit=1024 * 1024,
        )
        return self._server

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
        for conn in list(self.connections):
            await conn.teardown()
        # Durable handles parked by that teardown cannot be trusted either.
        await self.durable.close_all()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            await conn.teardown()
        await self.durable.close_all()
        if self._server is not None:
            await self._server.wait_closed()
        await self.bus.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            import socket

            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = SmbConnection(self, reader, writer)
        self.connections.add(conn)
        await conn.run()

    # -- teardown of client state ---------------------------------------------

    async def close_open(self, op: Open) -> None:
        """Release a handle: bus registration, fd, delete-on-close."""
        if op.closed:
            return
        op.closed = True
        if op.connection is not None:
            op.connection.opens.pop(op.volatile_id, None)
        self.opens.pop(op.bus_open_id, None)
        from .handlers.create import finish_close

        await finish_close(self, op)

    async def disconnect_tree(
        self, conn: SmbConnection, tree: TreeConnect, lost: bool = False
    ) -> None:
        # The tree's opens may have been made through any channel of its session.
        tables = [conn.opens] + [c.opens for c in tree.session.channels if c is not conn]
        for opens in tables:
            for op in [o for o in opens.values() if o.tree is tree]:
                if lost and self.durable.keeps(op):
                    # A parked handle has no connection to answer a pending notify on.
                    end_watch(op.notify)
                    op.notify = None
                    opens.pop(op.volatile_id, None)
                    self.durable.park(op)
                else:
                    await self.close_open(op)
        tree.session.trees.pop(tree.tree_id, None)

    async def logoff(self, conn: SmbConnection, session: Session, lost: bool = False) -> None:
        """End a session; ``lost`` (the transport dropped) keeps durable handles."""
        for tree in list(session.trees.values()):
            await self.disconnect_tree(conn, tree, lost)
        session.state = "expired"

    async def end_previous_session(self, session_id: int, successor: Session) -> None:
        old = self.sessions.get(session_id)
        if old is not None and old is not successor and old.channels:
            if not _same_user(old, successor.username, successor.domain):
                return  # another user's session id: leave it alone
            await self.logoff(next(iter(old.channels)), old, lost=True)
            forget(self, old)
            log.info("session %#x replaced by %#x", session_id, successor.session_id)
            return
        # Not here: a client failing over from another node names the session
        # it had there, whose opens and locks that node may still hold.
        payload = {"session": session_id, "user": successor.username,
                   "domain": successor.domain, "by": successor.session_id}  # fmt: skip
        try:
            await self.bus.broadcast(SESSION_TOPIC, payload)
        except Exception as e:  # noqa: BLE001 - the old session then ends with its transport
            log.warning("session %#x not ended on the other nodes: %s", session_id, e)

    def _remote_previous_session(self, payload: dict[str, Any]) -> None:
        """Another node's new session replaces one of ours (MS-SMB2 3.3.5.5.3)."""
        try:
            sid = int(payload["session"])
            user, domain = str(payload["user"]), str(payload["domain"])
        except (KeyError, TypeError, ValueError):
            log.warning("malformed session replacement from the bus: %r", payload)
            return
        old = self.sessions.get(sid)
        if old is None or not old.channels or not _same_user(old, user, domain):
            return
        conn = next(iter(old.channels))
        # Unknown from now on, before the client's next request reaches us.
        forget(self, old)
        task = asyncio.get_running_loop().create_task(self.logoff(conn, old, lost=True))
        self._broadcasts.add(task)
        task.add_done_callback(self._broadcasts.discard)
        log.info("session %#x replaced by %#x on another node", sid, payload.get("by", 0))

    def set_lease_state(
        self, client_guid: bytes, lease_key: bytes, state: int, epoch: int | None
    ) -> None:
        """Remember a lease's state on its opens, for a durable reconnect to report."""
        for op in self.opens.values():
            if op.lease_key == lease_key and op.client_guid == client_guid:
                op.lease_state = state
                if epoch is not None:
                    op.lease_epoch = epoch

    def notify_change(
        self, tree: TreeConnect, host_path: str, action: str, is_dir: bool, mask: int = 0
    ) -> None:
        """Report a change made through ``tree``; ``mask`` 0 takes the action's usual bits."""
        event = local_event(tree, host_path, action, is_dir, origin=self.node_id, mask=mask)
        if event is not None:
            self.notify_hub.report(event)

    def notify_rename(self, tree: TreeConnect, old_path: str, new_path: str, is_dir: bool) -> None:
        event = local_event(
            tree, new_path, "renamed", is_dir, origin=self.node_id, old_host_path=old_path
        )
        if event is not None:
            self.notify_hub.report(event)

    # -- breaks ----------------------------------------------------------------

    async def deliver_break(self, notice: BreakNotice) -> None:
        """Send the break the bus decided to the client holding the open or lease."""
        request_is_waiting_on_break()
        if notice.lease is not None:
            guid, key = notice.lease.client_guid, notice.lease.key
            target = self._lease_holder(guid, key)
            if target is None:
                parked = self.durable.lease_holders(guid, key)
                for op in parked:
                    self.durable.purge(op, "lease break while disconnected")
                if not parked:
                    log.debug("lease break for %s: no open on this node", notice.lease)
                return
            if not notice.ack_required:
                self.set_lease_state(guid, key, notice.new_level, notice.epoch)
            flags = LEASE_BREAK_ACK_REQUIRED if notice.ack_required else 0
            epoch = notice.epoch if notice.version == 2 else 0
            body = _LEASE_BREAK.pack(
                44, epoch, flags, notice.lease.key, notice.current_state, notice.new_level,
                0, 0, 0,
            )  # fmt: skip
            target.connection.send_notification(Command.OPLOCK_BREAK, body, target.tree.session)
            return
        if notice.open_id is None:
            return
        holder = self.opens.get(notice.open_id)
        if holder is None or holder.closed:
            return
        if holder.connection is None:
            self.durable.purge(holder, "oplock break while disconnected")
            return
        op = holder
        level = 0x01 if notice.new_level == 0x01 else 0x00
        body = _OPLOCK_BREAK.pack(24, level, 0, 0, op.persistent_id, op.volatile_id)
        op.connection.send_notification(Command.OPLOCK_BREAK, body, op.tree.session)

    def _lease_holder(self, client_guid: bytes, lease_key: bytes) -> Open | None:
        best: Open | None = None
        for op in self.opens.values():
            conn = op.connection
            if op.lease_key == lease_key and conn is not None and conn.client_guid == client_guid:
                if not conn.closed:
                    best = op
        return best


def _handler_table() -> dict[int, Handler]:
    from .handlers import (
        create,
        directory,
        echo,
        info,
        ioctl,
        lock,
        negotiate,
        notify,
        oplock,
        readwrite,
        session,
        tree,
    )

    return {
        Command.NEGOTIATE: negotiate.handle_negotiate,
        Command.SESSION_SETUP: session.handle_session_setup,
        Command.LOGOFF: session.handle_logoff,
        Command.TREE_CONNECT: tree.handle_tree_connect,
        Command.TREE_DISCONNECT: tree.handle_tree_disconnect,
        Command.CREATE: create.handle_create,
        Command.CLOSE: create.handle_close,
        Command.FLUSH: readwrite.handle_flush,
        Command.READ: readwrite.handle_read,
        Command.WRITE: readwrite.handle_write,
        Command.LOCK: lock.handle_lock,
        Command.IOCTL: ioctl.handle_ioctl,
        Command.ECHO: echo.handle_echo,
        Command.QUERY_DIRECTORY: directory.handle_query_directory,
        Command.CHANGE_NOTIFY: notify.handle_change_notify,
        Command.QUERY_INFO: info.handle_query_info,
        Command.SET_INFO: info.handle_set_info,
        Command.OPLOCK_BREAK: oplock.handle_oplock_break,
    }


def _same_user(session: Session, user: str, domain: str) -> bool:
    return (session.username.lower(), session.domain.lower()) == (user.lower(), domain.lower())
