"""SMB2/3 key derivation, signing, encryption and preauth integrity (MS-SMB2 3.1.4).

Sans-IO: bytes in, bytes out; nothing here touches a socket or an event loop.

Hot path: every message of a signed or encrypted session passes through here.
A caller that keeps per-session state should hold a prepared `Signer` (signing
key) and `TransformCipher` (encryption or decryption key) and call their
methods directly. The module-level functions (`sign_message`, `verify_message`,
`encrypt_message`, `decrypt_message`) take raw key bytes and look the prepared
object up in a small LRU cache keyed by (key, algorithm), so they are cheap
too, just not free.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM

from .constants import (
    HEADER_SIZE,
    TRANSFORM_HEADER_SIZE,
    TRANSFORM_PROTOCOL_ID,
    Cipher,
    Command,
    Dialect,
    HeaderFlags,
    SigningAlgorithm,
)

__all__ = [
    "PREAUTH_HASH_INITIAL",
    "CryptoError",
    "NONCE_LIMIT",
    "NonceExhausted",
    "SessionKeys",
    "Signer",
    "TransformCipher",
    "compute_signature",
    "decrypt_message",
    "derive_session_keys",
    "encrypt_message",
    "kdf",
    "parse_transform_header",
    "preauth_update",
    "sign_message",
    "signing_algorithm",
    "verify_message",
]

Buffer = bytes | bytearray | memoryview
KeySource = bytes | Callable[[int], bytes | None]


class CryptoError(Exception):
    """A message failed authentication, or is not a well-formed transform."""


class NonceExhausted(CryptoError):
    """A key has sealed as many messages as its nonces allow: the session must end."""


# -- key derivation (MS-SMB2 3.1.4.2) ------------------------------------------


def kdf(key: bytes, label: bytes, context: bytes, length_bits: int = 128) -> bytes:
    """SP800-108 KDF in counter mode, PRF HMAC-SHA256, r = 32.

    `label` and `context` are passed exactly as MS-SMB2 lists them, i.e. with
    their own trailing NUL (b"SMB2AESCMAC\\x00"); the extra 0x00 between them
    is SP800-108's separator, so the PRF input has two NULs there.
    """
    if length_bits <= 0 or length_bits % 8:
        raise ValueError("length_bits must be a positive multiple of 8")
    fixed = label + b"\x00" + context + struct.pack(">I", length_bits)
    out = bytearray()
    counter = 1
    while len(out) * 8 < length_bits:
        out += hmac.digest(key, struct.pack(">I", counter) + fixed, "sha256")
        counter += 1
    return bytes(out[: length_bits // 8])


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The keys of one authenticated session, from the server's point of view."""

    signing_key: bytes
    application_key: bytes
    encryption_key: bytes  # server -> client ("ServerOut", SMBS2CCipherKey)
    decryption_key: bytes  # client -> server ("ServerIn ", SMBC2SCipherKey)


_AES_256 = (Cipher.AES_256_CCM, Cipher.AES_256_GCM)


