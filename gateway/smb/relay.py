"""Cross-node channel binding: a bind to another node's session goes there.

A session lives in the memory of the node that authenticated it (its keys, its
channels, its opens' descriptors). A client may open a second channel to
another node of the cluster and bind it to that session (SESSION_SETUP with
SMB2_SESSION_FLAG_BINDING, MS-SMB2 3.3.5.5, 3.3.5.5.2); smbtorture's
smb2.replay.dhv2-pending2*/3* do. The node the channel reached cannot serve
it, so it brings the connection to the session, as ``gateway/connpass.py``
does between the workers of one node, but over TCP:

1. The session id names its node: its top bits (below the sign bit) are a
   16-bit tag of the node id (``new_session_id``). Every node enters its tag,
   SMB address and hand-over key under the bus probe ``relay``
   (``LockBus.publish_probe``), once, at start. So finding the owner costs
   nothing while sessions are made and ended (no bus write per SESSION_SETUP,
   nothing to remove at logoff or after a crash) and one probe read per
   relayed bind. Two node ids whose tags collide are both tried: only the
   owner accepts.
2. This node connects to the owner's SMB listener and sends a hand-over: a
   frame starting ``0xFE 'RLY'`` (no SMB protocol id) with what the owner
   needs to continue the connection as if it had accepted it: the NEGOTIATE's
   outcome (dialect, ClientGuid, capabilities, security modes, cipher and
   signing algorithm ids, the 3.1.1 preauth integrity hash after NEGOTIATE,
   MS-SMB2 3.3.5.4), the sequence window (3.3.1.1) with the bind's own
   MessageId given back, the frame limit and the client's address. It is
   HMAC-SHA256-signed with the owner's key, names the owner and the session,
   carries a time and a nonce; the owner takes it only as the first frame of
   a connection, for a session it has, once, within ``MAX_AGE``.
3. The owner answers a short acceptance. If the connection carries no
   session of this node, this node gives up the client's socket (a duplicate
   of it outlives its transport), sends the pending SESSION_SETUP, and from
   then on copies bytes both ways without parsing, until either side closes:
   the owner continues it as a connection of its own. If the connection has
   sessions here too (smbtorture's smb2.replay.replay3 binds on a connection
   that logged on to this node), this node keeps it and *forwards*: each
   frame whose SessionId is the bound session goes to the owner as it came,
   each frame from the owner goes to the client as it came. MessageIds are
   per connection, shared by both nodes' sessions, so this node checks them
   all (3.3.5.2.3) and widens its window by the credits the owner's replies
   grant; the owner's window on a forward only bounds what it grants. Signing
   is per session and channel, so neither node touches the other's messages.
   A forwarded session that encrypts is not carried (its frames are not
   readable here to count their MessageIds): the connection drops. Nor does
   a forwarded session count as this connection's logon: once its own
   sessions here are gone, ``logon_timeout`` ends it.

The owner verifies the bind with the session's key as for any channel of its
own.

When no owner accepts in ``CONNECT_TIMEOUT`` (down, unreachable, or the
session gone), the bind is answered as before (USER_SESSION_DELETED) and the
client keeps its other channels.

The keys are random per node start and sit in the bus, so whoever can read
the bus's Redis can forge a hand-over; that is the bus's trust boundary
anyway (whoever can write it can grant itself any lock). A forged hand-over
still gives no session: the bind is verified with the session's signing key
and a fresh authentication of its user. The hand-over itself travels in the
clear, like SMB between the nodes' clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

from oplock_bus.api import LockBus

from ..protocol.constants import Command, Dialect, SessionSetupFlags
from ..protocol.credits import CreditWindow
from ..protocol.framing import FrameDecoder, FramingError, frame_header
from ..protocol.header import Header
from .state import ConnectionState, Session

log = logging.getLogger("smbgw.relay")

RELAY_PROBE = "relay"  # LockBus.publish_probe name: each node's tag, address and key
MAGIC = b"\xfeRLY"
_ACCEPT = MAGIC + b"OK"
_ACCEPTED = frame_header(len(_ACCEPT)) + _ACCEPT
_MAC = 32
TAG_BITS = 16
_RANDOM_BITS = 63 - TAG_BITS  # the sign bit stays clear, as Windows' ids
CONNECT_TIMEOUT = 2.0  # seconds to reach the owner and hear it accept
MAX_AGE = 60.0  # seconds a hand-over is good for (clocks of the nodes may differ)
DRAIN_GRACE = 30.0  # seconds one direction may go on after the other ended
_CHUNK = 256 * 1024
_ANY_FRAME = 0xFFFFFF  # the owner's replies: any length Direct TCP can carry

WriterOf = Callable[[ConnectionState], asyncio.StreamWriter | None]


class HandOverError(FramingError):
    """A hand-over this node does not take: its connection ends, as on a bad frame."""


def node_tag(node_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(node_id.encode(), digest_size=2).digest(), "little")


def new_session_id(node_id: str) -> int:
    """A random session id whose top bits name ``node_id`` (see the module docstring)."""
    return node_tag(node_id) << _RANDOM_BITS | secrets.randbits(_RANDOM_BITS)


def tag_of(session_id: int) -> int:
    return session_id >> _RANDOM_BITS & ((1 << TAG_BITS) - 1)


def smb_address(host: str, port: int) -> str:
    """Where the other nodes reach this one: its listen address; a wildcard
    stands for the host's name."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.getfqdn()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Relays:
    """One node's relays: binds it sends to their sessions' nodes, and those it adopts."""

    def __init__(
        self,
        node_id: str,
        bus: LockBus,
        address: str,
        sessions: dict[int, Session],
        writer_of: WriterOf,
        slot: int = 0,
    ) -> None:
        self.node_id = node_id
        self.slot = slot  # its worker slot on its address (connpass.py), 0 if alone
        self.bus = bus
        self.address = address
        self.sessions = sessions  # the node's table: a hand-over names one of them
        self.writer_of = writer_of  # the transport of a connection, to give it up
        self.key = secrets.token_bytes(32)
        self.tag = node_tag(node_id)
        self.relayed = 0  # connections sent whole to another node
        self.forwarded = 0  # sessions bound through a forward (the connection has ours too)
        self.adopted = 0  # connections taken from another node
        self.refused = 0  # hand-overs refused
        self.pipes: set[asyncio.Task[None]] = set()
        self._nonces: dict[str, float] = {}  # seen, with when they expire (monotonic)
        # Connections with sessions of their own and of other nodes: session id ->
        # the connection to its node, for each of the latter.
        self._forwards: dict[ConnectionState, dict[int, socket.socket]] = {}

    def record(self) -> str:
        return json.dumps({"tag": self.tag, "address": self.address,
                           "slot": self.slot, "key": self.key.hex()})  # fmt: skip

    async def start(self) -> None:
        await self.bus.publish_probe(self.node_id, RELAY_PROBE, self.record())

    async def stop(self) -> None:
        for task in list(self.pipes):
            task.cancel()
        if self.pipes:
            await asyncio.wait(list(self.pipes))

    # -- this node relays ---------------------------------------------------------------

    def diverts(self, conn: ConnectionState, hdr: Header, body: bytes) -> bool:
        """Whether a request (the first of its chain, its MessageIds taken) is for
        another node: a bind to a session of another node's tag, or a request of
        a session bound through a forward (cheap: asked of every frame)."""
        forwards = self._forwards.get(conn)
        if forwards is not None and hdr.session_id in forwards:
            return True
        return (
            hdr.command == Command.SESSION_SETUP
            and len(body) > 2
            and bool(body[2] & SessionSetupFlags.BINDING)
            and hdr.session_id != 0
            and hdr.session_id not in self.sessions
            and tag_of(hdr.session_id) != self.tag
            and not hdr.next_command
        )

    async def divert(self, conn: ConnectionState, hdr: Header, frame: bytes) -> bool:
        """Send ``frame`` (a chain, its MessageIds taken) where its session lives;
        False (nothing done) if no node takes it: it is then answered here."""
        forwards = self._forwards.get(conn)
        if forwards is not None and hdr.session_id in forwards:
            try:
                await _send(forwards[hdr.session_id], frame)
                return True
            except OSError:  # its node went: the session is not here (USER_SESSION_DELETED)
                _shut(forwards.pop(hdr.session_id))
                return False
        writer = self.writer_of(conn)
        if writer is None or not conn.negotiated or conn.codec.dialect < Dialect.SMB3_0:
            return False  # refused here as its node would refuse it
        whole = not conn.sessions  # nothing of this node's left on it: relay it all
        owner = await self._introduce(conn, hdr, forward=not whole)
        if owner is None:
            return False
        if not whole:
            try:
                await _send(owner, frame)
            except OSError as e:
                log.info("%s: forward to the node of session %#x failed: %s",
                         conn.peer, hdr.session_id, e)  # fmt: skip
                owner.close()
                return False
            self.forwarded += 1
            self._forwards.setdefault(conn, {})[hdr.session_id] = owner
            self._spawn(self._replies(conn, hdr.session_id, owner, writer))
            log.info("%s: session %#x forwarded to its node", conn.peer, hdr.session_id)
            return True
        client = _detach(writer)
        if client is None:
            owner.close()
            return False
        conn.closed = True  # the owner's now: this node's loop ends, its teardown runs
        try:
            await _send(owner, frame)
        except OSError as e:
            log.info("%s: relay failed: %s", conn.peer, e)
            owner.close()
            client.close()
            return True
        self.relayed += 1
        self._spawn(_pipe(client, owner, f"{conn.peer} -> session {hdr.session_id:#x}"))
        return True

    async def owners(self, session_id: int) -> list[tuple[str, str, int, bytes]]:
        """(node id, address, worker slot, key) of each other live node whose tag
        the session id bears."""
        seen = await self.bus.publish_probe(self.node_id, RELAY_PROBE, self.record())
        tag = tag_of(session_id)
        found = []
        for node, raw in sorted(seen.items()):
            try:
                rec = json.loads(raw)
                if int(rec["tag"]) == tag:
                    found.append((node, str(rec["address"]), int(rec.get("slot", 0)),
                                  bytes.fromhex(rec["key"])))  # fmt: skip
            except (ValueError, KeyError, TypeError):
                log.warning("node %s: malformed relay record %r", node, raw)
        return found

    async def _introduce(self, conn: ConnectionState, hdr: Header, *, forward: bool
                         ) -> socket.socket | None:  # fmt: skip
        """A connection to the node of ``hdr``'s session that took our hand-over."""
        try:
            owners = await self.owners(hdr.session_id)
        except Exception as e:  # noqa: BLE001 - no bus, no relay: the bind is refused
            log.info("%s: no relay for session %#x: %s", conn.peer, hdr.session_id, e)
            return None
        for node, address, slot, key in owners:
            state = handover_state(conn, hdr, self.node_id, node, forward=forward)
            state["slot"] = slot
            try:
                sock = await asyncio.wait_for(_connect(address, seal(key, state)),
                                              CONNECT_TIMEOUT)  # fmt: skip
            except (OSError, TimeoutError, HandOverError) as e:
                log.info("%s: node %s (%s) did not take session %#x: %s",
                         conn.peer, node, address, hdr.session_id, e)  # fmt: skip
                continue
            log.info("%s: relayed to node %s for session %#x", conn.peer, node, hdr.session_id)
            return sock
        return None

    async def _replies(
        self, conn: ConnectionState, session_id: int, owner: socket.socket,
        writer: asyncio.StreamWriter,
    ) -> None:  # fmt: skip
        """The owner's messages on a forward, to the client as they came; the
        credits they grant widen this connection's window, which checks the
        client's MessageIds for both nodes."""
        loop = asyncio.get_running_loop()
        decoder = FrameDecoder(_ANY_FRAME)
        try:
            while data := await loop.sock_recv(owner, _CHUNK):
                for frame in decoder.feed(data):
                    conn.codec.credits.high += _granted(frame)
                    if writer.is_closing():
                        return
                    writer.write(frame_header(len(frame)) + frame)
                await writer.drain()  # a slow client slows the owner, not our memory
        except OSError:  # ConnectionError included: either side went
            pass
        finally:
            forwards = self._forwards.get(conn, {})
            if forwards.get(session_id) is owner:
                del forwards[session_id]
            owner.close()
            log.info("%s: forward of session %#x ended", conn.peer, session_id)

    def forget(self, conn: ConnectionState) -> None:
        """``conn`` is gone: so are its forwards (their owners see the end)."""
        for owner in self._forwards.pop(conn, {}).values():
            _shut(owner)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.pipes.add(task)
        task.add_done_callback(self.pipes.discard)

    # -- this node adopts ---------------------------------------------------------------

    def adopt(self, conn: ConnectionState, frame: bytes, send: Callable[[bytes], None]) -> None:
        """Continue ``conn`` as the connection a hand-over ``frame`` describes, or
        raise HandOverError."""
        try:
            if conn.negotiated or conn.sessions:
                raise HandOverError("not the first frame of its connection")
            state = self._verify(frame)
            apply_state(conn, state)
        except HandOverError as e:
            self.refused += 1
            log.warning("%s: hand-over refused: %s", conn.peer, e)
            raise
        self.adopted += 1
        log.info("%s: adopted from node %s for session %#x",
                 conn.peer, state["from"], state["session"])  # fmt: skip
        send(_ACCEPTED)

    def _verify(self, frame: bytes) -> dict[str, Any]:
        mac, body = frame[4 : 4 + _MAC], frame[4 + _MAC :]
        if not hmac.compare_digest(mac, _mac(self.key, body)):
            raise HandOverError("bad signature")
        try:
            state: dict[str, Any] = json.loads(body)
            to, session, at, nonce = state["to"], state["session"], state["time"], state["nonce"]
        except (ValueError, KeyError, TypeError) as e:
            raise HandOverError(f"malformed: {e}") from None
        if to != self.node_id:
            raise HandOverError(f"meant for node {to}")
        if abs(time.time() - float(at)) > MAX_AGE:
            raise HandOverError("too old")
        now = time.monotonic()
        self._nonces = {n: t for n, t in self._nonces.items() if t > now}
        if nonce in self._nonces:
            raise HandOverError("replayed")
        self._nonces[str(nonce)] = now + 2 * MAX_AGE
        if int(session) not in self.sessions:
            raise HandOverError(f"no session {int(session):#x} here")
        return state


