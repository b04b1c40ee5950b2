"""SESSION_SETUP and LOGOFF (MS-SMB2 2.2.5-2.2.8, 3.3.5.5-3.3.5.6)."""

from __future__ import annotations

import logging
import os
import struct

from ..auth import Authenticator, AuthError
from ..context import Reply, RequestContext
from ..protocol import crypto
from ..protocol.constants import (
    Dialect,
    NtStatusError,
    SecurityMode,
    SessionFlags,
    SessionSetupFlags,
    Status,
)
from ..protocol.wire import check_size
from ..state import Session

log = logging.getLogger("smbgw.session")

_REQ = struct.Struct("<HBBIIHHQ")
_RESP = struct.Struct("<HHHH")


def _new_session_id(taken: dict[int, Session]) -> int:
    while True:
        sid = int.from_bytes(os.urandom(8), "little") & 0x7FFFFFFFFFFFFFFF
        if sid and sid not in taken:
            return sid


async def handle_session_setup(ctx: RequestContext) -> Reply:
    conn = ctx.conn
    if not conn.negotiated:
        raise NtStatusError(Status.ACCESS_DENIED, "SESSION_SETUP before NEGOTIATE")
    body = ctx.body
    check_size(body, 24, 25)
    _s, flags, sec_mode, _caps, _chan, blob_off, blob_len, previous = _REQ.unpack_from(body)
    start = blob_off - 64
    if blob_len and (start < _REQ.size or start + blob_len > len(body)):
        raise NtStatusError(Status.INVALID_PARAMETER, "security buffer outside the message")
    token = body[start : start + blob_len]
    dialect = conn.codec.dialect
    if flags & SessionSetupFlags.BINDING:
        # Multichannel is not offered, so a binding request is refused as Windows does.
        raise NtStatusError(Status.REQUEST_NOT_ACCEPTED)
    session = ctx.session
    if ctx.header.session_id and session is None:
        raise NtStatusError(Status.USER_SESSION_DELETED)
    if session is None:
        session = Session(session_id=_new_session_id(conn.sessions), dialect=dialect)
        session.preauth_hash = conn.preauth_hash
        conn.sessions[session.session_id] = session
        ctx.session = session
    if session.authenticator is None:
        session.authenticator = Authenticator(
            conn.node.config.users,
            allow_guest=conn.node.allows_guest,
            server_name=conn.node.config.server_name,
        )
        if session.state == "valid" or session.state == "expired":
            session.preauth_hash = conn.preauth_hash
    if dialect == Dialect.SMB3_1_1:
        session.preauth_hash = crypto.preauth_update(session.preauth_hash, ctx.raw)
    try:
        out, done = session.authenticator.step(token)
    except AuthError as e:
        log.info("%s: logon failed: %s", conn.peer, e)
        session.authenticator = None
        if session.state != "in_progress":
            # MS-SMB2 3.3.5.5.3: a failed re-authentication ends the session and
            # closes its opens (smbtorture smb2.notify.invalid-reauth).
            await conn.node.logoff(conn, session)
        conn.sessions.pop(session.session_id, None)
        raise NtStatusError(Status.LOGON_FAILURE) from None
    if not done:
        return Reply(Status.MORE_PROCESSING_REQUIRED, _response(0, out))
    auth = session.authenticator
    session.authenticator = None
    reauth = session.state != "in_progress"
    if reauth and auth.username.lower() != session.username.lower():
        raise NtStatusError(Status.ACCESS_DENIED, "re-authentication as another user")
    session.username = auth.username
    session.domain = auth.domain
    session.is_guest = auth.is_guest
    session.is_anonymous = auth.is_anonymous
    session_flags = 0
    if auth.is_anonymous:
        session_flags |= SessionFlags.IS_NULL
    elif auth.is_guest:
        session_flags |= SessionFlags.IS_GUEST
    if not (auth.is_guest or auth.is_anonymous) and not reauth:
        session.session_key = auth.session_key
        keys = crypto.derive_session_keys(
            auth.session_key,
            dialect,
            session.preauth_hash if dialect == Dialect.SMB3_1_1 else None,
            conn.codec.cipher,
        )
        session.signing_key = keys.signing_key
        session.application_key = keys.application_key
        session.encryption_key = keys.encryption_key
        session.decryption_key = keys.decryption_key
        session.signing_required = bool(
            conn.node.config.signing_required or sec_mode & SecurityMode.SIGNING_REQUIRED
        )
        session.sign_final = dialect == Dialect.SMB3_1_1 or session.signing_required
        if conn.node.config.encrypt_required and conn.codec.cipher:
            session.encrypt_data = True
    if session.encrypt_data:
        session_flags |= SessionFlags.ENCRYPT_DATA
    session.state = "valid"
    if previous and previous != session.session_id and not reauth:
        # The client lost its old session (MS-SMB2 3.3.5.5.3): end it as if
        # its transport had dropped, so its durable handles wait for us.
        await conn.node.end_previous_session(previous, session)
    log.info(
        "%s: %s\\%s logged on (session %#x)",
        conn.peer,
        auth.domain,
        auth.username,
        session.session_id,
    )
    return Reply(Status.SUCCESS, _response(session_flags, out))


def _response(session_flags: int, token: bytes) -> bytes:
    return _RESP.pack(9, session_flags, 64 + _RESP.size, len(token)) + token


async def handle_logoff(ctx: RequestContext) -> Reply:
    check_size(ctx.body, 4, 4)
    session = ctx.session
    if session is None:
        raise NtStatusError(Status.USER_SESSION_DELETED)
    # Durable handles survive a logoff too; the client may reclaim them from
    # a new session (smbtorture smb2.durable-open.reopen4).
    await ctx.node.logoff(ctx.conn, session, lost=True)
    ctx.conn.sessions.pop(session.session_id, None)
    return Reply(Status.SUCCESS, struct.pack("<HH", 4, 0))
