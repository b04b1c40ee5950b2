"""One client TCP connection: reads frames, dispatches requests, writes replies.

Requests of a connection are handled in arrival order. A handler that must
wait (a CREATE waiting for a break, a blocking LOCK, CHANGE_NOTIFY) calls
``ctx.go_async()``: the client gets an interim STATUS_PENDING and the
connection moves on, so an acknowledgement arriving on this same connection
can release the wait.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any, cast

from oplock_bus.api import BusUnavailable

from ..protocol import crypto, wire
from ..protocol.constants import Command, Dialect, HeaderFlags, NtStatusError, Status
from ..protocol.credits import SequenceError
from ..protocol.framing import FrameDecoder, FramingError, frame_header
from ..protocol.header import Header, error_body
from ..protocol.wire import KeyedSession
from . import eager
from .channels import drop_connection, foreign_session, key_for, observe_reply
from .compound import ChainState, is_error
from .context import Disconnect, Reply, RequestContext
from .dispatch import TABLE, Entry, Handler
from .handlers.ioctl import sessionless_hook
from .handlers.negotiate import smb1_negotiate, smb1_no_dialect
from .limits import log_limit
from .receiver import FrameReceiver
from .relay import MAGIC as RELAY_MAGIC
from .services import NodeServices
from .state import ConnectionState, Session, SessionState, TreeConnect

log = logging.getLogger("smbgw.conn")
# Seconds after the first message sent once Samba's FORCE_UNACKED_TIMEOUT
# test hook said the client stopped acknowledging, before the connection goes.
UNACKED_TIMEOUT = 5.0

# Before any session is valid a frame is at most this (smbd's bound too): a
# stranger cannot make the node buffer megabytes per socket.
PRE_LOGON_MAX_FRAME = 65536
# Requests in one compound chain; clients send a handful.
MAX_COMPOUND = 128
# Reply bytes of a chain held back to go out as one compound. Beyond this the
# replies so far are sent (MS-SMB2 3.3.4.1.3 lets a server answer a chain in
# parts, as it does when a request goes async): credits bound each READ, this
# bounds what a chain of them keeps in memory at once.
MAX_CHAIN_REPLY = 8 * 1024 * 1024

# The first read takes everything the stream holds.
_ALL_BUFFERED = 1 << 30

_SERVER_TO_REDIR = int(HeaderFlags.SERVER_TO_REDIR)
_RELATED = int(HeaderFlags.RELATED_OPERATIONS)


class SmbConnection(ConnectionState):
    def __init__(
        self, node: NodeServices, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        super().__init__(
            wire.WireCodec(max_frame=node.config.max_io_size + 65536 * 2),
            peer=f"{peer[0]}:{peer[1]}" if peer else "?",
            local_address=local[0] if local else "",
        )
        self.node = node
        self.reader = reader
        self.writer = writer
        self.codec.credits.max_credits = node.config.max_credits
        self.codec.observer = self._observe_reply
        self.decoder = FrameDecoder(PRE_LOGON_MAX_FRAME)
        self._receiver: FrameReceiver | None = None
        self._sessionless_since: float | None = time.monotonic()
        self.pending: dict[int, tuple[RequestContext, asyncio.Task[Reply]]] = {}
        self.pending_by_mid: dict[int, int] = {}
        self._chain_tasks: set[asyncio.Task[None]] = set()
        # Set once teardown has begun. Not ``closed``: a failed write marks the
        # transport closed long before teardown runs, and teardown must still
        # release every open, lock and session of the connection.
        self._teardown: asyncio.Future[None] | None = None

    # -- main loop ---------------------------------------------------------

    async def run(self) -> None:
        try:
            while not self.closed:
                try:
                    frame = await asyncio.wait_for(self._next_frame(), self._read_timeout())
                except TimeoutError:
                    log.info("%s: disconnecting: no session for %.0f s", self.peer,
                             self.node.config.logon_timeout)  # fmt: skip
                    break
                if frame is None or self.closed:
                    break  # the peer is gone, or nobody is left to answer
                await self._handle_frame(frame)
        except (FramingError, Disconnect, wire.WireError) as e:
            log.info("%s: disconnecting: %s", self.peer, e)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            # A bug must cost this connection only, never the node.
            log.exception("%s: connection failed", self.peer)
        finally:
            await self.teardown()

    async def _next_frame(self) -> bytes | None:
        """The next frame, None at the end. The first read takes what the stream
        holds (another worker may have passed it with bytes read), then a
        FrameReceiver reads into the frames' own buffers."""
        if self._receiver is None:
            data = await self.reader.read(_ALL_BUFFERED)
            if not data:
                return None
            transport = cast(asyncio.Transport, self.writer.transport)
            self._receiver = FrameReceiver(transport, self.decoder, data, eof=self.reader.at_eof())
        return await self._receiver.next_frame()

    def _read_timeout(self) -> float | None:
        """None while a session is valid here; else what is left of logon_timeout
        (counted from the connection's start, or from its last session's end)."""
        if any(s.state is SessionState.VALID for s in self.sessions.values()):
            self._sessionless_since = None
            self.decoder.max_size = self.codec.max_frame
            return None
        now = time.monotonic()
        if self._sessionless_since is None:
            self._sessionless_since = now
        return max(0.0, self._sessionless_since + self.node.config.logon_timeout - now)

    async def teardown(self) -> None:
        """Release everything the connection holds, whatever ended it (once).

        A second caller (the node stopping while the client hangs up) waits
        for the first to finish: the node must not stop its bus while a
        teardown still closes opens on it."""
        if self._teardown is not None:
            await asyncio.shield(self._teardown)
            return
        # The first caller tears down itself, at once: a connection the
        # client closed must stop counting against its address before the
        # node accepts the next one.
        self._teardown = asyncio.get_running_loop().create_future()
        try:
            await self._tear_down(asyncio.current_task())
        finally:
            self._teardown.set_result(None)

    async def _tear_down(self, caller: asyncio.Task[Any] | None) -> None:
        self.closed = True
        for ctx, task in list(self.pending.values()):
            if not _outlives_channel(ctx, self):
                task.cancel()
        for rest in list(self._chain_tasks):
            if rest is not caller:
                rest.cancel()
        await drop_connection(self.node, self)
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001 - the socket may already be gone
            pass

    # -- sending -----------------------------------------------------------

    def send_messages(
        self,
        messages: list[tuple[Header, wire.Body, KeyedSession | None]],
        encrypt_for: Session | None,
    ) -> None:
        """Sign each message, chain them, encrypt the chain if needed, frame it."""
        if self.closed:
            return
        if self.writer.is_closing():  # the peer reset the connection: nobody to answer
            self.closed = True
            return
        if self.sends_before_unacked is not None:
            if self.sends_before_unacked == 0:
                # What smbd does when TCP stays unacknowledged: drop it later.
                asyncio.get_running_loop().call_later(UNACKED_TIMEOUT, self._unacked)
            self.sends_before_unacked -= 1
        try:
            parts = self.codec.encode_parts(messages, encrypt_for)
        except crypto.NonceExhausted as e:
            # SMB cannot rekey a session: the client reconnects and logs on afresh.
            log.warning("%s: disconnecting: %s", self.peer, e)
            self.closed = True
            self.writer.close()  # the read loop ends, and teardown runs
            return
        if len(parts) == 1:
            self.writer.write(parts[0])
        else:
            # One writev; the transport keeps references to the buffers, no copy.
            self.writer.writelines(parts)

    def _unacked(self) -> None:
        log.info("%s: disconnecting: nothing sent was acknowledged (test hook)", self.peer)
        self.closed = True
        self.writer.close()  # the read loop ends, and teardown runs

    def _observe_reply(self, hdr: Header, msg: bytes) -> None:
        if self.codec.dialect != Dialect.SMB3_1_1:
            return
        if hdr.command == Command.NEGOTIATE:
            self.preauth_hash = crypto.preauth_update(self.preauth_hash, msg)
        elif hdr.command == Command.SESSION_SETUP and hdr.status == Status.MORE_PROCESSING_REQUIRED:
            session = self.sessions.get(hdr.session_id)
            if session is not None and session.state is not SessionState.VALID:
                session.preauth_hash = crypto.preauth_update(session.preauth_hash, msg)
            elif session is None:
                observe_reply(self.node, self, hdr.session_id, msg)

    async def drain(self) -> None:
        try:
            await self.writer.drain()
        except ConnectionError:
            self.closed = True

    def send_notification(self, command: int, body: bytes, session: Session | None) -> None:
        """A server-initiated message (oplock or lease break): MessageId all ones."""
        hdr = Header(
            command=command,
            message_id=0xFFFFFFFFFFFFFFFF,
            flags=HeaderFlags.SERVER_TO_REDIR,
            session_id=0,
        )
        encrypt = session if session is not None and session.encrypt_data else None
        if encrypt is not None:
            hdr.session_id = session.session_id if session else 0
        self.send_messages([(hdr, body, None)], encrypt)

    # -- request processing -------------------------------------------------

    async def _handle_frame(self, frame: bytes) -> None:
        if frame[:4] == wire.SMB1_PROTOCOL_ID:
            await self._handle_smb1_negotiate(frame)
            return
        if frame[:4] == RELAY_MAGIC and self.node.relays is not None:
            # Another node relays a client's bind to a session of ours (relay.py).
            self.node.relays.adopt(self, frame, self.writer.write)
            return
        encrypted_session: Session | None = None
        if frame[:4] == wire.TRANSFORM_PROTOCOL_ID:
            sid = self.codec.transform_session_id(frame)
            encrypted_session = self.sessions.get(sid)
            if encrypted_session is None or not encrypted_session.decryption_key:
                raise Disconnect("encrypted message for an unknown session")
            frame = self.codec.decrypt(frame, encrypted_session)
        try:
            chain = wire.split_messages(frame)
        except NtStatusError as e:
            raise Disconnect(str(e)) from None
        if len(chain) > MAX_COMPOUND:
            raise Disconnect(f"a compound of {len(chain)} requests (at most {MAX_COMPOUND})")
        multi_credit = self.multi_credit
        for hdr, _body, _raw in chain:
            if hdr.command == Command.CANCEL:
                continue  # it names the request it cancels, and takes no id
            try:
                self.codec.credits.consume(hdr.message_id, hdr.credit_charge if multi_credit else 1)
            except SequenceError as e:
                raise Disconnect(str(e)) from None
        relays = self.node.relays  # a bind to, or a request of, another node's session
        first, body = chain[0][0], chain[0][1]
        if relays and not encrypted_session and relays.diverts(self, first, body):
            if await relays.divert(self, first, frame):
                return
        run = _ChainRun(chain, encrypted_session)
        await self._process_chain(run, 0)

    async def _process_chain(self, run: _ChainRun, start: int) -> None:
        """Handle the requests of a chain from ``start`` on and send their replies.

        A request that goes async while related requests follow it splits the
        chain (as Windows does for a CREATE waiting for a break): the replies
        so far and its interim reply are sent, and the rest of the chain runs
        once it completes, while this connection goes on reading.
        """
        replies: list[tuple[Header, wire.Body, KeyedSession | None]] = []
        held = 0  # bytes in replies
        state = run.state
        chain = run.chain
        for index in range(start, len(chain)):
            hdr, body, raw = chain[index]
            if hdr.command == Command.CANCEL:
                self._cancel(hdr)
                continue
            state.begin(hdr)
            if index == 0 and hdr.is_related:
                # MS-SMB2 3.3.5.2.7.2: the first request of a chain cannot be related.
                state.lookup_failed()
                reply_hdr = self._reply_header(hdr, Status.INVALID_PARAMETER)
                replies.append((reply_hdr, error_body(), None))
                continue
            session = None
            try:
                session = self._session_for(hdr, state, raw, run.encrypted_session)
                tree = self._tree_for(hdr, session, state, run.encrypted_session is not None)
            except NtStatusError as e:
                # A tree refused on a session found (and verified) signs with its key.
                if session is None and hdr.is_related:
                    session = state.session
                state.lookup_failed()
                reply_hdr = self._reply_header(hdr, e.status)
                signer = self._signer(hdr, session)
                _echo_signature(reply_hdr, hdr, signer)
                replies.append((reply_hdr, error_body(), signer))
                continue
            if session is not None and session.encrypt_data and run.encrypt_for is None:
                run.encrypt_for = session if run.encrypted_session is not None else None
            following = chain[index + 1][0] if index + 1 < len(chain) else None
            ctx = RequestContext(
                self,
                self.node,
                hdr,
                body,
                raw,
                session=session,
                tree=tree,
                related_file_id=state.file_id if hdr.is_related else None,
                encrypted=run.encrypted_session is not None,
                related_follows=following is not None and following.is_related,
                related_error=state.create_error if hdr.is_related else None,
            )
            if tree is not None and not self.node.vouched():
                # A frozen node resumed, or one cut off from the bus: what it
                # holds may be another node's now (the fence drops every client).
                raise Disconnect("the bus no longer vouches for this node")
            reply = await self._run_handler(ctx, replies)
            if reply is None:  # went async; the interim reply was queued
                task = self.pending[ctx.async_id][1]
                if not ctx.related_follows:
                    task.add_done_callback(
                        functools.partial(self._finish_async, ctx, encrypt_for=run.encrypt_for)
                    )
                    continue
                self._send_chain(replies, run.encrypt_for)
                await self.drain()
                rest = asyncio.get_running_loop().create_task(
                    self._resume_chain(run, index, ctx, task)
                )
                self._chain_tasks.add(rest)
                rest.add_done_callback(self._chain_tasks.discard)
                return
            state.after(hdr, ctx, reply, self.sessions)
            reply_hdr = self._reply_header(hdr, reply.status, ctx.session)
            body_out = reply.body if reply.body else error_body()
            signer = self._signer(hdr, ctx.session, reply.status)
            _echo_signature(reply_hdr, hdr, signer)
            if replies and held + len(body_out) > MAX_CHAIN_REPLY:
                self._send_chain(replies, run.encrypt_for)
                await self.drain()
                held = 0
            replies.append((reply_hdr, body_out, signer))
            held += len(body_out)
        self._send_chain(replies, run.encrypt_for)
        await self.drain()

    async def _resume_chain(
        self, run: _ChainRun, index: int, ctx: RequestContext, task: asyncio.Task[Reply]
    ) -> None:
        await asyncio.wait({task})
        reply = self._finish_async(ctx, task, encrypt_for=run.encrypt_for)
        if reply is None:
            return
        run.state.after(ctx.header, ctx, reply, self.sessions)
        try:
            await self._process_chain(run, index + 1)
        except (Disconnect, wire.WireError) as e:
            log.info("%s: disconnecting: %s", self.peer, e)
            await self.teardown()

    def _send_chain(
        self,
        replies: list[tuple[Header, wire.Body, KeyedSession | None]],
        encrypt_for: Session | None,
    ) -> None:
        if replies:
            self.send_messages(replies, encrypt_for)
            replies.clear()

    async def _run_handler(
        self, ctx: RequestContext, replies: list[tuple[Header, wire.Body, KeyedSession | None]]
    ) -> Reply | None:
        handler = _entry(ctx.header.command).handler
        loop = asyncio.get_running_loop()
        went_async: asyncio.Future[int] = loop.create_future()
        ctx._went_async = went_async
        result, task = eager.start(_guarded(handler, ctx))
        if task is None:
            return result
        if not went_async.done():
            waiters: set[asyncio.Future[Any]] = {task, went_async}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            went_async.cancel()
            return task.result()
        # The handler went async: queue the interim reply; the caller finishes it.
        async_id = went_async.result()
        hdr = ctx.header
        if len(self.pending) >= self.node.config.max_pending_per_connection:
            # Each waiting request holds memory, and a bus waiter or a watch.
            task.cancel()
            log_limit(self.peer, "max_pending_per_connection")
            return Reply(Status.INSUFFICIENT_RESOURCES)
        self.pending[async_id] = (ctx, task)
        self.pending_by_mid[hdr.message_id] = async_id
        interim = self._reply_header(hdr, Status.PENDING, ctx.session)
        interim.flags |= HeaderFlags.ASYNC_COMMAND
        interim.async_id = async_id
        replies.append((interim, error_body(), self._signer(hdr, ctx.session)))
        return None

    def _finish_async(
        self, ctx: RequestContext, task: asyncio.Task[Reply], *, encrypt_for: Session | None
    ) -> Reply | None:
        """Send the final reply of a request that went async; None if there is none."""
        self.pending.pop(ctx.async_id, None)
        self.pending_by_mid.pop(ctx.header.message_id, None)
        if self.closed:
            return None
        if task.cancelled():
            reply = Reply(Status.CANCELLED)
        elif task.exception() is not None:
            log.info("%s: disconnecting: %s", self.peer, task.exception())
            asyncio.get_running_loop().create_task(self.teardown())
            return None
        else:
            reply = task.result()
        # Credits were granted with the interim reply.
        hdr = self._reply_header(ctx.header, reply.status, ctx.session, grant=False)
        hdr.flags |= HeaderFlags.ASYNC_COMMAND
        hdr.async_id = ctx.async_id
        body = reply.body if reply.body else error_body()
        signer = self._signer(ctx.header, ctx.session, reply.status)
        self.send_messages([(hdr, body, signer)], encrypt_for)
        return reply

    def _cancel(self, hdr: Header) -> None:
        if hdr.is_async:
            async_id = hdr.async_id
        else:
            async_id = self.pending_by_mid.get(hdr.message_id, 0)
        entry = self.pending.get(async_id)
        if entry is not None:
            entry[1].cancel()

    # -- helpers -------------------------------------------------------------

    def _reply_header(
        self, req: Header, status: int, session: Session | None = None, *, grant: bool = True
    ) -> Header:
        return Header(
            command=req.command,
            message_id=req.message_id,
            credit_charge=req.credit_charge,
            status=status,
            credits=self.codec.grant_credits(req) if grant else 0,
            flags=_SERVER_TO_REDIR | (req.flags & _RELATED),
            tree_id=req.tree_id,
            session_id=session.session_id if session is not None else req.session_id,
        )

    def _signer(
        self, req: Header, session: Session | None, status: int = Status.SUCCESS
    ) -> KeyedSession | None:
        """The key that signs the reply (the session's or its channel's), or None."""
        if session is None:
            return None
        key = key_for(session, self)
        if not key.signing_key:
            return None
        if req.command == Command.SESSION_SETUP:
            if req.is_signed:
                # A re-authentication or a bind, its request verified with this
                # key: every reply is signed, refusals and MORE_PROCESSING too.
                return key
            ok = status == Status.SUCCESS and session.state is SessionState.VALID
            return key if ok and session.sign_final else None
        if req.is_signed or session.signing_required:
            return key
        return None

    def _session_for(
        self,
        hdr: Header,
        chain: ChainState,
        raw: bytes,
        encrypted_session: Session | None,
    ) -> Session | None:
        if hdr.command == Command.SESSION_SETUP:
            if hdr.session_id == 0:
                return None  # a new session: the handler makes it
        elif not _entry(hdr.command).needs_session:
            return None
        elif hdr.command == Command.IOCTL and hdr.session_id == 0:
            if sessionless_hook(raw[64:], self.node.config.torture_hooks):
                return None
        if hdr.is_related:
            session: Session | None = chain.related_session(self.sessions)
        else:
            session = self.sessions.get(hdr.session_id)
        if encrypted_session is not None and session is not encrypted_session:
            # The key that decrypted the message vouches for its own session
            # only: naming another would act as that session's user (MS-SMB2
            # 3.3.5.2.1.1; ksmbd checks it too).
            raise Disconnect("encrypted with one session's key, naming another session")
        if session is None:
            if hdr.command == Command.SESSION_SETUP:
                return foreign_session(self.node, self, hdr, raw)  # a bind: the handler answers
            raise NtStatusError(Status.USER_SESSION_DELETED)
        if session.state is SessionState.EXPIRED and hdr.command not in (
            Command.SESSION_SETUP,
            Command.LOGOFF,
            Command.CLOSE,
        ):
            raise NtStatusError(Status.NETWORK_SESSION_EXPIRED)
        if hdr.command == Command.SESSION_SETUP and session.state is not SessionState.VALID:
            return session
        if encrypted_session is not None:
            return session  # decryption authenticated the message
        if session.encrypt_data and session.state is SessionState.VALID:
            raise NtStatusError(Status.ACCESS_DENIED)
        key = key_for(session, self)
        if hdr.is_signed and key.signing_key:
            if not self.codec.verify(raw, key):
                raise NtStatusError(Status.ACCESS_DENIED)
        elif session.signing_required:
            # No exemption, break acknowledgements included: whoever could
            # acknowledge a break for the client could let another client in
            # on data it still caches.
            raise NtStatusError(Status.ACCESS_DENIED)
        return session

    def _tree_for(
        self, hdr: Header, session: Session | None, chain: ChainState, encrypted: bool
    ) -> TreeConnect | None:
        if session is None or not _entry(hdr.command).needs_tree:
            return None
        if hdr.is_related:
            tree = chain.related_tree(session)
        else:
            found = session.trees.get(hdr.tree_id)
            if found is None:
                raise NtStatusError(Status.NETWORK_NAME_DELETED)
            tree = found
        if tree.encrypt_data and not encrypted:
            # MS-SMB2 3.3.5.2.11: a share that demands encryption takes no
            # plaintext request, signed or not.
            raise NtStatusError(Status.ACCESS_DENIED, "unencrypted request on an encrypted share")
        return tree

    async def _handle_smb1_negotiate(self, frame: bytes) -> None:
        if self.negotiated:
            raise Disconnect("SMB1 negotiate after negotiation")
        dialects = wire.parse_smb1_negotiate(frame)
        try:
            self.codec.credits.consume(0, 1)  # an SMB1 NEGOTIATE counts as MessageId 0
        except SequenceError as e:
            raise Disconnect(str(e)) from None
        body = smb1_negotiate(self.node, self, dialects)
        if body is None:
            refusal = smb1_no_dialect(frame)
            self.writer.write(frame_header(len(refusal)) + refusal)
            await self.drain()
            raise Disconnect(f"client offers no SMB2 dialect, only {dialects[:6]}")
        hdr = Header(command=Command.NEGOTIATE, message_id=0, flags=HeaderFlags.SERVER_TO_REDIR)
        hdr.credits = self.codec.credits.grant(1)
        self.send_messages([(hdr, body, None)], None)
        await self.drain()


