"""Sessions across connections: the node's session table and multichannel binding.

A session is valid on one or more connections of the same node, its channels
(MS-SMB2 3.3.1.8). The connection it was authenticated on is its primary
channel and signs with the session's own key. Another connection joins it with
a SESSION_SETUP carrying SMB2_SESSION_FLAG_BINDING (3.3.5.5): the request names
a session of another connection, so it is looked up node-wide and its
signature checked with the session's key and the session's signing algorithm
(the client has no key for the new connection yet). The bind runs a fresh
authentication of the same user; its session key gives the channel's own
signing key (3.3.5.5.3: SMBSigningKey over the channel's preauth integrity hash
in 3.1.1, SMB2AESCMAC/SmbSign in 3.0.x), used with the new connection's signing
algorithm. Encryption keys stay the session's.

Refusals follow the statuses Windows gives, in the order smbtorture's
smb2.session.bind_negative_* tests check them: AES-GMAC on one side only
(REQUEST_OUT_OF_SEQUENCE when the session signs with GMAC, NOT_SUPPORTED when
the new connection does), a 2.x connection or multichannel off
(REQUEST_NOT_ACCEPTED), an unsigned request, another dialect or cipher
(INVALID_PARAMETER), a session still authenticating (REQUEST_NOT_ACCEPTED) or
expired, a connection already bound (REQUEST_NOT_ACCEPTED), a guest or
anonymous session (NOT_SUPPORTED), another user (ACCESS_DENIED). The ClientGUID
is not compared, as Windows does not (3.3.5.5 lets a server refuse a mismatch).

Opens stay in the table of the connection they were made on and are found from
any channel of their session; when a channel's connection drops and the session
lives on through another, its opens move there (breaks go there too). Sessions
are per node: a bind naming a session of another cluster node goes to that
node (``relay.py``: the session id names it); if that node cannot take it, the
bind is USER_SESSION_DELETED, and the client keeps using its other channels.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ..auth import Authenticator, AuthError
from ..protocol import crypto
from ..protocol.constants import Dialect, NtStatusError, SessionFlags, SigningAlgorithm, Status
from ..protocol.header import Header
from ..protocol.wire import KeyedSession
from . import opens
from .context import RequestContext
from .limits import log_limit
from .relay import new_session_id
from .services import NodeServices
from .state import Channel, ConnectionState, Session, SessionState

SESSION_TOPIC = "previous-session"
# How long a durable reconnect in a new session waits for the handles of the
# session it replaced on another node to reach the bus (a broadcast, then
# that node's teardown: milliseconds unless that node is dying).
HANDOFF_WAIT = 2.0

log = logging.getLogger("smbgw.channels")


def connection_signing_algorithm(conn: ConnectionState) -> int:
    return int(crypto.signing_algorithm(conn.codec.dialect, conn.codec.signing_algorithm))


def create_session(node: NodeServices, conn: ConnectionState) -> Session:
    """A new session on ``conn``, in the node's table and the connection's."""
    if len(conn.sessions) >= node.config.max_sessions_per_connection:
        log_limit(conn.peer, "max_sessions_per_connection")
        raise NtStatusError(Status.INSUFFICIENT_RESOURCES, "too many sessions on a connection")
    table = node.sessions
    while True:
        sid = new_session_id(node.node_id)  # names this node to the others (relay.py)
        if sid and sid not in table:
            break
    algorithm = connection_signing_algorithm(conn)
    session = Session(
        session_id=sid,
        dialect=conn.codec.dialect,
        signing_algorithm=algorithm,
        cipher=conn.codec.cipher,
    )
    session.preauth_hash = conn.preauth_hash
    session.channels[conn] = Channel(session, conn, primary=True, signing_algorithm=algorithm)
    table[sid] = session
    conn.sessions[sid] = session
    return session


def key_for(session: Session, conn: ConnectionState) -> KeyedSession:
    """What signs and verifies ``session``'s messages on ``conn``."""
    channel = session.channels.get(conn)
    if channel is None or channel.primary or not channel.signing_key:
        return session
    return channel


