"""SESSION_SETUP and LOGOFF (MS-SMB2 2.2.5-2.2.8, 3.3.5.5-3.3.5.6)."""

from __future__ import annotations

import logging
import struct

from ...auth import Authenticator, AuthError
from ...protocol import crypto
from ...protocol.constants import (
    Dialect,
    NtStatusError,
    SecurityMode,
    SessionFlags,
    SessionSetupFlags,
    Status,
)
from ...protocol.wire import check_size
from .. import channels
from ..context import Reply, RequestContext
from ..state import SessionState

log = logging.getLogger("smbgw.session")

_REQ = struct.Struct("<HBBIIHHQ")
_RESP = struct.Struct("<HHHH")


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
        done, session_flags, out = channels.bind(ctx, token)
        status = Status.SUCCESS if done else Status.MORE_PROCESSING_REQUIRED
        return Reply(status, _response(session_flags, out))
    session = ctx.session
    encrypt_required = ctx.node.config.encrypt_required
    if encrypt_required and session is None and not conn.codec.cipher:
        # MS-SMB2 3.3.5.5 (RejectUnencryptedAccess): a connection that cannot
        # encrypt (2.x, no common cipher) gets no session at all.
        raise NtStatusError(Status.ACCESS_DENIED, "encryption required; no cipher here")
    if ctx.header.session_id and session is None:
        raise NtStatusError(Status.USER_SESSION_DELETED)
    if session is not None and conn.sessions.get(session.session_id) is not session:
        # Another connection's session, named without BINDING (MS-SMB2 3.3.5.5).
        raise NtStatusError(Status.USER_SESSION_DELETED)
    if session is None:
        session = channels.create_session(ctx.node, conn)
        ctx.session = session
    reauth = session.state is not SessionState.IN_PROGRESS
    if session.authenticator is None:
        session.authenticator = Authenticator(
            ctx.node.config.users,
            # Windows lets an authenticated session re-authenticate as anonymous
            # (smbtorture smb2.session.reauth2-5), even where nobody may log on so.
            allow_guest=ctx.node.allows_guest or reauth,
            server_name=ctx.node.config.server_name,
        )
        if reauth:
            session.preauth_hash = conn.preauth_hash
    if dialect == Dialect.SMB3_1_1:
        session.preauth_hash = crypto.preauth_update(session.preauth_hash, ctx.raw)
    try:
        out, done = session.authenticator.step(token)
    except AuthError as e:
        log.info("%s: logon failed: %s", conn.peer, e)
        session.authenticator = None
        if reauth:
            # MS-SMB2 3.3.5.5.3: a failed re-authentication ends the session on
            # every channel and closes its opens (smbtorture smb2.notify.invalid-reauth).
            await channels.end_session(ctx.node, conn, session)
        else:
            channels.forget(ctx.node, session)
        raise NtStatusError(e.status) from None
    if not done:
        return Reply(Status.MORE_PROCESSING_REQUIRED, _response(0, out))
    auth = session.authenticator
    session.authenticator = None
    if reauth and not (auth.is_anonymous or auth.username.lower() == session.owner.lower()):
        # Only back to the user who logged on: opens keep the access granted to it.
        raise NtStatusError(Status.ACCESS_DENIED, "re-authentication as another user")
    if encrypt_required and not reauth and (auth.is_guest or auth.is_anonymous):
        # A guest or anonymous session has no key to encrypt with.
        channels.forget(ctx.node, session)
        raise NtStatusError(Status.ACCESS_DENIED, "encryption required; guests cannot encrypt")
    session.username = auth.username
    session.domain = auth.domain
    session.is_guest = auth.is_guest
    session.is_anonymous = auth.is_anonymous
    session_flags = 0
    if not reauth:  # Windows sets neither flag when re-authenticating
        session.owner = auth.username
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
            ctx.node.config.signing_required or sec_mode & SecurityMode.SIGNING_REQUIRED
        )
        session.sign_final = dialect == Dialect.SMB3_1_1 or session.signing_required
        session.encrypt_data = encrypt_required
    if session.encrypt_data:
        session_flags |= SessionFlags.ENCRYPT_DATA
    session.state = SessionState.VALID
    if previous and previous != session.session_id and not reauth:
        # The client lost its old session (MS-SMB2 3.3.5.5.3): end it as if
        # its transport had dropped, so its durable handles wait for us.
        await channels.end_previous_session(ctx.node, previous, session)
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
    await channels.end_session(ctx.node, ctx.conn, session, lost=True)
    return Reply(Status.SUCCESS, struct.pack("<HH", 4, 0))
