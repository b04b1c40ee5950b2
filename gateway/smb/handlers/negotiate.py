"""NEGOTIATE (MS-SMB2 2.2.3/2.2.4, 3.3.5.3/3.3.5.4): dialect, contexts, security blob,
and the SMB1 multi-protocol NEGOTIATE that starts SMB2 (3.3.5.3.1-3.3.5.3.2)."""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ...auth import spnego_init_token
from ...protocol import crypto
from ...protocol.constants import (
    SMB1_PROTOCOL_ID,
    SUPPORTED_DIALECTS,
    Capabilities,
    Cipher,
    Dialect,
    HashAlgorithm,
    NegotiateContextType,
    NtStatusError,
    SecurityMode,
    SigningAlgorithm,
    Status,
)
from ...protocol.contexts import join_negotiate_contexts, negotiate_context
from ...protocol.fileinfo import to_filetime
from ...protocol.header import pad8
from ...protocol.wire import check_size
from ..context import Disconnect, Reply, RequestContext

if TYPE_CHECKING:
    from ...config import Config
    from ..services import NodeServices
    from ..state import ConnectionState

_REQ = struct.Struct("<HHHHI16sIHH")  # through NegotiateContextOffset/Count/Reserved2
_RESP = struct.Struct("<HHHH16sIIIIQQHHI")
_CTX = struct.Struct("<HHI")

# Server preference order: GCM before CCM (faster), 128 before 256 (as Windows).
CIPHER_PREFERENCE = (Cipher.AES_128_GCM, Cipher.AES_128_CCM, Cipher.AES_256_GCM, Cipher.AES_256_CCM)
SIGNING_PREFERENCE = (
    SigningAlgorithm.AES_GMAC,
    SigningAlgorithm.AES_CMAC,
    SigningAlgorithm.HMAC_SHA256,
)


def _security_mode(node: NodeServices) -> int:
    mode = SecurityMode.SIGNING_ENABLED
    if node.config.signing_required:
        mode |= SecurityMode.SIGNING_REQUIRED
    return int(mode)


def _capabilities(dialect: int, client_caps: int) -> int:
    caps = 0
    if dialect >= Dialect.SMB2_1:
        caps |= Capabilities.LEASING | Capabilities.LARGE_MTU
    if dialect in (Dialect.SMB3_0, Dialect.SMB3_0_2) and client_caps & Capabilities.ENCRYPTION:
        caps |= Capabilities.ENCRYPTION
    return int(caps)


def node_capabilities(config: Config, dialect: int) -> int:
    """The 3.x capabilities that follow from the node's settings."""
    if dialect < Dialect.SMB3_0:
        return 0
    caps = Capabilities(0)
    if config.multichannel:
        caps |= Capabilities.MULTI_CHANNEL
    if config.any_continuously_available:
        # A server-wide bit (MS-SMB2 3.3.5.4), yet a client asks for persistent
        # handles only on trees whose TREE_CONNECT said CA, so plain shares
        # keep their usual durable handles.
        caps |= Capabilities.PERSISTENT_HANDLES
    return int(caps)


def _io_sizes(node: NodeServices, dialect: int) -> tuple[int, int, int]:
    if dialect == Dialect.SMB2_0_2:
        return 65536, 65536, 65536
    n = node.config.max_io_size
    return n, n, n


def build_response(
    node: NodeServices, dialect: int, security_mode: int, caps: int, contexts: bytes
) -> bytes:
    max_trans, max_read, max_write = _io_sizes(node, dialect)
    blob = spnego_init_token()
    sec_offset = 64 + _RESP.size
    ctx_count = 0
    ctx_offset = 0
    tail = blob
    if contexts:
        ctx_count = conn_context_count(contexts)
        pad = pad8(sec_offset + len(blob))
        ctx_offset = sec_offset + len(blob) + pad
        tail = blob + b"\x00" * pad + contexts
    body = _RESP.pack(
        65,
        security_mode,
        dialect,
        ctx_count,
        node.server_guid,
        caps,
        max_trans,
        max_read,
        max_write,
        to_filetime(time.time()),
        0,
        sec_offset,
        len(blob),
        ctx_offset,
    )
    return body + tail