# -- the hand-over ------------------------------------------------------------------------


def handover_state(
    conn: ConnectionState, hdr: Header, sender: str, owner: str, *, forward: bool = False
) -> dict[str, Any]:
    """What the owner needs to continue ``conn`` from its pending request ``hdr``
    on; with ``forward``, only the requests of ``hdr``'s session come (the
    sender checks their MessageIds)."""
    codec = conn.codec
    low, high, used = _given_back(codec.credits, hdr.message_id, max(1, hdr.credit_charge))
    return {
        "forward": forward,
        "from": sender,
        "to": owner,
        "session": hdr.session_id,
        "time": time.time(),
        "nonce": secrets.token_hex(16),
        "peer": conn.peer,
        "local": conn.local_address,
        "dialect": codec.dialect,
        "cipher": codec.cipher,
        "signing": codec.signing_algorithm,
        "max_frame": codec.max_frame,
        "credits": [low, high, sorted(used)],
        "client_guid": conn.client_guid.hex(),
        "client_dialects": list(conn.client_dialects),
        "client_capabilities": conn.client_capabilities,
        "client_security_mode": conn.client_security_mode,
        "server_capabilities": conn.server_capabilities,
        "server_security_mode": conn.server_security_mode,
        "preauth": conn.preauth_hash.hex(),
    }


