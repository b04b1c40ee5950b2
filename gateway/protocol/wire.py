"""Connection-level message codec: compound chains, signing, encryption, credits.

Sans-IO: it turns received frames into (header, body) pairs and replies into
bytes to send; the asyncio layer owns the socket.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Protocol

from . import crypto
from .constants import (
    HEADER_SIZE,
    SMB1_PROTOCOL_ID,
    TRANSFORM_HEADER_SIZE,
    TRANSFORM_PROTOCOL_ID,
    Command,
    Dialect,
    NtStatusError,
    SigningAlgorithm,
    Status,
)
from .credits import CreditWindow
from .framing import frame_header
from .header import Header, pad8, split_compound

__all__ = ["SMB1_PROTOCOL_ID", "TRANSFORM_PROTOCOL_ID", "Body", "WireCodec", "WireError"]


class WireError(Exception):
    """A frame that cannot be trusted (bad crypto, bad chain): disconnect."""


class KeyedSession(Protocol):
    """What signs or seals messages: a session, or one of its channels (multichannel)."""

    @property
    def session_id(self) -> int: ...
    @property
    def signing_key(self) -> bytes: ...
    @property
    def encryption_key(self) -> bytes: ...
    @property
    def decryption_key(self) -> bytes: ...


_NEXT_COMMAND = struct.Struct("<I")
# A reply body or part of a frame: bytes, the bytearray a READ's data was
# read into, or a view of a ciphertext.
Body = bytes | bytearray | memoryview
# The replies the observer sees: the 3.1.1 preauth hash covers only these.
_OBSERVED = frozenset((Command.NEGOTIATE, Command.SESSION_SETUP))
_ZEROS = bytes(8)
# Below this a reply frame is joined into one buffer; above, its parts go
# out as they are (a join would copy a READ's data once more).
_JOIN_BELOW = 65536


def split_messages(frame: bytes) -> list[tuple[Header, bytes, bytes]]:
    """(header, body, raw message) for each request chained in a frame."""
    out = []
    for offset, length in split_compound(frame):
        raw = frame[offset : offset + length]
        out.append((Header.unpack(raw), raw[HEADER_SIZE:], raw))
    return out


def parse_smb1_negotiate(frame: bytes) -> list[str]:
    """The dialect strings of an SMB1 NEGOTIATE (the multi-protocol negotiate)."""
    if len(frame) < 35 or frame[4] != 0x72:
        raise WireError("SMB1 message other than NEGOTIATE")
    byte_count = struct.unpack_from("<H", frame, 33)[0]
    data = frame[35 : 35 + byte_count]
    return [
        part[1:].decode("ascii", "replace") for part in data.split(b"\x00") if part[:1] == b"\x02"
    ]


class WireCodec:
    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self.dialect = 0
        self.signing_algorithm: int | None = None
        self.cipher: int | None = None
        self.credits = CreditWindow()
        # Called with each reply as sent (before encryption): the 3.1.1
        # preauth integrity hash must cover NEGOTIATE and SESSION_SETUP replies.
        self.observer: Callable[[Header, bytes], None] | None = None

    # -- credits -------------------------------------------------------------

    def grant_credits(self, req: Header) -> int:
        """What a reply to ``req`` grants (see ``gateway.protocol.credits``)."""
        return self.credits.grant(req.credits)

    # -- signing -------------------------------------------------------------

    def _algorithm(self) -> int:
        if self.signing_algorithm is not None:
            return self.signing_algorithm
        if self.dialect >= Dialect.SMB3_0:
            return SigningAlgorithm.AES_CMAC
        return SigningAlgorithm.HMAC_SHA256

    def _algorithm_of(self, session: KeyedSession) -> int:
        # A key keeps the algorithm of the connection it was made on: a session
        # bound from another connection verifies the bind with the session's.
        algorithm: int | None = getattr(session, "signing_algorithm", None)
        return self._algorithm() if algorithm is None else algorithm

    def verify(self, raw: bytes, session: KeyedSession) -> bool:
        # Requests always verify in the client role: a client must not pick the
        # server's role bit of the AES-GMAC nonce.
        return crypto.verify_message(
            raw, session.signing_key, self._algorithm_of(session), from_server=False
        )

    # -- encryption ----------------------------------------------------------

    @staticmethod
    def transform_session_id(frame: bytes) -> int:
        if len(frame) < TRANSFORM_HEADER_SIZE:
            raise WireError("truncated transform header")
        return int(struct.unpack_from("<Q", frame, 44)[0])

    def decrypt(self, frame: bytes, session: KeyedSession) -> bytes:
        try:
            _sid, plain = crypto.decrypt_message(
                frame, session.decryption_key, self.cipher or 0x0001
            )
        except crypto.CryptoError as e:
            raise WireError(f"cannot decrypt: {e}") from None
        return plain

    # -- replies -------------------------------------------------------------

    def encode(
        self,
        messages: Sequence[tuple[Header, Body, KeyedSession | None]],
        encrypt_for: KeyedSession | None,
    ) -> bytes:
        """The frame of ``encode_parts`` as one bytes."""
        return b"".join(self.encode_parts(messages, encrypt_for))

    def encode_parts(
        self,
        messages: Sequence[tuple[Header, Body, KeyedSession | None]],
        encrypt_for: KeyedSession | None,
    ) -> list[Body]:
        """Chain replies (8-byte aligned), sign each, encrypt the chain, frame it.

        In a chain every reply is padded to 8 bytes, the last one too
        (MS-SMB2 3.3.4.1.3; smb2.compound.compound-padding checks it).
        The frame comes back as buffers to send in order (a writev): a large
        body (a READ's data) is sent from the buffer it was read into, signed
        where it lies, and copied only to be encrypted.
        """
        parts: list[Body] = []
        last = len(messages) - 1
        total = 0
        for i, (hdr, body, signer) in enumerate(messages):
            size = HEADER_SIZE + len(body)
            pad = pad8(size) if last else 0
            hdr.next_command = size + pad if i != last else 0
            head: bytes | bytearray = hdr.pack()
            rest = (body, _ZEROS[:pad]) if pad else (body,)
            if signer is not None and encrypt_for is None:
                head = bytearray(head)
                crypto.sign_head(head, rest, signer.signing_key, self._algorithm_of(signer))
            if self.observer is not None and hdr.command in _OBSERVED:
                self.observer(hdr, b"".join((head, *rest)))
            parts.append(head)
            parts.extend(rest)
            total += size + pad
        if encrypt_for is not None:
            sealed = crypto.seal_message(
                b"".join(parts),
                encrypt_for.session_id,
                encrypt_for.encryption_key,
                self.cipher or 0x0001,
            )
            total = sum(len(p) for p in sealed)
            return [frame_header(total), *sealed]
        if total <= _JOIN_BELOW:
            # Small replies go out as one buffer: one write, no iovec.
            return [b"".join((frame_header(total), *parts))]
        return [frame_header(total), *parts]


def check_size(body: bytes, minimum: int, structure_size: int) -> None:
    """Validate a request body's StructureSize and minimum length (MS-SMB2 3.3.5.2.6)."""
    if len(body) < minimum or struct.unpack_from("<H", body, 0)[0] != structure_size:
        raise NtStatusError(Status.INVALID_PARAMETER, "bad StructureSize")
