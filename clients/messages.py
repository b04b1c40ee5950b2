"""Client-side bodies of SMB2 requests and responses (MS-SMB2 2.2), sans-IO.

The 64-byte header, framing, signing and encryption live in
`gateway.protocol`; this module only lays out the command bodies a client
sends and reads. Builders return request bodies; parsers take a response body
(the bytes after the header) and raise `SmbProtocolError` when it is too
short to be what it claims.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from gateway.protocol.constants import (
    HEADER_SIZE,
    Cipher,
    HashAlgorithm,
    LockFlags,
    NegotiateContextType,
    OplockLevel,
    SigningAlgorithm,
)
from gateway.protocol.contexts import (
    build_create_contexts,
    join_negotiate_contexts,
    negotiate_context,
)
from gateway.protocol.header import pad8

FileId = tuple[int, int]  # (Persistent, Volatile)

_NEG_REQ = struct.Struct("<HHHHI16sIHH")
_NEG_RESP = struct.Struct("<HHHH16sIIIIQQHHI")
_NEG_CTX = struct.Struct("<HHI")
_SESS_REQ = struct.Struct("<HBBIIHHQ")
_SESS_RESP = struct.Struct("<HHHH")
_TREE_REQ = struct.Struct("<HHHH")
_TREE_RESP = struct.Struct("<HBBIII")
_CREATE_REQ = struct.Struct("<HBBIQQIIIIIHHII")
_CREATE_RESP = struct.Struct("<HBBIQQQQQQIIQQII")
_CTX_HDR = struct.Struct("<IHHHHI")
_LEASE_V1 = struct.Struct("<16sIIQ")
_LEASE_V2 = struct.Struct("<16sIIQ16sHH")
_READ_REQ = struct.Struct("<HBBIQQQIIIHH")
_READ_RESP = struct.Struct("<HBBIII")
_WRITE_REQ = struct.Struct("<HHIQQQIIHHI")
_WRITE_RESP = struct.Struct("<HHIIHH")
_FILE_REQ = struct.Struct("<HHIQQ")  # FLUSH and CLOSE share this layout
_LOCK_ELEMENT = struct.Struct("<QQII")
_OPLOCK_BREAK = struct.Struct("<HBBIQQ")
_LEASE_ACK = struct.Struct("<HHI16sIQ")
_LEASE_BREAK = struct.Struct("<HHI16sIIIII")
_SMALL = struct.Struct("<HH")
_DH2Q = struct.Struct("<II8s16s")  # Timeout, Flags, Reserved, CreateGuid
_DH2Q_RESP = struct.Struct("<II")  # Timeout, Flags
_DH2C = struct.Struct("<QQ16sI")  # FileId (persistent, volatile), CreateGuid, Flags

# Offered in preference order; the server picks (MS-SMB2 3.3.5.4).
CIPHERS = (Cipher.AES_128_GCM, Cipher.AES_128_CCM, Cipher.AES_256_GCM, Cipher.AES_256_CCM)
SIGNING_ALGORITHMS = (SigningAlgorithm.AES_GMAC, SigningAlgorithm.AES_CMAC)
LEASE_BREAK_ACK_REQUIRED = 0x01
DHANDLE_FLAG_PERSISTENT = 0x02  # SMB2_DHANDLE_FLAG_PERSISTENT (MS-SMB2 2.2.13.2.11)


class SmbProtocolError(Exception):
    """The server sent something a well-behaved SMB2 server does not."""


def _need(body: bytes, size: int, what: str) -> None:
    if len(body) < size:
        raise SmbProtocolError(f"{what}: {len(body)} bytes, need {size}")


def _blob(body: bytes, offset: int, length: int) -> bytes:
    """A buffer addressed by an offset from the start of the header."""
    start = offset - HEADER_SIZE
    if length and (start < 0 or start + length > len(body)):
        raise SmbProtocolError("buffer outside the message")
    return body[start : start + length] if length else b""


# -- NEGOTIATE -------------------------------------------------------------------


def negotiate_request(
    dialects: tuple[int, ...], security_mode: int, capabilities: int, client_guid: bytes
) -> bytes:
    """With 3.1.1 among the dialects, the preauth, cipher and signing contexts follow."""
    fixed = _NEG_REQ.size + 2 * len(dialects)
    dialect_bytes = struct.pack(f"<{len(dialects)}H", *dialects)
    if 0x0311 not in dialects:
        head = _NEG_REQ.pack(
            36, len(dialects), security_mode, 0, capabilities, client_guid, 0, 0, 0
        )
        return head + dialect_bytes
    contexts = [
        negotiate_context(
            NegotiateContextType.PREAUTH_INTEGRITY_CAPABILITIES,
            struct.pack("<HHH", 1, 32, HashAlgorithm.SHA512) + os.urandom(32),
        ),
        negotiate_context(
            NegotiateContextType.ENCRYPTION_CAPABILITIES,
            struct.pack(f"<H{len(CIPHERS)}H", len(CIPHERS), *CIPHERS),
        ),
        negotiate_context(
            NegotiateContextType.SIGNING_CAPABILITIES,
            struct.pack(
                f"<H{len(SIGNING_ALGORITHMS)}H", len(SIGNING_ALGORITHMS), *SIGNING_ALGORITHMS
            ),
        ),
    ]
    pad = pad8(HEADER_SIZE + fixed)
    ctx_offset = HEADER_SIZE + fixed + pad
    joined = join_negotiate_contexts(contexts)
    head = _NEG_REQ.pack(
        36, len(dialects), security_mode, 0, capabilities, client_guid,
        ctx_offset, len(contexts), 0,
    )  # fmt: skip
    return head + dialect_bytes + b"\x00" * pad + joined


@dataclass
class NegotiateResponse:
    security_mode: int
    dialect: int
    server_guid: bytes
    capabilities: int
    max_transact: int
    max_read: int
    max_write: int
    security_blob: bytes
    cipher: int | None = None
    signing_algorithm: int | None = None


def parse_negotiate_response(body: bytes) -> NegotiateResponse:
    _need(body, _NEG_RESP.size, "NEGOTIATE response")
    (
        _s, sec_mode, dialect, ctx_count, guid, caps, max_trans, max_read, max_write,
        _time, _start, blob_off, blob_len, ctx_off,
    ) = _NEG_RESP.unpack_from(body)  # fmt: skip
    out = NegotiateResponse(
        sec_mode, dialect, guid, caps, max_trans, max_read, max_write,
        _blob(body, blob_off, blob_len),
    )  # fmt: skip
    if dialect != 0x0311:
        return out
    pos = ctx_off - HEADER_SIZE
    for _ in range(ctx_count):
        pos += pad8(pos)
        _need(body, pos + _NEG_CTX.size, "negotiate context")
        ctype, length, _r = _NEG_CTX.unpack_from(body, pos)
        data = body[pos + _NEG_CTX.size : pos + _NEG_CTX.size + length]
        if len(data) != length:
            raise SmbProtocolError("truncated negotiate context")
        if ctype == NegotiateContextType.ENCRYPTION_CAPABILITIES and length >= 4:
            out.cipher = struct.unpack_from("<H", data, 2)[0] or None
        elif ctype == NegotiateContextType.SIGNING_CAPABILITIES and length >= 4:
            out.signing_algorithm = struct.unpack_from("<H", data, 2)[0]
        pos += _NEG_CTX.size + length
    return out


# -- SESSION_SETUP, TREE_CONNECT ---------------------------------------------------


def session_setup_request(security_mode: int, token: bytes, previous_session_id: int = 0) -> bytes:
    """``previous_session_id``: the session a reconnecting client lost (MS-SMB2 2.2.5)."""
    offset = HEADER_SIZE + _SESS_REQ.size
    head = _SESS_REQ.pack(25, 0, security_mode, 0, 0, offset, len(token), previous_session_id)
    return head + token


def parse_session_setup_response(body: bytes) -> tuple[int, bytes]:
    """(SessionFlags, security token)."""
    _need(body, _SESS_RESP.size, "SESSION_SETUP response")
    _s, flags, off, length = _SESS_RESP.unpack_from(body)
    return flags, _blob(body, off, length)


def tree_connect_request(unc: str) -> bytes:
    path = unc.encode("utf-16-le")
    return _TREE_REQ.pack(9, 0, HEADER_SIZE + _TREE_REQ.size, len(path)) + path


@dataclass
class TreeConnectResponse:
    share_type: int
    share_flags: int
    capabilities: int
    maximal_access: int


def parse_tree_connect_response(body: bytes) -> TreeConnectResponse:
    _need(body, _TREE_RESP.size, "TREE_CONNECT response")
    _s, share_type, _r, flags, caps, access = _TREE_RESP.unpack_from(body)
    return TreeConnectResponse(share_type, flags, caps, access)


# -- CREATE ------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseRequest:
    key: bytes
    state: int
    version: int = 2  # v2 (RqLs of 52 bytes) needs SMB 3.x; 2.1 only knows v1
    epoch: int = 0


@dataclass(frozen=True)
class DurableRequest:
    """A DH2Q: ask for a durable handle, persistent on a continuously available share."""

    create_guid: bytes  # 16 bytes naming this create, kept for the reconnect
    timeout_ms: int = 60_000
    persistent: bool = True


@dataclass(frozen=True)
class DurableReconnect:
    """A DH2C: take back the durable handle ``file_id`` after a lost connection."""

    file_id: FileId
    create_guid: bytes
    persistent: bool


def create_request(
    name: str,
    *,
    access: int,
    share: int,
    disposition: int,
    options: int = 0,
    attributes: int = 0,
    oplock: int = OplockLevel.NONE,
    lease: LeaseRequest | None = None,
    durable: DurableRequest | DurableReconnect | None = None,
) -> bytes:
    name_bytes = name.replace("/", "\\").encode("utf-16-le")
    contexts: list[tuple[bytes, bytes]] = []
    if lease is not None:
        oplock = OplockLevel.LEASE
        if lease.version == 2:
            data = _LEASE_V2.pack(lease.key, lease.state, 0, 0, bytes(16), lease.epoch, 0)
        else:
            data = _LEASE_V1.pack(lease.key, lease.state, 0, 0)
        contexts.append((b"RqLs", data))
    if durable is not None:
        contexts.append(_durable_context(durable))
    name_off = HEADER_SIZE + _CREATE_REQ.size
    # The Buffer field is never empty (MS-SMB2 2.2.13), hence the NUL for "".
    buf = name_bytes or b"\x00"
    ctx_bytes = build_create_contexts(contexts)
    ctx_off = 0
    if ctx_bytes:
        buf += b"\x00" * pad8(name_off + len(buf))
        ctx_off = name_off + len(buf)
        buf += ctx_bytes
    head = _CREATE_REQ.pack(
        57, 0, oplock, 2, 0, 0, access, attributes, share, disposition, options,
        name_off, len(name_bytes), ctx_off, len(ctx_bytes),
    )  # fmt: skip
    return head + buf


def _durable_context(durable: DurableRequest | DurableReconnect) -> tuple[bytes, bytes]:
    flags = DHANDLE_FLAG_PERSISTENT if durable.persistent else 0
    if isinstance(durable, DurableRequest):
        return b"DH2Q", _DH2Q.pack(durable.timeout_ms, flags, bytes(8), durable.create_guid)
    return b"DH2C", _DH2C.pack(*durable.file_id, durable.create_guid, flags)


@dataclass
class CreateResponse:
    oplock: int
    action: int
    size: int
    attributes: int
    file_id: FileId
    lease_state: int | None = None
    lease_epoch: int = 0
    durable_flags: int | None = None  # the DH2Q response's Flags; None: not durable (v2)


def parse_create_response(body: bytes) -> CreateResponse:
    _need(body, _CREATE_RESP.size, "CREATE response")
    (
        _s, oplock, _f, action, _c, _a, _w, _ch, _alloc, size, attrs, _r,
        persistent, volatile, ctx_off, ctx_len,
    ) = _CREATE_RESP.unpack_from(body)  # fmt: skip
    out = CreateResponse(oplock, action, size, attrs, (persistent, volatile))
    # Not gateway.protocol.contexts.parse_create_contexts: that is the server's
    # strict request parser (it raises NtStatusError, a status the server never
    # sent, and refuses unaligned or duplicate contexts); a response is read
    # leniently here, taking only the lease and DH2Q contexts and skipping the rest.
    contexts = _blob(body, ctx_off, ctx_len)
    pos = 0
    while ctx_len and pos + _CTX_HDR.size <= len(contexts):
        nxt, name_off, name_len, _r2, data_off, data_len = _CTX_HDR.unpack_from(contexts, pos)
        name = contexts[pos + name_off : pos + name_off + name_len]
        data = contexts[pos + data_off : pos + data_off + data_len]
        if name == b"RqLs" and len(data) >= _LEASE_V1.size:
            out.lease_state = _LEASE_V1.unpack_from(data)[1]
            if len(data) >= _LEASE_V2.size:
                out.lease_epoch = _LEASE_V2.unpack_from(data)[5]
        elif name == b"DH2Q" and len(data) >= _DH2Q_RESP.size:
            out.durable_flags = _DH2Q_RESP.unpack_from(data)[1]
        if not nxt:
            break
        pos += nxt
    return out


# -- READ, WRITE, FLUSH, LOCK, CLOSE -------------------------------------------------


def read_request(fid: FileId, offset: int, length: int) -> bytes:
    # One byte of Buffer: the structure size is odd (49) by definition.
    return _READ_REQ.pack(49, 0x50, 0, length, offset, *fid, 0, 0, 0, 0, 0) + b"\x00"


def parse_read_response(body: bytes) -> bytes:
    _need(body, _READ_RESP.size, "READ response")
    _s, data_off, _r, length, _rem, _r2 = _READ_RESP.unpack_from(body)
    return _blob(body, data_off, length)


def write_request(fid: FileId, offset: int, data: bytes) -> bytes:
    head = _WRITE_REQ.pack(
        49, HEADER_SIZE + _WRITE_REQ.size, len(data), offset, *fid, 0, 0, 0, 0, 0
    )
    return head + data


def parse_write_response(body: bytes) -> int:
    _need(body, _WRITE_RESP.size, "WRITE response")
    return int(_WRITE_RESP.unpack_from(body)[2])


def flush_request(fid: FileId) -> bytes:
    return _FILE_REQ.pack(24, 0, 0, *fid)


def close_request(fid: FileId) -> bytes:
    return _FILE_REQ.pack(24, 0, 0, *fid)


@dataclass(frozen=True)
class LockElement:
    offset: int
    length: int
    flags: int

    @classmethod
    def exclusive(cls, offset: int, length: int, wait: bool = True) -> LockElement:
        flags = LockFlags.EXCLUSIVE_LOCK | (0 if wait else LockFlags.FAIL_IMMEDIATELY)
        return cls(offset, length, int(flags))

    @classmethod
    def shared(cls, offset: int, length: int, wait: bool = True) -> LockElement:
        flags = LockFlags.SHARED_LOCK | (0 if wait else LockFlags.FAIL_IMMEDIATELY)
        return cls(offset, length, int(flags))

    @classmethod
    def unlock(cls, offset: int, length: int) -> LockElement:
        return cls(offset, length, int(LockFlags.UNLOCK))


def lock_request(fid: FileId, elements: list[LockElement]) -> bytes:
    head = struct.pack("<HHIQQ", 48, len(elements), 0, *fid)
    return head + b"".join(_LOCK_ELEMENT.pack(e.offset, e.length, e.flags, 0) for e in elements)


def small_request() -> bytes:
    """The 4-byte body of LOGOFF, TREE_DISCONNECT, ECHO and CANCEL."""
    return _SMALL.pack(4, 0)


# -- OPLOCK_BREAK ---------------------------------------------------------------------


@dataclass(frozen=True)
class BreakNotice:
    """An oplock or lease break the server sent (MS-SMB2 2.2.23)."""

    file_id: FileId | None  # oplock breaks name the open
    new_oplock: int = 0
    lease_key: bytes | None = None  # lease breaks name the lease
    current_state: int = 0
    new_state: int = 0
    epoch: int = 0
    ack_required: bool = True

    @property
    def is_lease(self) -> bool:
        return self.lease_key is not None


def parse_break_notification(body: bytes) -> BreakNotice:
    _need(body, 2, "OPLOCK_BREAK notification")
    size = struct.unpack_from("<H", body)[0]
    if size == 24:
        _need(body, _OPLOCK_BREAK.size, "oplock break")
        _s, level, _r, _r2, persistent, volatile = _OPLOCK_BREAK.unpack_from(body)
        # A break to none from Level II needs no acknowledgement (MS-SMB2 3.2.5.19.1),
        # but the notification does not say what it breaks from: the open knows.
        return BreakNotice((persistent, volatile), new_oplock=level)
    if size == 44:
        _need(body, _LEASE_BREAK.size, "lease break")
        _s, epoch, flags, key, current, new, _reason, _am, _sm = _LEASE_BREAK.unpack_from(body)
        return BreakNotice(
            None,
            lease_key=key,
            current_state=current,
            new_state=new,
            epoch=epoch,
            ack_required=bool(flags & LEASE_BREAK_ACK_REQUIRED),
        )
    raise SmbProtocolError(f"OPLOCK_BREAK notification with StructureSize {size}")


def oplock_ack_request(fid: FileId, level: int) -> bytes:
    return _OPLOCK_BREAK.pack(24, level, 0, 0, *fid)


def parse_oplock_ack_response(body: bytes) -> int:
    _need(body, _OPLOCK_BREAK.size, "oplock break response")
    return int(_OPLOCK_BREAK.unpack_from(body)[1])


def lease_ack_request(key: bytes, state: int) -> bytes:
    return _LEASE_ACK.pack(36, 0, 0, key, state, 0)


def parse_lease_ack_response(body: bytes) -> int:
    _need(body, _LEASE_ACK.size, "lease break response")
    return int(_LEASE_ACK.unpack_from(body)[4])