def apply_state(conn: ConnectionState, state: dict[str, Any]) -> None:
    try:
        codec = conn.codec
        codec.dialect = int(state["dialect"])
        codec.cipher = None if state["cipher"] is None else int(state["cipher"])
        codec.signing_algorithm = None if state["signing"] is None else int(state["signing"])
        codec.max_frame = int(state["max_frame"])
        if state.get("forward"):
            codec.credits = _Forwarded(codec.credits.max_credits)
        else:
            low, high, used = state["credits"]
            codec.credits.low, codec.credits.high = int(low), int(high)
            codec.credits.used = {int(i) for i in used}
        conn.client_guid = bytes.fromhex(state["client_guid"])
        conn.client_dialects = tuple(int(d) for d in state["client_dialects"])
        conn.client_capabilities = int(state["client_capabilities"])
        conn.client_security_mode = int(state["client_security_mode"])
        conn.server_capabilities = int(state["server_capabilities"])
        conn.server_security_mode = int(state["server_security_mode"])
        conn.preauth_hash = bytes.fromhex(state["preauth"])
        conn.peer = f"{state['peer']} via {state['from']}"
        conn.local_address = str(state["local"])
    except (ValueError, KeyError, TypeError) as e:
        raise HandOverError(f"malformed: {e}") from None
    conn.negotiated = True


