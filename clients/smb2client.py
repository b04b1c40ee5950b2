"""An asyncio SMB2/3 client that receives oplock and lease breaks.

    client = await SMB2Client.connect("127.0.0.1", 4450, user="test", password="test")
    tree = await client.tree_connect("share")
    f = await tree.create("a.txt", oplock=OplockLevel.BATCH, on_break=handler)
    await f.write(0, b"data"); data = await f.read(0, 4)
    await f.close(); await client.close()

NEGOTIATE offers 2.1, 3.0, 3.0.2 and 3.1.1 (with the preauth integrity hash);
SESSION_SETUP is NTLM inside SPNEGO through pyspnego; signing and encryption
use `gateway.protocol.crypto`. A break is routed to the open it names (an
oplock break by FileId, a lease break by LeaseKey) and handed to that open's
``on_break``; an open without one acknowledges at once with the level the
server offered, as a client that caches nothing would.

A durable or persistent handle (``create(..., durable=DurableRequest(...))``)
can be taken back after the connection is lost: `clients.reconnect` plugs a
`Recovery` into the client, and every request on such an open goes through it
(`OpenRequest` says how to build the request again for a new connection).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import spnego

from gateway.protocol import crypto
from gateway.protocol.constants import (
    AccessMask,
    Capabilities,
    Command,
    CreateDisposition,
    CreateOptions,
    Dialect,
    HeaderFlags,
    OplockLevel,
    SecurityMode,
    SessionFlags,
    ShareAccess,
    ShareFlags,
    Status,
)
from gateway.protocol.header import Header

from . import messages as m
from .messages import (
    BreakNotice,
    DurableReconnect,
    DurableRequest,
    FileId,
    LeaseRequest,
    LockElement,
    SmbProtocolError,
)
from .transport import Response, SessionChannel, SmbError, Transport

log = logging.getLogger("clients.smb2")

__all__ = [
    "BreakHandler",
    "DurableRequest",
    "Login",
    "Open",
    "OpenRequest",
    "Recovery",
    "SMB2Client",
    "SmbError",
    "Tree",
]

DEFAULT_DIALECTS = (Dialect.SMB2_1, Dialect.SMB3_0, Dialect.SMB3_0_2, Dialect.SMB3_1_1)
READ_WRITE = int(AccessMask.GENERIC_READ | AccessMask.GENERIC_WRITE)
SHARE_ALL = int(ShareAccess.READ | ShareAccess.WRITE | ShareAccess.DELETE)
_MAX_IO = 1024 * 1024

BreakHandler = Callable[["Open", BreakNotice], Awaitable[None] | None]


@dataclass(frozen=True)
class Login:
    """How a client logged on: what it needs to log on again after losing its connection."""

    port: int
    user: str
    password: str
    domain: str = ""
    dialects: tuple[int, ...] = DEFAULT_DIALECTS
    require_signing: bool = False
    encrypt: bool = False
    timeout: float = 10.0


@dataclass(frozen=True)
class OpenRequest:
    """A request on an open, built again at every send: after a reconnect the
    tree has a new id and the handle may have a new volatile FileId."""

    command: int
    body: Callable[[FileId], bytes]
    payload: int = 0
    expect: tuple[int, ...] = (Status.SUCCESS,)
    locks: tuple[LockElement, ...] = field(default=())  # a LOCK's elements, for its replay


class Recovery(Protocol):
    """A reconnecting client (`clients.reconnect.Reconnector`) plugged into `SMB2Client`."""

    def connection_lost(self, reason: BaseException) -> None:
        """The transport ended without our asking: start getting it back."""

    async def ready(self) -> None:
        """Return once no reconnect is due or running (raise if one failed)."""

    async def send(self, op: Open, request: OpenRequest) -> Response:
        """Send ``request`` on durable ``op``, reconnecting and replaying as needed."""

    def stop(self) -> None:
        """The client is closing: reconnect no more."""


@dataclass(frozen=True)
class _Negotiated:
    """What every session of a connection starts from."""

    response: m.NegotiateResponse
    security_mode: int
    preauth: bytes  # the connection's preauth integrity hash after NEGOTIATE (3.1.1)
    cipher: int | None
    require_signing: bool


class SMB2Client:
    """One connection with one authenticated session (``add_session`` for more)."""

    def __init__(self, transport: Transport, host: str, *, receives_breaks: bool = True) -> None:
        self.transport = transport
        self.host = host
        self.client_guid = os.urandom(16)
        self.dialect = 0
        self.server_capabilities = 0
        self.max_read = 65536
        self.max_write = 65536
        self.channel: SessionChannel | None = None
        self.session_id = 0
        self.encrypt = False
        self.breaks_received = 0
        self.login: Login | None = None  # set by connect(): what a reconnect repeats
        self.recovery: Recovery | None = None
        self.trees: list[Tree] = []
        self._opens: dict[FileId, Open] = {}
        self._parked: list[BreakNotice] = []
        self._tasks: set[asyncio.Future[None]] = set()
        self._negotiated: _Negotiated | None = None
        if receives_breaks:
            transport.on_notification = self._on_notification
            transport.on_lost = self._lost

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int = 445,
        *,
        user: str,
        password: str,
        domain: str = "",
        dialects: tuple[int, ...] = DEFAULT_DIALECTS,
        require_signing: bool = False,
        encrypt: bool = False,
        timeout: float = 10.0,
        client_guid: bytes | None = None,
        previous_session_id: int = 0,
    ) -> SMB2Client:
        """``client_guid`` and ``previous_session_id``: a client coming back after a
        lost connection keeps its ClientGuid (its leases and durable handles are
        known by it) and names the session it lost."""
        login = Login(port, user, password, domain, dialects, require_signing, encrypt, timeout)
        transport = await Transport.open(host, port, timeout)
        client = cls(transport, host)
        client.login = login
        if client_guid is not None:
            client.client_guid = client_guid
        try:
            await asyncio.wait_for(client._login(login, previous_session_id), timeout)
        except BaseException:
            await transport.close()
            raise
        return client

    def adopt(self, fresh: SMB2Client) -> None:
        """Carry on over ``fresh``'s connection and session (a reconnect): trees
        and opens stay these objects, and breaks arriving there come here."""
        self.transport = fresh.transport
        self.dialect, self.server_capabilities = fresh.dialect, fresh.server_capabilities
        self.max_read, self.max_write = fresh.max_read, fresh.max_write
        self.channel, self.session_id = fresh.channel, fresh.session_id
        self.encrypt, self._negotiated = fresh.encrypt, fresh._negotiated
        self.transport.on_notification = self._on_notification
        self.transport.on_lost = self._lost

    def _lost(self, reason: BaseException) -> None:
        if self.recovery is not None:
            self.recovery.connection_lost(reason)

    # -- NEGOTIATE and SESSION_SETUP ---------------------------------------------------

    async def _login(self, login: Login, previous_session_id: int) -> None:
        await self._negotiate(login.dialects, login.require_signing, login.encrypt)
        await self._session_setup(
            login.user, login.password, login.domain, login.encrypt, previous_session_id
        )

    async def _negotiate(
        self, dialects: tuple[int, ...], require_signing: bool, encrypt: bool
    ) -> None:
        sec_mode = SecurityMode.SIGNING_ENABLED
        if require_signing:
            sec_mode |= SecurityMode.SIGNING_REQUIRED
        caps = Capabilities.LEASING | Capabilities.LARGE_MTU
        if max(dialects) >= Dialect.SMB3_0:
            caps |= Capabilities.PERSISTENT_HANDLES  # as Windows: it may ask for them
        if encrypt:
            caps |= Capabilities.ENCRYPTION
        body = m.negotiate_request(tuple(dialects), int(sec_mode), int(caps), self.client_guid)
        resp = await self.transport.request(Command.NEGOTIATE, body)
        neg = m.parse_negotiate_response(resp.body)
        if neg.dialect not in dialects:
            raise SmbProtocolError(f"server chose dialect {neg.dialect:#06x}, not offered")
        self.dialect = neg.dialect
        self.server_capabilities = neg.capabilities
        self.max_read = min(neg.max_read, _MAX_IO)
        self.max_write = min(neg.max_write, _MAX_IO)
        self.transport.multi_credit = bool(
            neg.dialect >= Dialect.SMB2_1 and neg.capabilities & Capabilities.LARGE_MTU
        )
        if not self.transport.multi_credit:
            self.max_read = min(self.max_read, 65536)
            self.max_write = min(self.max_write, 65536)
        preauth = crypto.PREAUTH_HASH_INITIAL
        if neg.dialect == Dialect.SMB3_1_1:
            preauth = crypto.preauth_update(preauth, resp.request_raw)
            preauth = crypto.preauth_update(preauth, resp.raw)
        cipher: int | None = None
        if neg.dialect == Dialect.SMB3_1_1:
            cipher = neg.cipher
        elif neg.dialect >= Dialect.SMB3_0 and neg.capabilities & Capabilities.ENCRYPTION:
            cipher = 0x0001  # 3.0 and 3.0.2 only know AES-128-CCM
        if encrypt and cipher is None:
            raise SmbProtocolError("encryption asked for, but the server offers no cipher")
        self._negotiated = _Negotiated(neg, int(sec_mode), preauth, cipher, require_signing)

    async def add_session(
        self, user: str, password: str, domain: str = "", *, encrypt: bool = False
    ) -> SMB2Client:
        """Another session on this connection (a server may hold several per
        connection, MS-SMB2 3.3.5.5): a client of its own over the same transport
        and negotiation. Breaks keep going to this client's opens."""
        assert self._negotiated is not None, "negotiate first"
        other = SMB2Client(self.transport, self.host, receives_breaks=False)
        other.client_guid = self.client_guid
        other.dialect = self.dialect
        other.server_capabilities = self.server_capabilities
        other.max_read, other.max_write = self.max_read, self.max_write
        other._negotiated = self._negotiated
        await other._session_setup(user, password, domain, encrypt)
        return other

    async def _session_setup(
        self, user: str, password: str, domain: str, encrypt: bool, previous_session_id: int = 0
    ) -> None:
        assert self._negotiated is not None
        neg, sec_mode = self._negotiated.response, self._negotiated.security_mode
        preauth, cipher = self._negotiated.preauth, self._negotiated.cipher
        require_signing = self._negotiated.require_signing
        if encrypt and cipher is None:
            raise SmbProtocolError("encryption asked for, but the server offers no cipher")
        principal = f"{domain}\\{user}" if domain else user
        ctx = spnego.client(
            principal, password, hostname=self.host, service="cifs", protocol="negotiate"
        )
        token = ctx.step()
        session_id = 0
        while True:
            assert token is not None
            body = m.session_setup_request(int(sec_mode), token, previous_session_id)
            resp = await self.transport.request(
                Command.SESSION_SETUP,
                body,
                session_id=session_id,
                expect=(Status.SUCCESS, Status.MORE_PROCESSING_REQUIRED),
            )
            session_id = resp.header.session_id
            flags, out_token = m.parse_session_setup_response(resp.body)
            if neg.dialect == Dialect.SMB3_1_1:
                preauth = crypto.preauth_update(preauth, resp.request_raw)
            if resp.status == Status.SUCCESS:
                break
            if neg.dialect == Dialect.SMB3_1_1:
                preauth = crypto.preauth_update(preauth, resp.raw)
            token = ctx.step(out_token)
        if out_token:
            ctx.step(out_token)  # checks the server's mechListMIC
        if flags & (SessionFlags.IS_GUEST | SessionFlags.IS_NULL):
            raise SmbError(Status.LOGON_FAILURE, Command.SESSION_SETUP, "logged on as guest")
        keys = crypto.derive_session_keys(
            ctx.session_key,
            neg.dialect,
            preauth if neg.dialect == Dialect.SMB3_1_1 else None,
            cipher,
        )
        algorithm = crypto.signing_algorithm(neg.dialect, neg.signing_algorithm)
        signer = crypto.Signer(keys.signing_key, algorithm)
        if resp.header.is_signed and not signer.verify(resp.raw, from_server=True):
            raise SmbProtocolError("bad signature on the final SESSION_SETUP response")
        sign_all = bool(require_signing or neg.security_mode & SecurityMode.SIGNING_REQUIRED)
        self.channel = SessionChannel(session_id, signer, sign_all)
        self.session_id = session_id
        if (encrypt or flags & SessionFlags.ENCRYPT_DATA) and cipher is not None:
            self._start_encryption(keys, cipher)
        self.transport.sessions[session_id] = self.channel

    def _start_encryption(self, keys: crypto.SessionKeys, cipher: int) -> None:
        # derive_session_keys names keys from the server's side: what it
        # decrypts ("ServerIn") is what we encrypt with.
        assert self.channel is not None
        self.channel.encryptor = crypto.TransformCipher(keys.decryption_key, cipher)
        self.channel.decryptor = crypto.TransformCipher(keys.encryption_key, cipher)
        self.encrypt = True

    # -- trees ----------------------------------------------------------------------------

    async def tree_connect(self, share: str) -> Tree:
        tree_id, info = await self._tree_connect(share)
        tree = Tree(self, tree_id, share, info)
        self.trees.append(tree)
        return tree

    async def _tree_connect(self, share: str) -> tuple[int, m.TreeConnectResponse]:
        unc = f"\\\\{self.host}\\{share}"
        resp = await self.request(
            Command.TREE_CONNECT,
            m.tree_connect_request(unc),
            # 3.1.1 clients sign TREE_CONNECT so the server can check the
            # negotiation was not tampered with (MS-SMB2 3.2.4.1.1).
            sign=True if self.dialect == Dialect.SMB3_1_1 else None,
        )
        info = m.parse_tree_connect_response(resp.body)
        if info.share_flags & ShareFlags.ENCRYPT_DATA and not self.encrypt:
            raise SmbProtocolError("the share demands encryption; connect with encrypt=True")
        return resp.header.tree_id, info

    async def request(
        self,
        command: int,
        body: bytes,
        *,
        tree_id: int = 0,
        payload: int = 0,
        sign: bool | None = None,
        expect: tuple[int, ...] = (Status.SUCCESS,),
        flags: int = 0,
    ) -> Response:
        if self.channel is None:
            raise SmbProtocolError("not logged on")
        return await self.transport.request(
            command,
            body,
            session=self.channel,
            tree_id=tree_id,
            payload=payload,
            sign=sign,
            expect=expect,
            flags=flags,
        )

    async def echo(self) -> None:
        # Sessionless: ECHO proves the connection, not the session, and
        # servers differ on whether they sign its response.
        await self.transport.request(Command.ECHO, m.small_request())

    async def close(self) -> None:
        """Log off and drop the connection; open handles are closed by the server."""
        if self.recovery is not None:
            self.recovery.stop()
        if not self.transport.closed and self.channel is not None:
            try:
                await asyncio.wait_for(self.request(Command.LOGOFF, m.small_request()), 5)
            except (TimeoutError, SmbError, ConnectionError, SmbProtocolError):
                pass
        for task in list(self._tasks):
            task.cancel()
        await self.transport.close()

    # -- breaks ---------------------------------------------------------------------------

    def register(self, op: Open) -> None:
        self._opens[op.file_id] = op
        # A break can be read before the CREATE response's waiter resumes.
        parked, self._parked = self._parked, []
        for notice in parked:
            self._route(notice)

    def unregister(self, op: Open) -> None:
        if self._opens.get(op.file_id) is op:
            del self._opens[op.file_id]

    def opens(self) -> list[Open]:
        return list(self._opens.values())

    def lowered(self, op: Open, notice: BreakNotice) -> None:
        """Caching the server took while we could not be told (found at a
        reconnect): handled as a break that needs no acknowledgement."""
        op.note_break(notice)
        self._run_handler(op, notice)

    def _on_notification(self, hdr: Header, body: bytes) -> None:
        self.breaks_received += 1
        self._route(m.parse_break_notification(body))

    def _route(self, notice: BreakNotice) -> None:
        targets: list[Open]
        if notice.lease_key is not None:
            targets = [o for o in self._opens.values() if o.lease_key == notice.lease_key]
        else:
            op = self._opens.get(notice.file_id) if notice.file_id else None
            targets = [op] if op is not None else []
        if not targets:
            if len(self._parked) < 64:
                self._parked.append(notice)
            return
        if notice.lease_key is None:
            # Only an Exclusive or Batch oplock is acknowledged; II to none is not.
            held = targets[0].oplock_level
            exclusive = held in (OplockLevel.EXCLUSIVE, OplockLevel.BATCH)
            notice = replace(notice, ack_required=exclusive)
        for op in targets:
            op.note_break(notice)
        # One lease, one acknowledgement: only the first open's handler answers.
        self._run_handler(targets[0], notice)

    def _run_handler(self, op: Open, notice: BreakNotice) -> None:
        handler = op.on_break or _acknowledge
        result = handler(op, notice)
        if inspect.isawaitable(result):
            self.track(asyncio.ensure_future(result))

    def track(self, task: asyncio.Future[None]) -> None:
        """Keep a break handler's task alive and log its failure."""
        self._tasks.add(task)
        task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Future[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("break handler failed", exc_info=task.exception())


async def _acknowledge(op: Open, notice: BreakNotice) -> None:
    if notice.ack_required:
        await op.acknowledge(notice)


class Tree:
    def __init__(
        self, client: SMB2Client, tree_id: int, share: str, info: m.TreeConnectResponse
    ) -> None:
        self.client = client
        self.tree_id = tree_id
        self.share = share
        self.info = info

    async def create(
        self,
        path: str,
        *,
        access: int = READ_WRITE,
        share_access: int = SHARE_ALL,
        disposition: int = CreateDisposition.OPEN_IF,
        options: int = CreateOptions.NON_DIRECTORY_FILE,
        oplock: int = OplockLevel.NONE,
        lease_state: int | None = None,
        lease_key: bytes | None = None,
        durable: DurableRequest | None = None,
        on_break: BreakHandler | None = None,
    ) -> Open:
        """Open or create a file; ``lease_state`` asks for a lease instead of
        ``oplock``, ``durable`` for a durable (or persistent) handle (3.x)."""
        if self.client.recovery is not None:
            await self.client.recovery.ready()  # not on a connection known to be gone
        lease: LeaseRequest | None = None
        if lease_state is not None:
            lease = LeaseRequest(lease_key or os.urandom(16), lease_state, self._lease_version())
        body = m.create_request(
            path,
            access=access,
            share=share_access,
            disposition=disposition,
            options=options,
            oplock=oplock,
            lease=lease,
            durable=durable if self.client.dialect >= Dialect.SMB3_0 else None,
        )
        resp = await self.client.request(Command.CREATE, body, tree_id=self.tree_id)
        info = m.parse_create_response(resp.body)
        op = Open(self, path, info, lease.key if lease is not None else None, on_break)
        op.access, op.share_access, op.options = access, share_access, options
        if durable is not None and info.durable_flags is not None:
            op.durable = durable
            op.persistent = bool(info.durable_flags & m.DHANDLE_FLAG_PERSISTENT)
        self.client.register(op)
        return op

    def _lease_version(self) -> int:
        return 2 if self.client.dialect >= Dialect.SMB3_0 else 1

    async def reconnect(self) -> None:
        """Connect this tree again in the client's new session (after a reconnect)."""
        self.tree_id, self.info = await self.client._tree_connect(self.share)

    async def reclaim(self, op: Open) -> None:
        """Take durable ``op`` back with a DH2C (MS-SMB2 3.2.4.4): same name,
        FileId, CreateGuid, lease key and persistent flag as it was granted.
        Caching the server took meanwhile reaches the open's break handler."""
        assert op.durable is not None, "only a durable handle can be reclaimed"
        lease = None
        if op.lease_key is not None:
            lease = LeaseRequest(op.lease_key, op.lease_state, self._lease_version())
        again = DurableReconnect(op.file_id, op.durable.create_guid, op.persistent)
        body = m.create_request(
            op.path, access=op.access, share=op.share_access,
            disposition=CreateDisposition.OPEN, options=op.options,
            oplock=op.oplock_level, lease=lease, durable=again,
        )  # fmt: skip
        resp = await self.client.request(Command.CREATE, body, tree_id=self.tree_id)
        info = m.parse_create_response(resp.body)
        before = op.caching
        self.client.unregister(op)
        op.reclaimed(self, info)
        self.client.register(op)
        if before & ~op.caching:
            self.client.lowered(op, op.lowered_notice(before))

    async def disconnect(self) -> None:
        if self in self.client.trees:
            self.client.trees.remove(self)  # nothing to connect again after a reconnect
        await self.client.request(Command.TREE_DISCONNECT, m.small_request(), tree_id=self.tree_id)


class Open:
    """An open handle; its oplock level or lease state follows the breaks it receives."""

    def __init__(
        self,
        tree: Tree,
        path: str,
        info: m.CreateResponse,
        lease_key: bytes | None,
        on_break: BreakHandler | None,
    ) -> None:
        self.tree = tree
        self.client = tree.client
        self.path = path
        self.file_id: FileId = info.file_id
        self.size = info.size
        self.created = info.action == 2
        self.lease_key = lease_key if info.oplock == OplockLevel.LEASE else None
        self.lease_state = (info.lease_state or 0) if self.lease_key else 0
        self.lease_epoch = info.lease_epoch
        self.oplock_level = info.oplock
        self.on_break = on_break
        self.breaks: list[BreakNotice] = []
        self.closed = False
        # What a reconnect repeats (Tree.create fills them in).
        self.access, self.share_access, self.options = READ_WRITE, SHARE_ALL, 0
        self.durable: DurableRequest | None = None  # granted durable: reclaimable
        self.persistent = False
        self.lost: BaseException | None = None  # why a reconnect could not take it back

    @property
    def caching(self) -> int:
        """The caching this open holds as lease bits (R 1, H 2, W 4), oplocks mapped."""
        if self.lease_key is not None:
            return self.lease_state
        return {
            OplockLevel.II: 0x1,
            OplockLevel.EXCLUSIVE: 0x5,
            OplockLevel.BATCH: 0x7,
        }.get(OplockLevel(self.oplock_level), 0)

    def note_break(self, notice: BreakNotice) -> None:
        self.breaks.append(notice)
        if not notice.ack_required:
            # Nothing to acknowledge: the server has already lowered us.
            if notice.is_lease:
                self.lease_state = notice.new_state
            else:
                self.oplock_level = notice.new_oplock

    def reclaimed(self, tree: Tree, info: m.CreateResponse) -> None:
        """Take what the DH2C's response says: the handle as the server kept it."""
        self.tree = tree
        self.file_id = info.file_id
        self.oplock_level = info.oplock
        if self.lease_key is not None and info.lease_state is not None:
            self.lease_state = info.lease_state
            self.lease_epoch = info.lease_epoch

    def lowered_notice(self, before: int) -> BreakNotice:
        """A break, needing no acknowledgement, from ``before`` to the caching held now."""
        if self.lease_key is not None:
            return BreakNotice(
                None, lease_key=self.lease_key, current_state=before,
                new_state=self.lease_state, epoch=self.lease_epoch, ack_required=False,
            )  # fmt: skip
        return BreakNotice(self.file_id, new_oplock=self.oplock_level, ack_required=False)

    # -- requests -------------------------------------------------------------------------

    async def _request(self, request: OpenRequest) -> Response:
        recovery = self.client.recovery
        if self.durable is not None and recovery is not None:
            return await recovery.send(self, request)
        return await self.send_now(request)

    async def send_now(self, request: OpenRequest, *, replay: bool = False) -> Response:
        """Send ``request`` once, on the connection and tree as they are now;
        ``replay``: it was sent before, on a connection that was lost (3.x
        marks it SMB2_FLAGS_REPLAY_OPERATION)."""
        flags = 0
        if replay and self.client.dialect >= Dialect.SMB3_0:
            flags = HeaderFlags.REPLAY_OPERATION
        return await self.client.request(
            request.command,
            request.body(self.file_id),
            tree_id=self.tree.tree_id,
            payload=request.payload,
            expect=request.expect,
            flags=flags,
        )

    async def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes; short at end of file, b"" past it."""
        out = bytearray()
        while len(out) < length:
            n = min(length - len(out), self.client.max_read)
            at = offset + len(out)
            resp = await self._request(
                OpenRequest(
                    Command.READ,
                    _read_body(at, n),
                    payload=n,
                    expect=(Status.SUCCESS, Status.END_OF_FILE),
                )
            )
            if resp.status == Status.END_OF_FILE:
                break
            data = m.parse_read_response(resp.body)
            out += data
            if len(data) < n:
                break
        return bytes(out)

    async def write(self, offset: int, data: bytes) -> int:
        done = 0
        while done < len(data) or not data:
            chunk = data[done : done + self.client.max_write]
            at = offset + done
            resp = await self._request(
                OpenRequest(Command.WRITE, _write_body(at, chunk), payload=len(chunk))
            )
            written = m.parse_write_response(resp.body)
            done += written
            if not data or written < len(chunk):
                break
        return done

    async def flush(self) -> None:
        await self._request(OpenRequest(Command.FLUSH, m.flush_request))

    async def lock(
        self, offset: int, length: int, *, exclusive: bool = True, wait: bool = True
    ) -> None:
        """A byte-range lock; with ``wait`` the server may answer STATUS_PENDING first."""
        if exclusive:
            element = LockElement.exclusive(offset, length, wait)
        else:
            element = LockElement.shared(offset, length, wait)
        await self.lock_elements([element])

    async def unlock(self, offset: int, length: int) -> None:
        await self.lock_elements([LockElement.unlock(offset, length)])

    async def lock_elements(self, elements: list[LockElement]) -> None:
        locks = tuple(elements)
        await self._request(
            OpenRequest(Command.LOCK, lambda fid: m.lock_request(fid, list(locks)), locks=locks)
        )

    async def acknowledge(self, notice: BreakNotice, level: int | None = None) -> int:
        """Acknowledge a break with ``level`` (default: what the server offered)."""
        if notice.is_lease:
            assert notice.lease_key is not None
            key, state = notice.lease_key, notice.new_state if level is None else level
            resp = await self._request(
                OpenRequest(Command.OPLOCK_BREAK, lambda _fid: m.lease_ack_request(key, state))
            )
            granted = m.parse_lease_ack_response(resp.body)
            for op in list(self.client._opens.values()):
                if op.lease_key == notice.lease_key:
                    op.lease_state = granted
            return granted
        new = notice.new_oplock if level is None else level
        resp = await self._request(
            OpenRequest(Command.OPLOCK_BREAK, lambda fid: m.oplock_ack_request(fid, new))
        )
        self.oplock_level = m.parse_oplock_ack_response(resp.body)
        return self.oplock_level

    async def close(self) -> None:
        if self.closed or self.lost is not None:  # a handle no reconnect got back is gone
            self.closed = True
            return
        recovery = self.client.recovery if self.durable is not None else None
        try:
            if recovery is not None:
                # A CLOSE must reach the server: on a connection known to be
                # gone, wait until the handle is back.
                await recovery.ready()
            self.closed = True
            await self.send_now(OpenRequest(Command.CLOSE, m.close_request))
        except ConnectionError as e:
            if recovery is None:
                raise
            # Lost in flight: not replayed (clients/reconnect.py says why).
            log.info("CLOSE of %s not answered (%s); the server ends the handle", self.path, e)
        finally:
            self.closed = True
            self.client.unregister(self)


def _read_body(offset: int, length: int) -> Callable[[FileId], bytes]:
    return lambda fid: m.read_request(fid, offset, length)


def _write_body(offset: int, data: bytes) -> Callable[[FileId], bytes]:
    return lambda fid: m.write_request(fid, offset, data)