def foreign_session(
    node: NodeServices, conn: ConnectionState, hdr: Header, raw: bytes
) -> Session | None:
    """The session a SESSION_SETUP names that ``conn`` does not have (a bind, or a
    client's mistake), looked up node-wide so the answer can be signed with its
    key, which a client that signs requires even of a refusal."""
    session = node.sessions.get(hdr.session_id)
    if session is None:
        return None
    if hdr.is_signed and session.signing_key and not conn.codec.verify(raw, session):
        raise NtStatusError(Status.ACCESS_DENIED, "bind request not signed with the session key")
    return session


def forget(node: NodeServices, session: Session) -> None:
    """Remove a session from every table; its channels stay to sign the last reply."""
    sid = session.session_id
    if node.sessions.get(sid) is session:
        del node.sessions[sid]
    for conn in session.channels:
        if conn.sessions.get(sid) is session:
            del conn.sessions[sid]


async def end_session(
    node: NodeServices, conn: ConnectionState, session: Session, lost: bool = False
) -> None:
    """LOGOFF, a failed re-authentication, a session replaced: it ends on every channel."""
    await opens.logoff(node, conn, session, lost)
    forget(node, session)


async def drop_connection(node: NodeServices, conn: ConnectionState) -> None:
    """``conn`` is gone: its sessions live on through their other channels, if any."""
    if node.relays is not None:
        node.relays.forget(conn)  # the other nodes' sessions it carried (relay.py)
    for session in list(conn.sessions.values()):
        session.channels.pop(conn, None)
        heir = session.heir(conn)
        if heir is None:
            await end_session(node, conn, session, lost=True)
            continue
        for op in [o for o in conn.opens.values() if o.tree.session is session]:
            del conn.opens[op.volatile_id]
            heir.opens[op.volatile_id] = op
            op.connection = heir
        log.info("%s: session %#x lives on through %s", conn.peer, session.session_id, heir.peer)
    conn.sessions.clear()
    for session in node.sessions.values():
        session.channels.pop(conn, None)  # binds it left unfinished


def observe_reply(node: NodeServices, conn: ConnectionState, session_id: int, msg: bytes) -> None:
    """A MORE_PROCESSING_REQUIRED reply to a 3.1.1 bind enters the channel's preauth hash."""
    session = node.sessions.get(session_id)
    channel = session.channels.get(conn) if session is not None else None
    if channel is not None and channel.authenticator is not None:
        channel.preauth_hash = crypto.preauth_update(channel.preauth_hash, msg)