class _Forwarded(CreditWindow):
    """The window of a forward's connection: the sending node checks the
    client's MessageIds (they interleave with its own sessions'); this one only
    keeps the credits it grants within its bound."""

    def consume(self, message_id: int, charge: int) -> None:
        self.low += max(1, charge)  # outstanding = granted - taken


def handover_slot(frame: bytes) -> int | None:
    """The worker slot a hand-over ``frame`` (no length prefix) is meant for, read
    before it is verified so that the node's workers pass it there (connpass.py)."""
    if frame[:4] != MAGIC:
        return None
    try:
        slot = json.loads(frame[4 + _MAC :]).get("slot")
    except (ValueError, AttributeError):
        return None
    return slot if isinstance(slot, int) and slot > 0 else None


def seal(key: bytes, state: dict[str, Any]) -> bytes:
    """The hand-over frame (length prefix included) for ``state``, signed with ``key``."""
    body = json.dumps(state, separators=(",", ":")).encode()
    payload = MAGIC + _mac(key, body) + body
    return frame_header(len(payload)) + payload


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, MAGIC + body, hashlib.sha256).digest()


def _given_back(window: CreditWindow, message_id: int, charge: int) -> tuple[int, int, set[int]]:
    """The window as it was before the pending request took its MessageIds: the
    owner takes them again when it reads that request."""
    ids = set(range(message_id, message_id + charge))
    low, used = window.low, set(window.used)
    if message_id < low:
        used |= set(range(message_id, low)) - ids
        low = message_id
    used -= ids
    return low, window.high, used