def derive_session_keys(
    session_key: bytes, dialect: int, preauth_hash: bytes | None, cipher: int | None
) -> SessionKeys:
    """Session keys per MS-SMB2 3.3.5.5.3 (server side).

    `session_key` is the full GSS session key; `preauth_hash` is the session's
    PreauthIntegrityHashValue (required for 3.1.1, ignored otherwise). 2.0.2
    and 2.1 have no encryption: their encryption keys are empty.
    """
    # Session.SessionKey: first 16 bytes of the GSS key, right-padded with zeros.
    key16 = session_key[:16].ljust(16, b"\x00")
    if dialect < Dialect.SMB3_0:
        # 2.x signs with the session key itself (HMAC-SHA256), and hands the
        # session key to applications (MS-SMB2 3.3.4.5).
        return SessionKeys(key16, key16, b"", b"")
    if dialect != Dialect.SMB3_1_1:
        return SessionKeys(
            signing_key=kdf(key16, b"SMB2AESCMAC\x00", b"SmbSign\x00"),
            application_key=kdf(key16, b"SMB2APP\x00", b"SmbRpc\x00"),
            encryption_key=kdf(key16, b"SMB2AESCCM\x00", b"ServerOut\x00"),
            decryption_key=kdf(key16, b"SMB2AESCCM\x00", b"ServerIn \x00"),
        )
    if preauth_hash is None or len(preauth_hash) != 64:
        # A guessed context would give keys the client never reproduces: fail loudly.
        raise ValueError("SMB 3.1.1 key derivation needs the 64-byte preauth integrity hash")
    if cipher in _AES_256:
        # AES-256 keys come from the untruncated GSS key (a Kerberos AES-256
        # key is 32 bytes) with L = 256; signing keys stay 128-bit either way.
        cipher_kdk, bits = session_key, 256
    else:
        cipher_kdk, bits = key16, 128
    return SessionKeys(
        signing_key=kdf(key16, b"SMBSigningKey\x00", preauth_hash),
        application_key=kdf(key16, b"SMBAppKey\x00", preauth_hash),
        encryption_key=kdf(cipher_kdk, b"SMBS2CCipherKey\x00", preauth_hash, bits),
        decryption_key=kdf(cipher_kdk, b"SMBC2SCipherKey\x00", preauth_hash, bits),
    )


# -- signing (MS-SMB2 3.1.4.1, 3.1.5.1) -----------------------------------------

_ZERO_SIGNATURE = bytes(16)
_SIG_START, _SIG_END = 48, 64
_FLAGS = struct.Struct("<I")
_U16 = struct.Struct("<H")


def signing_algorithm(dialect: int, negotiated: int | None = None) -> SigningAlgorithm:
    """The algorithm a connection signs with.

    `negotiated` is the SIGNING_CAPABILITIES choice, which only 3.1.1 has;
    without it 3.x uses AES-CMAC and 2.x HMAC-SHA256.
    """
    if dialect == Dialect.SMB3_1_1 and negotiated is not None:
        return SigningAlgorithm(negotiated)
    if dialect >= Dialect.SMB3_0:
        return SigningAlgorithm.AES_CMAC
    return SigningAlgorithm.HMAC_SHA256


def _gmac_nonce(msg: Buffer, from_server: bool | None) -> bytes:
    # MS-SMB2 3.1.4.1: MessageId, then a 32-bit word whose bit 0 says the
    # sender is the server and bit 1 that the message is a CANCEL request.
    flags = _FLAGS.unpack_from(msg, 16)[0]
    if from_server is None:
        from_server = bool(flags & HeaderFlags.SERVER_TO_REDIR)
    word = 1 if from_server else 0
    if not from_server and _U16.unpack_from(msg, 12)[0] == Command.CANCEL:
        word |= 2
    return bytes(msg[24:32]) + _FLAGS.pack(word)