async def _guarded(handler: Handler, ctx: RequestContext) -> Reply:
    """Run a handler; NTSTATUS errors become replies, bugs become INTERNAL_ERROR."""
    try:
        return await handler(ctx)
    except NtStatusError as e:
        return Reply(e.status)
    except asyncio.CancelledError:
        raise
    except Disconnect:
        raise
    except BusUnavailable as e:
        # Not a bug: Redis out of reach. The client gets the bus's status and
        # may retry; the log says so once per outage, not once per request.
        ctx.node.bus_outage.failed(e, Command(ctx.header.command).name)
        return Reply(e.status)
    except Exception:
        log.exception("handler for %s failed", Command(ctx.header.command).name)
        return Reply(Status.INTERNAL_ERROR)


async def _unknown_command(ctx: RequestContext) -> Reply:
    return Reply(Status.INVALID_PARAMETER)


# An unknown command is looked up like any other (its session, its tree), then
# answered STATUS_INVALID_PARAMETER.
_UNKNOWN = Entry(_unknown_command)


def _entry(command: int) -> Entry:
    return TABLE.get(command, _UNKNOWN)


class _ChainRun:
    """One received chain of requests, possibly handled in several parts."""

    __slots__ = ("chain", "encrypted_session", "encrypt_for", "state")

    def __init__(
        self, chain: list[tuple[Header, bytes, bytes]], encrypted_session: Session | None
    ) -> None:
        self.chain = chain
        self.encrypted_session = encrypted_session
        self.encrypt_for = encrypted_session
        self.state = ChainState()


def _echo_signature(reply: Header, req: Header, signer: KeyedSession | None) -> None:
    """A signed request refused before any key could vouch for it (its session
    unknown here, its signature wrong): the reply keeps SMB2_FLAGS_SIGNED and the
    request's signature, as Windows and Samba answer. Clients that sign skip the
    check for such statuses but require the flag."""
    if signer is None and req.is_signed and is_error(reply.status):
        reply.flags |= HeaderFlags.SIGNED
        reply.signature = req.signature


def _outlives_channel(ctx: RequestContext, conn: ConnectionState) -> bool:
    """A CREATE of a session that lives on through another channel finishes
    though its own connection dropped: the client replays it on the other
    channel and must get its open, not a second one (gateway.smb.replay;
    smbtorture smb2.replay.dhv2-pending2*)."""
    session = ctx.session
    return (
        ctx.header.command == Command.CREATE
        and session is not None
        and session.heir(conn) is not None
    )