def conn_context_count(contexts: bytes) -> int:
    count = 0
    off = 0
    while off + 8 <= len(contexts):
        _t, length, _r = _CTX.unpack_from(contexts, off)
        count += 1
        off += 8 + length
        off += pad8(off)
    return count


def _negotiate_contexts(conn: ConnectionState, body: bytes, offset: int, count: int) -> bytes:
    """Parse the client's 3.1.1 contexts, choose, and return ours (MS-SMB2 3.3.5.4)."""
    codec = conn.codec
    pos = offset - 64
    preauth_seen = False
    ciphers: list[int] = []
    signing: list[int] = []
    for _ in range(count):
        pos += pad8(pos)
        if pos + 8 > len(body):
            raise NtStatusError(Status.INVALID_PARAMETER, "truncated negotiate context")
        ctype, length, _r = _CTX.unpack_from(body, pos)
        data = body[pos + 8 : pos + 8 + length]
        if len(data) != length:
            raise NtStatusError(Status.INVALID_PARAMETER, "truncated negotiate context")
        if ctype == NegotiateContextType.PREAUTH_INTEGRITY_CAPABILITIES:
            if preauth_seen or length < 6:
                raise NtStatusError(Status.INVALID_PARAMETER)
            preauth_seen = True
            n_hash = struct.unpack_from("<H", data, 0)[0]
            if n_hash == 0 or 4 + 2 * n_hash > length:
                raise NtStatusError(Status.INVALID_PARAMETER)
            algs = struct.unpack_from(f"<{n_hash}H", data, 4)
            if HashAlgorithm.SHA512 not in algs:
                raise NtStatusError(Status.SMB_NO_PREAUTH_INTEGRITY_HASH_OVERLAP)
        elif ctype == NegotiateContextType.ENCRYPTION_CAPABILITIES:
            if ciphers or length < 2:
                raise NtStatusError(Status.INVALID_PARAMETER)
            n = struct.unpack_from("<H", data, 0)[0]
            if n == 0 or 2 + 2 * n > length:
                raise NtStatusError(Status.INVALID_PARAMETER)
            ciphers = list(struct.unpack_from(f"<{n}H", data, 2))
        elif ctype == NegotiateContextType.SIGNING_CAPABILITIES:
            if length < 2:
                raise NtStatusError(Status.INVALID_PARAMETER)
            n = struct.unpack_from("<H", data, 0)[0]
            if n == 0 or 2 + 2 * n > length:
                raise NtStatusError(Status.INVALID_PARAMETER)
            signing = list(struct.unpack_from(f"<{n}H", data, 2))
        pos += 8 + length
    if not preauth_seen:
        raise NtStatusError(Status.INVALID_PARAMETER, "3.1.1 without preauth integrity")
    out = [
        negotiate_context(
            NegotiateContextType.PREAUTH_INTEGRITY_CAPABILITIES,
            struct.pack("<HHH", 1, 32, HashAlgorithm.SHA512) + os.urandom(32),
        )
    ]
    if ciphers:
        chosen = next((c for c in CIPHER_PREFERENCE if c in ciphers), 0)
        codec.cipher = chosen or None
        data = struct.pack("<HH", 1, chosen)
        out.append(negotiate_context(NegotiateContextType.ENCRYPTION_CAPABILITIES, data))
    if signing:
        algo = next((a for a in SIGNING_PREFERENCE if a in signing), SigningAlgorithm.AES_CMAC)
        codec.signing_algorithm = algo
        data = struct.pack("<HH", 1, algo)
        out.append(negotiate_context(NegotiateContextType.SIGNING_CAPABILITIES, data))
    return join_negotiate_contexts(out)


