"""The 64-byte SMB2 header (MS-SMB2 2.2.1), packed and unpacked with one struct."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .constants import HEADER_SIZE, PROTOCOL_ID, HeaderFlags, NtStatusError, Status

# ProtocolId, StructureSize, CreditCharge, Status, Command, Credits, Flags,
# NextCommand, MessageId, (Reserved, TreeId | AsyncId), SessionId, Signature
_SYNC = struct.Struct("<4sHHIHHIIQIIQ16s")
_ASYNC = struct.Struct("<4sHHIHHIIQQQ16s")
assert _SYNC.size == HEADER_SIZE == _ASYNC.size

ZERO_SIGNATURE = bytes(16)
# Plain ints: IntFlag arithmetic showed up in the per-request profile.
_F_ASYNC = int(HeaderFlags.ASYNC_COMMAND)
_F_RELATED = int(HeaderFlags.RELATED_OPERATIONS)
_F_SIGNED = int(HeaderFlags.SIGNED)


@dataclass(slots=True)
class Header:
    command: int
    message_id: int
    credit_charge: int = 0
    status: int = 0  # ChannelSequence/Reserved in requests
    credits: int = 0  # CreditRequest in requests, CreditResponse in responses
    flags: int = 0
    next_command: int = 0
    tree_id: int = 0
    async_id: int = 0
    session_id: int = 0
    signature: bytes = ZERO_SIGNATURE

    @property
    def is_async(self) -> bool:
        return bool(self.flags & _F_ASYNC)

    @property
    def is_related(self) -> bool:
        return bool(self.flags & _F_RELATED)

    @property
    def is_signed(self) -> bool:
        return bool(self.flags & _F_SIGNED)

    @classmethod
    def unpack(cls, buf: bytes | memoryview, offset: int = 0) -> Header:
        if len(buf) - offset < HEADER_SIZE:
            raise NtStatusError(Status.INVALID_PARAMETER, "truncated SMB2 header")
        if bytes(buf[offset : offset + 4]) != PROTOCOL_ID:
            raise NtStatusError(Status.INVALID_PARAMETER, "not an SMB2 header")
        flags = struct.unpack_from("<I", buf, offset + 16)[0]
        if flags & _F_ASYNC:
            (_, size, charge, status, cmd, credits, flags, nxt, mid, async_id, sid, sig) = (
                _ASYNC.unpack_from(buf, offset)
            )
            tid = 0
        else:
            (_, size, charge, status, cmd, credits, flags, nxt, mid, _r, tid, sid, sig) = (
                _SYNC.unpack_from(buf, offset)
            )
            async_id = 0
        if size != HEADER_SIZE:
            raise NtStatusError(Status.INVALID_PARAMETER, "bad header StructureSize")
        return cls(
            command=cmd,
            message_id=mid,
            credit_charge=charge,
            status=status,
            credits=credits,
            flags=flags,
            next_command=nxt,
            tree_id=tid,
            async_id=async_id,
            session_id=sid,
            signature=sig,
        )

    def pack(self) -> bytes:
        if self.flags & _F_ASYNC:
            return _ASYNC.pack(
                PROTOCOL_ID, HEADER_SIZE, self.credit_charge, self.status, self.command,
                self.credits, self.flags, self.next_command, self.message_id,
                self.async_id, self.session_id, self.signature,
            )  # fmt: skip
        return _SYNC.pack(
            PROTOCOL_ID, HEADER_SIZE, self.credit_charge, self.status, self.command,
            self.credits, self.flags, self.next_command, self.message_id,
            0, self.tree_id, self.session_id, self.signature,
        )  # fmt: skip


# An error response body (MS-SMB2 2.2.2): StructureSize 9, ErrorContextCount,
# Reserved, ByteCount, then at least one byte of ErrorData.
_ERROR_BODY = struct.Struct("<HBBI")


def error_body(data: bytes = b"") -> bytes:
    return _ERROR_BODY.pack(9, 0, 0, len(data)) + (data or b"\x00")


def split_compound(frame: bytes) -> list[tuple[int, int]]:
    """Offsets and lengths of the messages chained in one frame by NextCommand.

    Raises NtStatusError for a chain that points outside the frame or is not
    8-byte aligned, which MS-SMB2 3.3.5.2.7 treats as a malformed request.
    """
    out: list[tuple[int, int]] = []
    offset = 0
    total = len(frame)
    while True:
        if total - offset < HEADER_SIZE:
            raise NtStatusError(Status.INVALID_PARAMETER, "truncated compound element")
        nxt = struct.unpack_from("<I", frame, offset + 20)[0]
        if nxt == 0:
            out.append((offset, total - offset))
            return out
        if nxt % 8 or nxt < HEADER_SIZE or offset + nxt > total:
            raise NtStatusError(Status.INVALID_PARAMETER, "bad NextCommand")
        out.append((offset, nxt))
        offset += nxt


def pad8(n: int) -> int:
    return (8 - n % 8) % 8
