"""A node for handler unit tests: the real pieces a handler reaches, without a socket.

``FakeNode`` is a ``NodeServices`` built the way ``gateway.node.Node`` builds
itself: a real ``Config`` with one share on a test directory, its real
``ShareFS``, a real ``InProcessBus``, ``DurableTable`` and ``NotifyHub``. It only
adds a record of the changes reported (``changes``, ``renames``). ``FakeClient``
is one logged-on client with a tree connect on that share; it builds request
bodies with the project's client builders (``clients.messages``) and hands
them to the real handlers.

Contexts get a real ``_went_async`` future, as ``SmbConnection._run_handler``
gives them, so a handler that would answer STATUS_PENDING shows it: its
``ctx.async_id`` becomes non-zero. Nothing reads the future (no interim reply
is sent); the handler simply runs on to its final reply.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Awaitable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from clients.messages import FileId, LockElement, close_request, create_request, lock_request
from gateway.config import Config, ShareConfig
from gateway.fs.vfs import ShareFS
from gateway.protocol.constants import (
    FILE_ALL_ACCESS,
    FILE_GENERIC_EXECUTE,
    FILE_GENERIC_READ,
    Command,
    Dialect,
    NtStatusError,
    SigningAlgorithm,
)
from gateway.protocol.header import Header
from gateway.protocol.wire import WireCodec
from gateway.smb import breaks, opens
from gateway.smb.breakclock import BreakClock
from gateway.smb.busoutage import BusOutage
from gateway.smb.context import Reply, RequestContext
from gateway.smb.durable import DurableTable
from gateway.smb.handlers.close import handle_close
from gateway.smb.handlers.create import handle_create
from gateway.smb.handlers.lock import handle_lock
from gateway.smb.notify import NotifyHub, local_event
from gateway.smb.replay import ReplayCache
from gateway.smb.services import NodeServices
from gateway.smb.state import (
    Channel,
    ConnectionState,
    Open,
    Session,
    SessionState,
    TreeConnect,
)
from oplock_bus.api import BreakNotice, LockBus
from oplock_bus.memory import InProcessBus

T = TypeVar("T")

SHARE = "share"


def run(coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
    """Run one async test body, bounded (pytest-asyncio is not a dependency)."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def status_of(call: Awaitable[Reply]) -> int:
    """The status a connection would answer with: the reply's, or the one raised."""
    try:
        return (await call).status
    except NtStatusError as e:
        return e.status


class FakeNode:
    """One node's services over a share at ``share_dir``; use as ``async with``."""

    def __init__(
        self, share_dir: Path, *, read_only: bool = False, break_timeout: float = 1.0
    ) -> None:
        share_dir.mkdir(parents=True, exist_ok=True)
        share = ShareConfig(name=SHARE, path=str(share_dir), read_only=read_only)
        self.config: Config = Config(shares=[share], node_id="fake", break_timeout=break_timeout)
        self.node_id: str = self.config.node_id
        self.bus: LockBus = InProcessBus(node_id=self.node_id, break_timeout=break_timeout)
        self.server_guid: bytes = uuid.uuid5(uuid.NAMESPACE_URL, "smbgw:fake").bytes_le
        self.allows_guest: bool = False
        self.share_fs: dict[str, ShareFS] = {SHARE: ShareFS(str(share_dir))}
        self.opens: dict[str, Open] = {}
        self.sessions: dict[int, Session] = {}
        self.durable: DurableTable = DurableTable(self._close)
        self.replays = ReplayCache()
        self.notify_hub: NotifyHub = NotifyHub()
        self.break_clock: BreakClock = BreakClock()
        self.bus_outage: BusOutage = BusOutage(self.node_id, self.bus)
        self.relays = None  # one node alone relays no bind (gateway/smb/relay.py)
        self.changes: list[tuple[str, str, bool]] = []  # (action, host path, is_dir)
        self.renames: list[tuple[str, str, bool]] = []  # (old path, new path, is_dir)
        self._ids = itertools.count(1)

    @property
    def fs(self) -> ShareFS:
        return self.share_fs[SHARE]

    async def __aenter__(self) -> FakeNode:
        # As Node.start: the break handler is registered before the bus starts.
        self.bus.register_node(self.node_id, self._deliver_break)
        await self.bus.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Handles a test left open still hold descriptors and bus entries.
        for op in list(self.opens.values()):
            await opens.close(self, op)
        await self.durable.close_all()
        await self.bus.stop()

    def next_id(self) -> int:
        return next(self._ids)

    def vouched(self) -> bool:
        return self.bus.vouches(self.node_id)

    def notify_change(
        self, tree: TreeConnect, host_path: str, action: str, is_dir: bool, mask: int = 0
    ) -> None:
        self.changes.append((action, host_path, is_dir))
        root = None if tree.fs is None else tree.fs.root
        event = local_event(tree.share.name, root, host_path, action, is_dir,
                            origin=self.node_id, mask=mask)  # fmt: skip
        if event is not None:
            self.notify_hub.report(event)

    def notify_rename(self, tree: TreeConnect, old_path: str, new_path: str, is_dir: bool) -> None:
        self.renames.append((old_path, new_path, is_dir))
        root = None if tree.fs is None else tree.fs.root
        event = local_event(tree.share.name, root, new_path, "renamed", is_dir,
                            origin=self.node_id, old_host_path=old_path)  # fmt: skip
        if event is not None:
            self.notify_hub.report(event)

    def client(self, username: str = "alice") -> FakeClient:
        conn = RecordingConnection()
        session = make_session(self, conn, username)
        return FakeClient(self, conn, session, make_tree(self, session))

    async def _close(self, op: Open) -> None:
        await opens.close(self, op)

    async def _deliver_break(self, notice: BreakNotice) -> None:
        await breaks.deliver(self, notice)