# -- sockets ------------------------------------------------------------------------------


async def _connect(address: str, handover: bytes) -> socket.socket:
    """A connection to the owner at ``address`` that accepted ``handover``."""
    host, _, port = address.rpartition(":")
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
    family, kind, proto, _name, where = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await loop.sock_connect(sock, where)
        await loop.sock_sendall(sock, handover)
        got = b""
        while len(got) < len(_ACCEPTED):
            more = await loop.sock_recv(sock, len(_ACCEPTED) - len(got))
            if not more:
                raise HandOverError("the node closed the connection")
            got += more
        if got != _ACCEPTED:
            raise HandOverError("unexpected answer")
    except BaseException:
        sock.close()
        raise
    return sock


def _shut(sock: socket.socket) -> None:
    """End a connection whose reader (a task of ours) closes the socket when it sees the end."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


async def _send(sock: socket.socket, frame: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, frame_header(len(frame)) + frame)


def _granted(frame: bytes) -> int:
    """The credits a reply chain grants (CreditResponse of each header, MS-SMB2
    2.2.1). An encrypted one cannot be read here: it grants nothing we see."""
    total = 0
    pos = 0
    while frame[pos : pos + 4] == b"\xfeSMB" and len(frame) >= pos + 64:
        total += int.from_bytes(frame[pos + 14 : pos + 16], "little")
        following = int.from_bytes(frame[pos + 20 : pos + 24], "little")
        if not following:
            break
        pos += following
    return total


def _detach(writer: asyncio.StreamWriter) -> socket.socket | None:
    """The client's socket, taken from its transport (which goes), or None if
    the transport cannot give it up."""
    raw = writer.get_extra_info("socket")
    transport = writer.transport
    if raw is None or transport.is_closing() or transport.get_write_buffer_size():
        return None  # replies still queued would be lost with the transport
    fd = os.dup(raw.fileno())
    transport.abort()  # ours goes; the duplicate carries the connection
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


async def _pipe(client: socket.socket, owner: socket.socket, label: str) -> None:
    """Copy bytes both ways until either side closes; then let the other
    direction finish (DRAIN_GRACE at most) and close both."""
    up = asyncio.ensure_future(_pump(client, owner))
    down = asyncio.ensure_future(_pump(owner, client))
    try:
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.wait({up, down}, timeout=DRAIN_GRACE)
    finally:
        for task in (up, down):
            task.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
        client.close()
        owner.close()
        sent = up.result() if up.done() and not up.cancelled() else "?"
        received = down.result() if down.done() and not down.cancelled() else "?"
        log.info("relay %s ended (%s bytes up, %s down)", label, sent, received)


async def _pump(src: socket.socket, dst: socket.socket) -> int:
    loop = asyncio.get_running_loop()
    moved = 0
    try:
        while data := await loop.sock_recv(src, _CHUNK):
            await loop.sock_sendall(dst, data)
            moved += len(data)
    except OSError:
        pass  # a side reset: the other learns it from the shutdown below
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
    return moved