class Signer:
    """A signing key prepared for one algorithm; keep one per session or channel.

    Every method computes the signature as if the Signature field (bytes
    48..64) were zero, without copying the message for HMAC and CMAC.
    `from_server` says who sent the message (it enters the AES-GMAC nonce);
    None reads it from the header's SERVER_TO_REDIR flag. A verifier that
    knows the sender should pass it, so a reflected message cannot pick its role.
    """

    __slots__ = ("algorithm", "_hmac", "_cmac", "_gcm")

    def __init__(self, key: bytes, algorithm: int) -> None:
        if not key:
            raise ValueError("empty signing key")
        self.algorithm = SigningAlgorithm(algorithm)
        self._hmac: hmac.HMAC | None = None
        self._cmac: cmac.CMAC | None = None
        self._gcm: AESGCM | None = None
        if self.algorithm == SigningAlgorithm.HMAC_SHA256:
            self._hmac = hmac.new(key, digestmod=hashlib.sha256)
        elif self.algorithm == SigningAlgorithm.AES_CMAC:
            # The key schedule is done once; each message works on a copy.
            self._cmac = cmac.CMAC(algorithms.AES(key))
        else:
            self._gcm = AESGCM(key)

    def signature(self, msg: Buffer, *, from_server: bool | None = None) -> bytes:
        """The 16-byte signature of one SMB2 message (header, body, padding)."""
        if len(msg) < HEADER_SIZE:
            raise ValueError("message shorter than an SMB2 header")
        return self.signature_of(msg, (), from_server=from_server)

    def signature_of(
        self, head: Buffer, rest: Sequence[Buffer], *, from_server: bool | None = None
    ) -> bytes:
        """The signature of the message ``head`` followed by ``rest``.

        ``head`` holds at least the 64-byte header; a large READ's data stays
        in its own buffer and is never joined to it (except for AES-GMAC,
        whose one call needs the whole message).
        """
        view = memoryview(head)
        if self._gcm is not None:
            data = b"".join((view[:_SIG_START], _ZERO_SIGNATURE, view[_SIG_END:], *rest))
            return self._gcm.encrypt(_gmac_nonce(head, from_server), b"", data)
        mac: cmac.CMAC | hmac.HMAC
        if self._cmac is not None:
            mac = self._cmac.copy()
        else:
            assert self._hmac is not None
            mac = self._hmac.copy()
        # CMAC.update takes any buffer (the stub says bytes): no copy of the body.
        mac.update(view[:_SIG_START])  # type: ignore[arg-type]
        mac.update(_ZERO_SIGNATURE)
        mac.update(view[_SIG_END:])  # type: ignore[arg-type]
        for part in rest:
            mac.update(part)  # type: ignore[arg-type]
        if self._cmac is not None:
            return mac.finalize()  # type: ignore[union-attr]
        return mac.digest()[:16]  # type: ignore[union-attr]

    def sign_head(
        self, head: bytearray, rest: Sequence[Buffer] = (), *, from_server: bool | None = None
    ) -> None:
        """Set SMB2_FLAGS_SIGNED and the Signature in ``head``, signing ``head`` + ``rest``."""
        if len(head) < HEADER_SIZE:
            raise ValueError("message shorter than an SMB2 header")
        flags = _FLAGS.unpack_from(head, 16)[0]
        _FLAGS.pack_into(head, 16, flags | HeaderFlags.SIGNED)
        head[_SIG_START:_SIG_END] = self.signature_of(head, rest, from_server=from_server)

    def sign(self, msg: Buffer, *, from_server: bool | None = None) -> bytes:
        """The message with SMB2_FLAGS_SIGNED set and its Signature filled in."""
        buf = bytearray(msg)
        self.sign_head(buf, from_server=from_server)
        return bytes(buf)

    def verify(self, msg: Buffer, *, from_server: bool | None = None) -> bool:
        """Whether the message's Signature field is right (constant-time compare)."""
        if len(msg) < HEADER_SIZE:
            return False
        got = bytes(memoryview(msg)[_SIG_START:_SIG_END])
        return hmac.compare_digest(got, self.signature(msg, from_server=from_server))


@functools.lru_cache(maxsize=1024)
def _signer(key: bytes, algorithm: int) -> Signer:
    return Signer(key, algorithm)


def compute_signature(
    msg: Buffer, key: bytes, algorithm: int, *, from_server: bool | None = None
) -> bytes:
    """The 16-byte signature of a message, its Signature field taken as zero."""
    return _signer(bytes(key), int(algorithm)).signature(msg, from_server=from_server)


def sign_message(
    msg: Buffer, key: bytes, algorithm: int, *, from_server: bool | None = None
) -> bytes:
    """The message with SMB2_FLAGS_SIGNED set and its signature filled in.

    `algorithm` is a `SigningAlgorithm` (see `signing_algorithm()`).
    """
    return _signer(bytes(key), int(algorithm)).sign(msg, from_server=from_server)


def sign_head(head: bytearray, rest: Sequence[Buffer], key: bytes, algorithm: int) -> None:
    """Sign the message ``head`` + ``rest`` in place: its flag and Signature are in ``head``."""
    _signer(bytes(key), int(algorithm)).sign_head(head, rest)


def verify_message(
    msg: Buffer, key: bytes, algorithm: int, *, from_server: bool | None = None
) -> bool:
    """Whether a received message carries the right signature.

    False (never an exception) for a short message or an unusable key: a
    session without a signing key cannot vouch for anything.
    """
    if len(msg) < HEADER_SIZE:
        return False
    try:
        signer = _signer(bytes(key), int(algorithm))
    except ValueError:
        return False
    return signer.verify(msg, from_server=from_server)