async def handle_negotiate(ctx: RequestContext) -> Reply:
    conn = ctx.conn
    body = ctx.body
    if conn.negotiated:
        raise Disconnect("second NEGOTIATE on a connection")
    check_size(body, 36, 36)
    _s, n_dialects, sec_mode, _r, caps, guid, ctx_off, ctx_count, _r2 = _REQ.unpack_from(body)
    if n_dialects == 0 or 36 + 2 * n_dialects > len(body):
        raise NtStatusError(Status.INVALID_PARAMETER, "bad DialectCount")
    offered = struct.unpack_from(f"<{n_dialects}H", body, 36)
    dialect = max((d for d in offered if d in SUPPORTED_DIALECTS), default=0)
    if not dialect:
        raise NtStatusError(Status.NOT_SUPPORTED, "no common dialect")
    conn.client_guid = guid
    conn.client_capabilities = caps
    conn.client_security_mode = sec_mode
    conn.client_dialects = tuple(offered)
    conn.codec.dialect = dialect
    contexts = b""
    if dialect == Dialect.SMB3_1_1:
        contexts = _negotiate_contexts(conn, body, ctx_off, ctx_count)
        conn.preauth_hash = crypto.preauth_update(bytes(64), ctx.raw)
    elif dialect >= Dialect.SMB3_0 and caps & Capabilities.ENCRYPTION:
        conn.codec.cipher = Cipher.AES_128_CCM
    resp_caps = _capabilities(dialect, caps) | node_capabilities(ctx.node.config, dialect)
    conn.server_capabilities = resp_caps
    conn.server_security_mode = _security_mode(ctx.node)
    conn.negotiated = True
    out = build_response(ctx.node, dialect, conn.server_security_mode, resp_caps, contexts)
    return Reply(Status.SUCCESS, out)


# The SMB1 header (MS-CIFS 2.2.3.1): protocol, command, status, flags, flags2,
# PID high, security features, reserved, TID, PID low, UID, MID.
_SMB1_HEADER = struct.Struct("<4sBIBHH8sHHHHH")
_SMB1_FLAGS_REPLY = 0x88  # SMB_FLAGS_REPLY | SMB_FLAGS_CASE_INSENSITIVE
_SMB1_FLAGS2 = 0xC001  # UNICODE | NT_STATUS | LONG_NAMES
_SMB1_NO_DIALECT = 0xFFFF


def smb1_negotiate(
    node: NodeServices, conn: ConnectionState, dialects: Sequence[str]
) -> bytes | None:
    """Answer an SMB1 multi-protocol NEGOTIATE (MS-SMB2 3.3.5.3.1, 3.3.5.3.2).

    Returns the body of the SMB2 NEGOTIATE response, or None when the client
    offers no SMB2 dialect (the caller refuses it, ``smb1_no_dialect``).
    "SMB 2.???" wins: the answer 0x02FF says "send an SMB2 NEGOTIATE", and the
    connection stays unnegotiated until that comes. "SMB 2.002" alone ends
    negotiation here, on 2.0.2, as 3.3.5.3.2 says: the client (pysmb, Vista)
    goes straight on to SESSION_SETUP, and a later NEGOTIATE is refused.
    """
    mode = _security_mode(node)
    if "SMB 2.???" in dialects:
        # No DFS bit: the node has no DFS (see the ioctl handler's referrals).
        caps = Capabilities.LEASING | Capabilities.LARGE_MTU
        return build_response(node, Dialect.WILDCARD, mode, int(caps), b"")
    if "SMB 2.002" in dialects:
        conn.codec.dialect = Dialect.SMB2_0_2
        conn.server_security_mode = mode
        conn.server_capabilities = 0
        conn.negotiated = True
        return build_response(node, Dialect.SMB2_0_2, mode, 0, b"")
    return None


def smb1_no_dialect(request: bytes) -> bytes:
    """The SMB1 NEGOTIATE response choosing no dialect (DialectIndex 0xFFFF, MS-CIFS
    2.2.4.52.2) to a request offering only SMB1 dialects. smbd, with SMB2 as its
    minimum protocol, answers so and then hangs up; the node does the same, so
    the client reports "no protocol supported" rather than a reset connection.
    """
    (_p, _c, _s, _f, _f2, pid_high, _sec, _r, tid, pid, uid, mid) = _SMB1_HEADER.unpack_from(
        request
    )
    header = _SMB1_HEADER.pack(
        SMB1_PROTOCOL_ID, 0x72, 0, _SMB1_FLAGS_REPLY, _SMB1_FLAGS2, pid_high, bytes(8), 0,
        tid, pid, uid, mid,
    )  # fmt: skip
    return header + struct.pack("<BHH", 1, _SMB1_NO_DIALECT, 0)