# mypy checks here that FakeNode satisfies the Protocol the handlers are typed against.
def as_services(node: FakeNode) -> NodeServices:
    return node


class RecordingConnection(ConnectionState):
    """A negotiated SMB 3.1.1 connection that keeps what the server sends unasked."""

    def __init__(self, dialect: int = Dialect.SMB3_1_1) -> None:
        codec = WireCodec(max_frame=8 * 1024 * 1024)
        codec.dialect = dialect
        super().__init__(codec, peer="fake-client")
        self.negotiated = True
        self.client_guid = uuid.uuid4().bytes
        self.sent: list[tuple[int, bytes]] = []  # (command, body) of breaks

    def send_notification(self, command: int, body: bytes, session: Session | None) -> None:
        self.sent.append((command, body))


def make_session(node: FakeNode, conn: ConnectionState, username: str = "alice") -> Session:
    """A session past SESSION_SETUP, entered where channels.py enters one."""
    session = Session(
        session_id=node.next_id(),
        dialect=conn.codec.dialect,
        state=SessionState.VALID,
        username=username,
        owner=username,
    )
    session.channels[conn] = Channel(
        session, conn, primary=True, signing_algorithm=SigningAlgorithm.AES_CMAC
    )
    node.sessions[session.session_id] = session
    conn.sessions[session.session_id] = session
    return session


def make_tree(node: FakeNode, session: Session) -> TreeConnect:
    """A tree connect on the share, with the maximal access TREE_CONNECT gives."""
    share = node.config.shares[0]
    access = (FILE_GENERIC_READ | FILE_GENERIC_EXECUTE) if share.read_only else FILE_ALL_ACCESS
    tree = TreeConnect(session.next_tree_id(), session, share, node.fs, access)
    session.trees[tree.tree_id] = tree
    return tree


class FakeClient:
    """One client's connection, session and tree; its requests go to the real handlers."""

    def __init__(
        self, node: FakeNode, conn: RecordingConnection, session: Session, tree: TreeConnect
    ) -> None:
        self.node = node
        self.conn = conn
        self.session = session
        self.tree = tree
        self._message_ids = itertools.count(1)

    def request(self, command: int, body: bytes) -> RequestContext:
        header = Header(
            command=command,
            message_id=next(self._message_ids),
            credits=1,
            tree_id=self.tree.tree_id,
            session_id=self.session.session_id,
        )
        ctx = RequestContext(
            self.conn, self.node, header, body, header.pack() + body,
            session=self.session, tree=self.tree, related_file_id=None, encrypted=False,
        )  # fmt: skip
        ctx._went_async = asyncio.get_running_loop().create_future()
        return ctx

    async def create(
        self,
        name: str,
        *,
        access: int,
        share: int,
        disposition: int,
        options: int = 0,
    ) -> Reply:
        body = create_request(
            name, access=access, share=share, disposition=disposition, options=options
        )
        return await handle_create(self.request(Command.CREATE, body))

    async def close(self, fid: FileId) -> Reply:
        return await handle_close(self.request(Command.CLOSE, close_request(fid)))

    async def lock(self, fid: FileId, *elements: LockElement) -> Reply:
        return await handle_lock(self.request(Command.LOCK, lock_request(fid, list(elements))))