# -- encryption (MS-SMB2 2.2.41, 3.1.4.3, 3.3.5.2.1.1) ---------------------------

# ProtocolId, Signature, Nonce, OriginalMessageSize, Reserved,
# Flags/EncryptionAlgorithm, SessionId.
_TRANSFORM = struct.Struct("<4s16s16sIHHQ")
_AAD_START = 20  # the AAD is the transform header from its Nonce field on
_TRANSFORM_FLAGS_ENCRYPTED = 0x0001
_TAG = 16
_CCM = (Cipher.AES_128_CCM, Cipher.AES_256_CCM)
_GCM = (Cipher.AES_128_GCM, Cipher.AES_256_GCM)


# Messages one TransformCipher seals before it refuses: its 32-bit counter's range.
NONCE_LIMIT = 2**32 - 1


class TransformCipher:
    """An encryption or decryption key prepared for one cipher; keep one per direction.

    The AEAD nonce (11 bytes for CCM, 12 for GCM, the rest of the 16-byte Nonce
    field zero) is a random prefix drawn once per instance and a 32-bit counter,
    unless the caller passes one: no nonce repeats under the key, which random
    nonces only make unlikely (and CCM's 88 bits less so than GCM's 96). After
    ``limit`` messages it raises NonceExhausted; SMB has no rekeying, so the
    sender ends the session. Another instance with the same key (another
    channel of the session) draws another prefix: 56 or 64 random bits.
    """

    __slots__ = ("cipher", "nonce_size", "_aead", "_prefix", "_sealed", "_limit")

    def __init__(self, key: bytes, cipher: int, *, limit: int = NONCE_LIMIT) -> None:
        self.cipher = Cipher(cipher)
        want = 32 if self.cipher in _AES_256 else 16
        if len(key) != want:
            raise ValueError(f"{self.cipher.name} needs a {want}-byte key, got {len(key)}")
        self._aead: AESCCM | AESGCM
        if self.cipher in _CCM:
            self.nonce_size = 11
            self._aead = AESCCM(key, tag_length=_TAG)
        else:
            self.nonce_size = 12
            self._aead = AESGCM(key)
        self._prefix = os.urandom(self.nonce_size - 4)
        self._sealed = 0
        self._limit = min(limit, NONCE_LIMIT)

    def _next_nonce(self) -> bytes:
        if self._sealed >= self._limit:
            raise NonceExhausted(f"{self._sealed} messages sealed with this key")
        nonce = self._prefix + self._sealed.to_bytes(4, "little")
        self._sealed += 1
        return nonce

    def encrypt(self, plain: Buffer, session_id: int, nonce: bytes | None = None) -> bytes:
        """TRANSFORM_HEADER + ciphertext of one SMB2 message or compound chain.

        `nonce` is either the AEAD nonce (11 or 12 bytes, zero-padded into the
        Nonce field) or the whole 16-byte Nonce field, of which the first 11
        or 12 bytes are the AEAD nonce and all 16 are authenticated.
        """
        return b"".join(self.seal(plain, session_id, nonce))

    def seal(
        self, plain: Buffer, session_id: int, nonce: bytes | None = None
    ) -> tuple[bytes, memoryview]:
        """``encrypt`` as (TRANSFORM_HEADER, ciphertext): sent as two buffers,
        an 8 MiB ciphertext is not copied behind its header."""
        n = self.nonce_size
        if nonce is None:
            field = self._next_nonce() + bytes(16 - n)
        elif len(nonce) == n:
            field = bytes(nonce) + bytes(16 - n)
        elif len(nonce) == 16:
            field = bytes(nonce)
        else:
            raise ValueError(f"nonce must be {n} or 16 bytes, got {len(nonce)}")
        aad = _TRANSFORM.pack(
            TRANSFORM_PROTOCOL_ID,
            _ZERO_SIGNATURE,
            field,
            len(plain),
            0,
            _TRANSFORM_FLAGS_ENCRYPTED,
            session_id,
        )[_AAD_START:]
        out = bytearray(len(plain) + _TAG)  # ciphertext || tag
        self._aead.encrypt_into(field[:n], plain, aad, out)
        sealed = memoryview(out)
        return TRANSFORM_PROTOCOL_ID + bytes(sealed[-_TAG:]) + aad, sealed[:-_TAG]

    def decrypt(self, data: Buffer) -> tuple[int, bytes]:
        """(SessionId, plaintext) of a transform; CryptoError if it does not authenticate."""
        session_id = parse_transform_header(data)
        return session_id, self._open(data)

    def _open(self, data: Buffer) -> bytes:
        view = memoryview(data)
        nonce = bytes(view[20 : 20 + self.nonce_size])
        sealed = b"".join((view[TRANSFORM_HEADER_SIZE:], view[4:20]))  # ciphertext || tag
        try:
            return self._aead.decrypt(nonce, sealed, view[_AAD_START:TRANSFORM_HEADER_SIZE])
        except InvalidTag:
            raise CryptoError("transform does not authenticate (wrong key or tampered)") from None


