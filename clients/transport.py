"""One SMB2 connection seen from the client: message ids, credits, signing, encryption.

The wire format comes from `gateway.protocol` (header, framing, compound
splitting, signing and transform ciphers); this module adds what only a
client does: it numbers requests, spends and collects credits, matches
responses (interim STATUS_PENDING ones included) to waiting requests, and
hands server-initiated messages (MessageId 0xFFFFFFFFFFFFFFFF: oplock and
lease breaks) to a callback instead of treating them as an error, which is
what smbprotocol does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass

from gateway.protocol.constants import (
    TRANSFORM_PROTOCOL_ID,
    Command,
    HeaderFlags,
    NtStatusError,
    Status,
)
from gateway.protocol.crypto import CryptoError, Signer, TransformCipher, parse_transform_header
from gateway.protocol.framing import FrameDecoder, FramingError, frame
from gateway.protocol.header import Header
from gateway.protocol.wire import split_messages

from .messages import SmbProtocolError, small_request

log = logging.getLogger("clients.transport")

NOTIFICATION_MESSAGE_ID = 0xFFFFFFFFFFFFFFFF
_MAX_FRAME = 16 * 1024 * 1024 + 4096
# Keep a comfortable balance so concurrent requests (a blocked LOCK plus the
# break acknowledgement that must overtake it) never starve for credits.
_CREDIT_TARGET = 128


class SmbError(Exception):
    """A response whose NTSTATUS the caller did not expect."""

    def __init__(self, status: int, command: int, message: str = "") -> None:
        try:
            name = Status(status).name
        except ValueError:
            name = f"0x{status:08x}"
        try:
            cmd = Command(command).name
        except ValueError:
            cmd = str(command)
        super().__init__(message or f"{cmd} failed: STATUS_{name}")
        self.status = status
        self.command = command


@dataclass
class Response:
    header: Header
    body: bytes
    raw: bytes  # the message as received, after decryption
    request_raw: bytes  # the message as sent, before signing (for the preauth hash)
    encrypted: bool

    @property
    def status(self) -> int:
        return self.header.status


@dataclass
class SessionChannel:
    """What the transport needs to know about an authenticated session."""

    session_id: int
    signer: Signer
    sign_all: bool
    encryptor: TransformCipher | None = None  # client -> server
    decryptor: TransformCipher | None = None  # server -> client


@dataclass
class _Pending:
    future: asyncio.Future[Response]
    request_raw: bytes
    session: SessionChannel | None
    encrypted: bool
    async_id: int = 0


NotificationHandler = Callable[[Header, bytes], None]
LossHandler = Callable[[BaseException], None]


class Transport:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = FrameDecoder(_MAX_FRAME)
        self._pending: dict[int, _Pending] = {}
        self._next_mid = 0
        self._credits = 1  # every connection starts with one credit (MessageId 0)
        self._credit_event = asyncio.Event()
        self.interim_responses = 0
        # Final statuses of requests whose callers gave up (normally STATUS_CANCELLED).
        self.abandoned_statuses: list[int] = []
        self.multi_credit = False  # CreditCharge only counts with 2.1+ and LARGE_MTU
        self.sessions: dict[int, SessionChannel] = {}
        self.on_notification: NotificationHandler | None = None
        # Called once when the server or the network ends the connection (not
        # when we close it): a reconnecting client starts over from there.
        self.on_lost: LossHandler | None = None
        self.closed = False
        self.close_reason: BaseException | None = None
        self._read_task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def open(cls, host: str, port: int, timeout: float = 10.0) -> Transport:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=_MAX_FRAME), timeout
        )
        return cls(reader, writer)

    @property
    def credits(self) -> int:
        return self._credits

    # -- requests -------------------------------------------------------------------

    def credit_charge(self, payload: int) -> int:
        if not self.multi_credit:
            return 1
        return max(1, (payload - 1) // 65536 + 1)

    async def request(
        self,
        command: int,
        body: bytes,
        *,
        session: SessionChannel | None = None,
        session_id: int = 0,
        tree_id: int = 0,
        payload: int = 0,
        sign: bool | None = None,
        expect: Collection[int] = (Status.SUCCESS,),
        flags: int = 0,
    ) -> Response:
        """Send one request and wait for its final response (interim ones are absorbed).

        ``payload`` is the larger of the bytes sent and expected back; it sets
        the CreditCharge. ``sign`` overrides the session's sign-everything
        rule (3.1.1 signs TREE_CONNECT whatever it is). ``flags`` go into the
        header (SMB2_FLAGS_REPLAY_OPERATION for a request sent again). A
        status outside ``expect`` raises SmbError.
        """
        if self.closed:
            raise ConnectionError(f"connection closed: {self.close_reason}")
        charge = self.credit_charge(payload)
        while self._credits < charge:
            self._credit_event.clear()
            await self._credit_event.wait()
            if self.closed:
                raise ConnectionError(f"connection closed: {self.close_reason}")
        # No await from here to the write: MessageIds go out in order.
        self._credits -= charge
        mid = self._next_mid
        self._next_mid += charge
        ask = charge + (16 if self._credits < _CREDIT_TARGET else 0)
        sid = session.session_id if session is not None else session_id
        hdr = Header(
            command=command,
            message_id=mid,
            credit_charge=charge if self.multi_credit else 0,
            credits=ask,
            tree_id=tree_id,
            session_id=sid,
            flags=flags,
        )
        raw = hdr.pack() + body
        wire = raw
        encrypted = session is not None and session.encryptor is not None
        if session is not None and session.encryptor is not None:
            wire = session.encryptor.encrypt(raw, sid)
        elif session is not None and (session.sign_all if sign is None else sign):
            wire = session.signer.sign(raw)
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        entry = _Pending(future, raw, session, encrypted)
        self._pending[mid] = entry
        self._writer.write(frame(wire))
        try:
            try:
                await self._writer.drain()
            except OSError as e:
                # The connection broke under the write: nobody will await the
                # future, so it must not be left for _shutdown to fail.
                if self._pending.get(mid) is entry:
                    del self._pending[mid]
                future.cancel()
                raise ConnectionError(f"connection lost: {e}") from e
            response = await future
        except asyncio.CancelledError:
            # Cancelling our task cancelled the future too; the server still
            # works on the request until told otherwise.
            future.cancel()
            if self._pending.get(mid) is entry:
                self._cancel(mid, entry)
            raise
        if response.status not in expect:
            raise SmbError(response.status, command)
        return response

    def _cancel(self, mid: int, entry: _Pending) -> None:
        """Ask the server to give up a request whose caller went away (MS-SMB2 3.2.4.24)."""
        if self.closed:
            return
        hdr = Header(command=Command.CANCEL, message_id=mid)
        if entry.async_id:
            hdr.flags |= HeaderFlags.ASYNC_COMMAND
            hdr.async_id = entry.async_id
            hdr.message_id = 0
        session = entry.session
        if session is not None:
            hdr.session_id = session.session_id
        raw = hdr.pack() + small_request()
        if session is not None and session.encryptor is not None:
            raw = session.encryptor.encrypt(raw, session.session_id)
        elif session is not None and session.sign_all:
            raw = session.signer.sign(raw)
        self._writer.write(frame(raw))

    # -- receiving ------------------------------------------------------------------

    async def _read_loop(self) -> None:
        reason: BaseException | None = None
        ours = False  # we closed it ourselves: nothing to recover
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    reason = ConnectionError("server closed the connection")
                    break
                for message in self._decoder.feed(data):
                    self._on_frame(message)
        except (FramingError, SmbProtocolError, CryptoError, NtStatusError, OSError) as e:
            reason = e
        except asyncio.CancelledError:
            reason = ConnectionError("connection closed by the client")
            ours = True
        except Exception as e:  # a notification handler's bug: fail loudly, not silently
            log.exception("connection reader failed")
            reason = e
        finally:
            was_open = not self.closed
            self._shutdown(reason or ConnectionError("connection closed"))
            if was_open and not ours and self.on_lost is not None:
                self.on_lost(self.close_reason or ConnectionError("connection closed"))

    def _on_frame(self, data: bytes) -> None:
        encrypted = False
        if data[:4] == TRANSFORM_PROTOCOL_ID:
            sid = parse_transform_header(data)
            channel = self.sessions.get(sid)
            if channel is None or channel.decryptor is None:
                raise SmbProtocolError(f"encrypted message for unknown session {sid:#x}")
            _sid, data = channel.decryptor.decrypt(data)
            encrypted = True
        for hdr, body, raw in split_messages(data):
            self._on_message(hdr, body, raw, encrypted)

    def _on_message(self, hdr: Header, body: bytes, raw: bytes, encrypted: bool) -> None:
        if not hdr.flags & HeaderFlags.SERVER_TO_REDIR:
            raise SmbProtocolError("a request arrived from the server")
        if hdr.message_id == NOTIFICATION_MESSAGE_ID:
            if hdr.command == Command.OPLOCK_BREAK and self.on_notification is not None:
                self.on_notification(hdr, body)
            return
        entry = self._pending.get(hdr.message_id)
        if entry is None:
            log.debug("response to unknown MessageId %d dropped", hdr.message_id)
            return
        self._grant(hdr.credits)
        if hdr.status == Status.PENDING and hdr.is_async:
            entry.async_id = hdr.async_id
            self.interim_responses += 1
            return
        del self._pending[hdr.message_id]
        if entry.future.done():  # the caller was cancelled; the CANCEL has been sent
            self.abandoned_statuses.append(hdr.status)
            return
        problem = self._check_protection(hdr, raw, encrypted, entry)
        if problem is not None:
            entry.future.set_exception(SmbProtocolError(problem))
            return
        entry.future.set_result(Response(hdr, body, raw, entry.request_raw, encrypted))

    def _check_protection(
        self, hdr: Header, raw: bytes, encrypted: bool, entry: _Pending
    ) -> str | None:
        if entry.encrypted and not encrypted:
            return f"unencrypted response to an encrypted {Command(hdr.command).name}"
        if encrypted:
            return None
        channel = self.sessions.get(hdr.session_id)
        if channel is None:
            return None
        if hdr.is_signed:
            if not channel.signer.verify(raw, from_server=True):
                return f"bad signature on {Command(hdr.command).name} response"
        elif channel.sign_all and hdr.status == Status.SUCCESS:
            return f"unsigned {Command(hdr.command).name} response on a signed session"
        return None

    def _grant(self, credits: int) -> None:
        if credits:
            self._credits += credits
            self._credit_event.set()

    def _shutdown(self, reason: BaseException) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        for entry in self._pending.values():
            if not entry.future.done():
                entry.future.set_exception(ConnectionError(f"connection lost: {reason}"))
        self._pending.clear()
        self._writer.close()
        self._credit_event.set()

    async def close(self) -> None:
        if not self._read_task.done():
            self._read_task.cancel()
            try:
                await self._read_task
            except asyncio.CancelledError:
                pass
        self._shutdown(ConnectionError("connection closed by the client"))
        try:
            await self._writer.wait_closed()
        except (OSError, asyncio.CancelledError):
            pass