def bind(ctx: RequestContext, token: bytes) -> tuple[bool, int, bytes]:
    """One leg of a binding SESSION_SETUP: (done, SessionFlags, token to send back)."""
    conn = ctx.conn
    hdr = ctx.header
    session = ctx.session
    if hdr.session_id == 0:
        raise NtStatusError(Status.INVALID_PARAMETER, "bind without a SessionId")
    if session is None:
        raise NtStatusError(Status.USER_SESSION_DELETED)
    ours = connection_signing_algorithm(conn)
    theirs = session.signing_algorithm
    if theirs is None:
        theirs = ours
    gmac = SigningAlgorithm.AES_GMAC
    if theirs >= gmac and ours != theirs:
        raise NtStatusError(Status.REQUEST_OUT_OF_SEQUENCE, "GMAC session, other algorithm here")
    if ours >= gmac and ours != theirs:
        raise NtStatusError(Status.NOT_SUPPORTED, "GMAC here, other algorithm for the session")
    if conn.codec.dialect < Dialect.SMB3_0 or not ctx.node.config.multichannel:
        raise NtStatusError(Status.REQUEST_NOT_ACCEPTED, "no multichannel on this connection")
    if not hdr.is_signed:
        raise NtStatusError(Status.INVALID_PARAMETER, "unsigned bind")
    if session.dialect != conn.codec.dialect or session.cipher != conn.codec.cipher:
        raise NtStatusError(Status.INVALID_PARAMETER, "not the session's dialect or cipher")
    if session.state is SessionState.IN_PROGRESS:
        raise NtStatusError(Status.REQUEST_NOT_ACCEPTED, "session still authenticating")
    if session.state is SessionState.EXPIRED:
        raise NtStatusError(Status.NETWORK_SESSION_EXPIRED)
    channel = session.channels.get(conn)
    if channel is not None and channel.authenticator is None:
        raise NtStatusError(Status.REQUEST_NOT_ACCEPTED, "already bound to this connection")
    if session.is_guest or session.is_anonymous:
        raise NtStatusError(Status.NOT_SUPPORTED, "guest and anonymous sessions cannot bind")
    if channel is None:
        node = ctx.node
        authenticator = Authenticator(
            node.config.users, allow_guest=node.allows_guest, server_name=node.config.server_name
        )
        channel = Channel(
            session,
            conn,
            primary=False,
            signing_algorithm=ours,
            preauth_hash=conn.preauth_hash,
            authenticator=authenticator,
        )
        session.channels[conn] = channel
    assert channel.authenticator is not None
    if conn.codec.dialect == Dialect.SMB3_1_1:
        channel.preauth_hash = crypto.preauth_update(channel.preauth_hash, ctx.raw)
    try:
        out, done = channel.authenticator.step(token)
    except AuthError as e:
        log.info("%s: bind to session %#x failed: %s", conn.peer, session.session_id, e)
        del session.channels[conn]
        raise NtStatusError(e.status) from None
    if not done:
        return False, 0, out
    auth = channel.authenticator
    if auth.is_anonymous or auth.username.lower() != session.username.lower():
        del session.channels[conn]
        raise NtStatusError(Status.ACCESS_DENIED, "bind as another user")
    preauth = channel.preauth_hash if conn.codec.dialect == Dialect.SMB3_1_1 else None
    keys = crypto.derive_session_keys(auth.session_key, conn.codec.dialect, preauth, None)
    channel.signing_key = keys.signing_key
    channel.authenticator = None
    conn.sessions[session.session_id] = session
    log.info("%s: bound to session %#x", conn.peer, session.session_id)
    return True, SessionFlags.ENCRYPT_DATA if session.encrypt_data else 0, out


# -- a client moving from one session (or node) to another ------------------------------


async def end_previous_session(node: NodeServices, session_id: int, successor: Session) -> None:
    """A new session names the one its client lost (MS-SMB2 3.3.5.5.3): end that one
    as if its transport had dropped, so its durable handles wait for the client."""
    old = node.sessions.get(session_id)
    if old is not None and old is not successor and old.channels:
        if not _same_user(old, successor.username, successor.domain):
            return  # another user's session id: leave it alone
        await end_session(node, next(iter(old.channels)), old, lost=True)
        log.info("session %#x replaced by %#x", session_id, successor.session_id)
        return
    # Not here: a client failing over from another node names the session
    # it had there, whose opens and locks that node may still hold.
    payload = {"session": session_id, "user": successor.username,
               "domain": successor.domain, "by": successor.session_id}  # fmt: skip
    successor.handoff_until = time.monotonic() + HANDOFF_WAIT
    try:
        await node.bus.broadcast(SESSION_TOPIC, payload)
    except Exception as e:  # noqa: BLE001 - the old session then ends with its transport
        log.warning("session %#x not ended on the other nodes: %s", session_id, e)


def remote_previous_session(
    node: NodeServices, payload: dict[str, Any]
) -> asyncio.Task[None] | None:
    """Another node's new session replaces one of ours: forget it now, before the
    client's next request reaches us, and end it in the task returned."""
    try:
        sid = int(payload["session"])
        user, domain = str(payload["user"]), str(payload["domain"])
    except (KeyError, TypeError, ValueError):
        log.warning("malformed session replacement from the bus: %r", payload)
        return None
    old = node.sessions.get(sid)
    if old is None or not old.channels or not _same_user(old, user, domain):
        return None
    conn = next(iter(old.channels))
    forget(node, old)
    log.info("session %#x replaced by %#x on another node", sid, payload.get("by", 0))
    return asyncio.get_running_loop().create_task(end_session(node, conn, old, lost=True))


def _same_user(session: Session, user: str, domain: str) -> bool:
    return (session.username.lower(), session.domain.lower()) == (user.lower(), domain.lower())