def parse_transform_header(data: Buffer) -> int:
    """Check a TRANSFORM_HEADER's framing and return its SessionId."""
    if len(data) < TRANSFORM_HEADER_SIZE:
        raise CryptoError("truncated transform header")
    proto, _sig, _nonce, size, _reserved, flags, session_id = _TRANSFORM.unpack_from(data)
    if proto != TRANSFORM_PROTOCOL_ID:
        raise CryptoError("not a transform header")
    if flags != _TRANSFORM_FLAGS_ENCRYPTED:
        raise CryptoError(f"unknown transform Flags/EncryptionAlgorithm 0x{flags:04x}")
    if size != len(data) - TRANSFORM_HEADER_SIZE:
        raise CryptoError("OriginalMessageSize does not match the ciphertext")
    return int(session_id)


@functools.lru_cache(maxsize=1024)
def _transform(key: bytes, cipher: int) -> TransformCipher:
    return TransformCipher(key, cipher)


def encrypt_message(
    plain: Buffer, session_id: int, key: bytes, cipher: int, nonce: bytes | None = None
) -> bytes:
    """TRANSFORM_HEADER + ciphertext; the AAD is the header from its Nonce on.

    `key` is the server's Session.EncryptionKey; `cipher` a `Cipher` (3.0 and
    3.0.2 always use AES-128-CCM). See `TransformCipher.encrypt` for `nonce`.
    """
    return _transform(bytes(key), int(cipher)).encrypt(plain, session_id, nonce)


def seal_message(
    plain: Buffer, session_id: int, key: bytes, cipher: int
) -> tuple[bytes, memoryview]:
    """``encrypt_message`` as (TRANSFORM_HEADER, ciphertext), see `TransformCipher.seal`."""
    return _transform(bytes(key), int(cipher)).seal(plain, session_id)


def decrypt_message(data: Buffer, key: KeySource, cipher: int) -> tuple[int, bytes]:
    """(SessionId, plaintext) of a received transform.

    `key` is the decryption key, or a function from SessionId to that key
    (None when the session is unknown). Raises CryptoError for a malformed
    header, an unknown session, an unusable key or a failed authentication.
    """
    session_id = parse_transform_header(data)
    k = key(session_id) if callable(key) else key
    if not k:
        raise CryptoError(f"no decryption key for session 0x{session_id:x}")
    try:
        tc = _transform(bytes(k), int(cipher))
    except ValueError as e:
        raise CryptoError(str(e)) from None
    return session_id, tc._open(data)


# -- preauth integrity (MS-SMB2 3.3.5.4, 3.3.5.5) ------------------------------

PREAUTH_HASH_INITIAL = bytes(64)


def preauth_update(previous: bytes, message: Buffer) -> bytes:
    """SHA-512(previous || message): one step of the 3.1.1 preauth integrity hash.

    Start a connection from PREAUTH_HASH_INITIAL (64 zero bytes); a session
    starts from the connection's value after the NEGOTIATE response.
    """
    h = hashlib.sha512(previous)
    h.update(message)
    return h.digest()
