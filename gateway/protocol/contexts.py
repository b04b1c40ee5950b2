"""Context chains: create contexts (MS-SMB2 2.2.13.2, 2.2.14.2) and negotiate
contexts (2.3.1, 2.2.4.1), built and parsed the same way by server and client."""

from __future__ import annotations

import struct

from .constants import NtStatusError, Status
from .header import pad8

# Next, NameOffset, NameLength, Reserved, DataOffset, DataLength
_CTX_HDR = struct.Struct("<IHHHHI")
_NEG_CTX = struct.Struct("<HHI")  # ContextType, DataLength, Reserved


def parse_create_contexts(
    body: bytes, offset: int, length: int, fixed_size: int
) -> dict[bytes, bytes]:
    """Create contexts by name (MS-SMB2 2.2.13.2); malformed chains are refused.

    ``offset`` counts from the start of the SMB2 header, as the wire does;
    ``fixed_size`` is the part of the body the chain must come after.
    """
    out: dict[bytes, bytes] = {}
    if not length:
        return out
    start = offset - 64
    if start < fixed_size or start + length > len(body) or start % 8:
        raise NtStatusError(Status.INVALID_PARAMETER, "create contexts outside the message")
    pos = start
    end = start + length
    while True:
        if pos + _CTX_HDR.size > end:
            raise NtStatusError(Status.INVALID_PARAMETER, "truncated create context")
        nxt, name_off, name_len, _r, data_off, data_len = _CTX_HDR.unpack_from(body, pos)
        if name_off + name_len > end - pos or (data_len and data_off + data_len > end - pos):
            raise NtStatusError(Status.INVALID_PARAMETER, "create context outside the chain")
        name = bytes(body[pos + name_off : pos + name_off + name_len])
        data = bytes(body[pos + data_off : pos + data_off + data_len]) if data_len else b""
        if name in out:
            raise NtStatusError(Status.INVALID_PARAMETER, "duplicate create context")
        out[name] = data
        if nxt == 0:
            return out
        if nxt % 8 or pos + nxt >= end:
            raise NtStatusError(Status.INVALID_PARAMETER, "bad create context chain")
        pos += nxt


def build_create_contexts(items: list[tuple[bytes, bytes]]) -> bytes:
    """A chain of create contexts (name, data), each 8-byte aligned (MS-SMB2 2.2.13.2)."""
    chunks: list[bytes] = []
    for i, (name, data) in enumerate(items):
        name_off = _CTX_HDR.size
        data_off = (name_off + len(name) + 7) & ~7
        size = data_off + len(data)
        padded = (size + 7) & ~7 if i != len(items) - 1 else size
        nxt = padded if i != len(items) - 1 else 0
        chunk = (
            _CTX_HDR.pack(nxt, name_off, len(name), 0, data_off if data else 0, len(data))
            + name
            + b"\x00" * (data_off - name_off - len(name))
            + data
        )
        chunks.append(chunk + b"\x00" * (padded - len(chunk)))
    return b"".join(chunks)


def negotiate_context(ctype: int, data: bytes) -> bytes:
    """One negotiate context, unpadded."""
    return _NEG_CTX.pack(ctype, len(data), 0) + data


def join_negotiate_contexts(contexts: list[bytes]) -> bytes:
    """Negotiate contexts back to back, each but the last padded to 8 bytes."""
    joined = b""
    for i, c in enumerate(contexts):
        joined += c
        if i != len(contexts) - 1:
            joined += b"\x00" * pad8(len(joined))
    return joined
