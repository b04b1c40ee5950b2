"""SMB2/3 signing, key derivation, encryption and preauth integrity (MS-SMB2 3.1.4).

Sans-IO: bytes in, bytes out. Cipher objects are cached per key because
every message of a signed or encrypted session goes through here.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import struct
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


class CryptoError(Exception):
    """A message failed authentication or is not a valid transform."""


def kdf(key: bytes, label: bytes, context: bytes, length_bits: int = 128) -> bytes:
    """SP800-108 counter mode with HMAC-SHA256, r=32.

    MS-SMB2 labels carry their own NUL; the 0x00 here is SP800-108's separator.
    """
    out = b""
    i = 1
    while len(out) * 8 < length_bits:
        msg = struct.pack(">I", i) + label + b"\x00" + context + struct.pack(">I", length_bits)
        out += hmac.new(key, msg, hashlib.sha256).digest()
        i += 1
    return out[: length_bits // 8]


@dataclass(frozen=True)
class SessionKeys:
    signing_key: bytes
    application_key: bytes
    encryption_key: bytes  # server -> client
    decryption_key: bytes  # client -> server


def derive_session_keys(
    session_key: bytes, dialect: int, preauth_hash: bytes | None, cipher: int | None
) -> SessionKeys:
    """Session keys per MS-SMB2 3.3.5.5.3 (labels include the trailing NUL via kdf)."""
    key = session_key[:16].ljust(16, b"\x00")
    if dialect < Dialect.SMB3_0:
        return SessionKeys(key, b"", b"", b"")
    enc_bits = 256 if cipher in (Cipher.AES_256_CCM, Cipher.AES_256_GCM) else 128
    if dialect == Dialect.SMB3_1_1:
        ctx = preauth_hash or bytes(64)
        return SessionKeys(
            signing_key=kdf(key, b"SMBSigningKey\x00", ctx),
            application_key=kdf(key, b"SMBAppKey\x00", ctx),
            encryption_key=kdf(session_key, b"SMBS2CCipherKey\x00", ctx, enc_bits)
            if enc_bits == 256
            else kdf(key, b"SMBS2CCipherKey\x00", ctx),
            decryption_key=kdf(session_key, b"SMBC2SCipherKey\x00", ctx, enc_bits)
            if enc_bits == 256
            else kdf(key, b"SMBC2SCipherKey\x00", ctx),
        )
    return SessionKeys(
        signing_key=kdf(key, b"SMB2AESCMAC\x00", b"SmbSign\x00"),
        application_key=kdf(key, b"SMB2APP\x00", b"SmbRpc\x00"),
        encryption_key=kdf(key, b"SMB2AESCCM\x00", b"ServerOut\x00"),
        decryption_key=kdf(key, b"SMB2AESCCM\x00", b"ServerIn \x00"),
    )


# -- signing -------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _gcm(key: bytes) -> AESGCM:
    return AESGCM(key)


@functools.lru_cache(maxsize=256)
def _ccm(key: bytes) -> AESCCM:
    return AESCCM(key, tag_length=16)


def _cmac(key: bytes, data: bytes) -> bytes:
    c = cmac.CMAC(algorithms.AES(key))
    c.update(data)
    return c.finalize()


def _gmac_nonce(msg: bytes) -> bytes:
    # MessageId, then a 32-bit word: bit 0 = response, bit 1 = CANCEL request.
    message_id = msg[24:32]
    flags = struct.unpack_from("<I", msg, 16)[0]
    command = struct.unpack_from("<H", msg, 12)[0]
    role = 1 if flags & HeaderFlags.SERVER_TO_REDIR else 0
    if command == Command.CANCEL:
        role |= 2
    return message_id + struct.pack("<I", role)


def compute_signature(msg: bytes, key: bytes, algorithm: int) -> bytes:
    """The 16-byte signature of a message whose signature field is already zeroed."""
    if algorithm == SigningAlgorithm.HMAC_SHA256:
        return hmac.new(key, msg, hashlib.sha256).digest()[:16]
    if algorithm == SigningAlgorithm.AES_CMAC:
        return _cmac(key, msg)
    if algorithm == SigningAlgorithm.AES_GMAC:
        return _gcm(key).encrypt(_gmac_nonce(msg), b"", msg)[-16:]
    raise ValueError(f"unknown signing algorithm {algorithm}")


def sign_message(msg: bytes, key: bytes, algorithm: int) -> bytes:
    """The message with the SIGNED flag set and its signature filled in."""
    buf = bytearray(msg)
    flags = struct.unpack_from("<I", buf, 16)[0] | HeaderFlags.SIGNED
    struct.pack_into("<I", buf, 16, flags)
    buf[48:64] = bytes(16)
    buf[48:64] = compute_signature(bytes(buf), key, algorithm)
    return bytes(buf)


def verify_message(msg: bytes, key: bytes, algorithm: int) -> bool:
    if len(msg) < HEADER_SIZE:
        return False
    buf = bytearray(msg)
    sig = bytes(buf[48:64])
    buf[48:64] = bytes(16)
    return hmac.compare_digest(sig, compute_signature(bytes(buf), key, algorithm))


# -- encryption -----------------------------------------------------------------

_TRANSFORM = struct.Struct("<4s16s16sIHHQ")


def _nonce_size(cipher: int) -> int:
    return 11 if cipher in (Cipher.AES_128_CCM, Cipher.AES_256_CCM) else 12


def _aead(cipher: int, key: bytes) -> AESCCM | AESGCM:
    if cipher in (Cipher.AES_128_CCM, Cipher.AES_256_CCM):
        return _ccm(key)
    if cipher in (Cipher.AES_128_GCM, Cipher.AES_256_GCM):
        return _gcm(key)
    raise CryptoError(f"unknown cipher {cipher}")


def encrypt_message(
    plain: bytes, session_id: int, key: bytes, cipher: int, nonce: bytes | None = None
) -> bytes:
    """TRANSFORM_HEADER + ciphertext; the AAD is the header from its Nonce on."""
    n = _nonce_size(cipher)
    nonce = nonce if nonce is not None else os.urandom(n)
    nonce16 = nonce[:n].ljust(16, b"\x00")
    aad = _TRANSFORM.pack(TRANSFORM_PROTOCOL_ID, bytes(16), nonce16, len(plain), 0, 1, session_id)
    sealed = _aead(cipher, key).encrypt(nonce[:n], plain, aad[20:])
    return aad[:4] + sealed[-16:] + aad[20:] + sealed[:-16]


def decrypt_message(data: bytes, key: bytes, cipher: int) -> tuple[int, bytes]:
    if len(data) < TRANSFORM_HEADER_SIZE:
        raise CryptoError("truncated transform header")
    proto, sig, nonce16, size, _r, flags, session_id = _TRANSFORM.unpack_from(data)
    if proto != TRANSFORM_PROTOCOL_ID or flags != 1:
        raise CryptoError("not an encrypted SMB2 message")
    body = data[TRANSFORM_HEADER_SIZE:]
    if size != len(body):
        raise CryptoError("OriginalMessageSize does not match")
    if not key:
        raise CryptoError("no decryption key")
    try:
        plain = _aead(cipher, key).decrypt(
            nonce16[: _nonce_size(cipher)], body + sig, data[20:TRANSFORM_HEADER_SIZE]
        )
    except InvalidTag:
        raise CryptoError("authentication failed") from None
    return session_id, plain


def preauth_update(previous: bytes, message: bytes) -> bytes:
    return hashlib.sha512(previous + message).digest()
