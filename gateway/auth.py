"""Server-side SESSION_SETUP authentication: NTLMv2, raw or inside SPNEGO, sans-IO.

`Authenticator.step()` takes the security buffer a client sent and returns the
buffer to answer with, plus whether the exchange is finished.  It accepts

* SPNEGO (RFC 4178 / MS-SPNG), as smbclient, Windows, smbprotocol and
  smbtorture send it: NegTokenInit carrying the NTLM NEGOTIATE (or only a mech
  list), then NegTokenResp carrying the NTLM AUTHENTICATE and usually a
  mechListMIC.  Answers are NegTokenResp: accept-incomplete with the NTLM
  CHALLENGE, then accept-completed with our own mechListMIC whenever the client
  sent one;
* raw NTLMSSP messages (some clients skip SPNEGO), answered with raw messages.

Only NTLMv2 is accepted (NTLMv1 and LM responses are refused, as Samba does with
its default ``ntlm auth = ntlmv2-only``).  The NTProofStr is checked against the
users table (which needs only each user's NT hash: the users file may keep
just that, gateway/users.py), the session base key is HMAC_MD5(NTOWFv2,
NTProofStr), the client's random session key is decrypted with RC4 when
NTLMSSP_NEGOTIATE_KEY_EXCH is negotiated, and the MIC of the AUTHENTICATE
message is verified whenever the client flags it (MsvAvFlags bit 0x2).  User
names match case-insensitively and
the client's domain is accepted whatever it is (the NTOWFv2 is computed with
the domain the client sent, and for robustness with its upper-cased form and
the empty domain, like Samba's password check).  Anonymous (NULL session)
logons are refused unless ``allow_guest=True``.

Why not pyspnego's acceptor?  pyspnego is used by the tests as an independent
*client*; its NTLM *acceptor* (spnego._ntlm.NTLMProxy, usage="accept") cannot
serve a file server:

* its only credential source is the file named by the process-wide environment
  variable NTLM_USER_FILE, read again at every AUTHENTICATE; there is no
  parameter to pass a per-server user table, so two nodes (or two users files)
  in one process would race on os.environ;
* it matches the client's domain exactly against the file's DOMAIN field, so a
  client sending any workgroup other than the one written in the file fails;
* it raises "Anonymous user authentication not implemented" for NULL sessions;
* it accepts NTLMv1/LM unless the process-wide LM_COMPAT_LEVEL says otherwise,
  and announces socket.gethostname()/"WORKSTATION" rather than the configured
  server name.

So the NTLM acceptor is implemented here with hashlib/hmac, RC4 from
`cryptography`, impacket's NT hash (MD4 is missing from OpenSSL 3's default
provider) and impacket's CHALLENGE/AV_PAIRS/VERSION structures for building the
CHALLENGE message.  The AUTHENTICATE message is parsed by hand with strict
bounds checks: impacket's parser silently truncates out-of-range fields, which
could make a hostile message look like an anonymous one.  SPNEGO is a small DER
codec here too: impacket.spnego drops mechListMIC when parsing, cannot emit a
NegTokenResp carrying one nor the NegTokenInit2 negHints, and the mechListMIC
must be computed over the exact bytes of the client's mechTypes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher
from impacket import ntlm

from .fs.caseindex import upcase as _upper
from .protocol.constants import NtStatusError, Status
from .users import Credential, nt_hash_of

try:
    from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4
except ImportError:  # cryptography < 43
    from cryptography.hazmat.primitives.ciphers.algorithms import (  # type: ignore[no-redef,attr-defined]
        ARC4,
    )

__all__ = [
    "AuthError",
    "Authenticator",
    "MalformedResponseError",
    "spnego_init_token",
]


class AuthError(NtStatusError):
    """The client could not be authenticated; answered with STATUS_LOGON_FAILURE."""

    def __init__(self, message: str) -> None:
        super().__init__(Status.LOGON_FAILURE, message)


class MalformedResponseError(AuthError):
    """An NTLMv2 response whose client challenge does not parse: answered with
    STATUS_INVALID_PARAMETER, as Windows and Samba do (Samba bug 14932)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.status = int(Status.INVALID_PARAMETER)


# ---------------------------------------------------------------------------
# DER (just what SPNEGO needs)

SPNEGO_OID = bytes.fromhex("2b0601050502")  # 1.3.6.1.5.5.2
NTLMSSP_OID = bytes.fromhex("2b06010401823702020a")  # 1.3.6.1.4.1.311.2.2.10
_NEG_HINT = b"not_defined_in_RFC4178@please_ignore"

ACCEPT_COMPLETED = 0
ACCEPT_INCOMPLETE = 1
REJECT = 2
REQUEST_MIC = 3


def _der(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        head = bytes((tag, n))
    else:
        length = n.to_bytes((n.bit_length() + 7) // 8, "big")
        head = bytes((tag, 0x80 | len(length))) + length
    return head + value


def _der_next(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """One TLV at data[pos:end]: (tag, value_start, value_end)."""
    if pos + 2 > end:
        raise AuthError("truncated DER element")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise AuthError("unsupported DER tag")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > end:
            raise AuthError("bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > end:
        raise AuthError("DER element overruns its container")
    return tag, pos, pos + length


def _der_children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    pos = start
    while pos < end:
        tag, vs, ve = _der_next(data, pos, end)
        out.append((tag, vs, ve))
        pos = ve
    return out


def _der_expect(data: bytes, start: int, end: int, tag: int) -> tuple[int, int]:
    """The single element filling data[start:end], which must carry `tag`."""
    t, vs, ve = _der_next(data, start, end)
    if t != tag or ve != end:
        raise AuthError(f"expected DER tag {tag:#x}, got {t:#x}")
    return vs, ve


@dataclass
class _NegTokenInit:
    mech_types: list[bytes]
    mech_types_der: bytes  # the client's MechTypeList exactly as sent (mechListMIC input)
    mech_token: bytes | None


@dataclass
class _NegTokenResp:
    neg_state: int | None
    response_token: bytes | None
    mech_list_mic: bytes | None


def _parse_neg_token_init(token: bytes) -> _NegTokenInit:
    end = len(token)
    if token[0] == 0x60:  # GSS-API InitialContextToken framing
        vs, ve = _der_expect(token, 0, end, 0x60)
        tag, os_, oe = _der_next(token, vs, ve)
        if tag != 0x06 or token[os_:oe] != SPNEGO_OID:
            raise AuthError("initial token is not SPNEGO")
        start, end = oe, ve
    else:
        start = 0
    vs, ve = _der_expect(token, start, end, 0xA0)
    ss, se = _der_expect(token, vs, ve, 0x30)
    mech_types: list[bytes] | None = None
    mech_types_der = b""
    mech_token = None
    for tag, cs, ce in _der_children(token, ss, se):
        if tag == 0xA0:
            ls, le = _der_expect(token, cs, ce, 0x30)
            mech_types_der = token[cs:ce]
            mech_types = []
            for otag, o_s, o_e in _der_children(token, ls, le):
                if otag != 0x06:
                    raise AuthError("mechTypes holds a non-OID")
                mech_types.append(token[o_s:o_e])
        elif tag == 0xA2:
            s, e = _der_expect(token, cs, ce, 0x04)
            mech_token = token[s:e]
        # reqFlags [1] and mechListMIC [3] of a NegTokenInit are ignored (RFC 4178 4.2.1)
    if mech_types is None:
        raise AuthError("NegTokenInit without mechTypes")
    return _NegTokenInit(mech_types, mech_types_der, mech_token)


def _parse_neg_token_resp(token: bytes) -> _NegTokenResp:
    if not token or token[0] != 0xA1:
        raise AuthError("expected a SPNEGO NegTokenResp")
    vs, ve = _der_expect(token, 0, len(token), 0xA1)
    ss, se = _der_expect(token, vs, ve, 0x30)
    out = _NegTokenResp(None, None, None)
    for tag, cs, ce in _der_children(token, ss, se):
        if tag == 0xA0:
            s, e = _der_expect(token, cs, ce, 0x0A)
            out.neg_state = int.from_bytes(token[s:e], "big") if e > s else 0
        elif tag == 0xA2:
            s, e = _der_expect(token, cs, ce, 0x04)
            out.response_token = token[s:e]
        elif tag == 0xA3:
            s, e = _der_expect(token, cs, ce, 0x04)
            out.mech_list_mic = token[s:e]
    return out


def _neg_token_resp(
    neg_state: int,
    supported_mech: bytes | None = None,
    response_token: bytes | None = None,
    mech_list_mic: bytes | None = None,
) -> bytes:
    body = _der(0xA0, _der(0x0A, bytes((neg_state,))))
    if supported_mech is not None:
        body += _der(0xA1, _der(0x06, supported_mech))
    if response_token is not None:
        body += _der(0xA2, _der(0x04, response_token))
    if mech_list_mic is not None:
        body += _der(0xA3, _der(0x04, mech_list_mic))
    return _der(0xA1, _der(0x30, body))


def _build_init_token() -> bytes:
    mech_types = _der(0xA0, _der(0x30, _der(0x06, NTLMSSP_OID)))
    hints = _der(0xA3, _der(0x30, _der(0xA0, _der(0x1B, _NEG_HINT))))
    neg_token_init2 = _der(0xA0, _der(0x30, mech_types + hints))
    return _der(0x60, _der(0x06, SPNEGO_OID) + neg_token_init2)


_INIT_TOKEN = _build_init_token()


def spnego_init_token() -> bytes:
    """The NegTokenInit2 for the NEGOTIATE response: mechTypes [NTLMSSP] plus the
    "not_defined_in_RFC4178@please_ignore" hint that Windows and Samba send."""
    return _INIT_TOKEN


# ---------------------------------------------------------------------------
# NTLM primitives (MS-NLMP 3.3.2, 3.4)

_SIGNATURE = b"NTLMSSP\x00"
_ZERO16 = bytes(16)
_NEGOTIATE_OEM = 0x00000002  # impacket names it NTLM_NEGOTIATE_OEM
_MSV_AV_EOL = 0
_MSV_AV_FLAGS = 6
_AV_FLAG_MIC = 0x2
_MIC_OFFSET = 72
_AUTH_FIELDS = struct.Struct("<12x HHI HHI HHI HHI HHI HHI I")  # 6 fields + flags
_FILETIME_EPOCH = 116444736000000000

_CLIENT_SIGN = b"session key to client-to-server signing key magic constant\x00"
_SERVER_SIGN = b"session key to server-to-client signing key magic constant\x00"
_CLIENT_SEAL = b"session key to client-to-server sealing key magic constant\x00"
_SERVER_SEAL = b"session key to server-to-client sealing key magic constant\x00"

# Flags echoed to the client when it asks for them.
_ECHOED_FLAGS = (
    ntlm.NTLMSSP_NEGOTIATE_SIGN
    | ntlm.NTLMSSP_NEGOTIATE_SEAL
    | ntlm.NTLMSSP_NEGOTIATE_ALWAYS_SIGN
    | ntlm.NTLMSSP_NEGOTIATE_KEY_EXCH
    | ntlm.NTLMSSP_NEGOTIATE_128
    | ntlm.NTLMSSP_NEGOTIATE_56
    | ntlm.NTLMSSP_NEGOTIATE_VERSION
    | ntlm.NTLMSSP_NEGOTIATE_EXTENDED_SESSIONSECURITY
)


def _hmac_md5(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.md5).digest()


def _rc4(key: bytes, data: bytes) -> bytes:
    enc = Cipher(ARC4(key), mode=None).encryptor()
    return enc.update(data) + enc.finalize()


def _ntowfv2(nt_hash: bytes, user: str, domain: str) -> bytes:
    return _hmac_md5(nt_hash, (_upper(user) + domain).encode("utf-16-le"))


def _av_pairs(data: bytes) -> dict[int, bytes]:
    """Strictly parse an AV_PAIR list (MS-NLMP 2.2.2.1); it must end with MsvAvEOL."""
    out: dict[int, bytes] = {}
    pos = 0
    while True:
        if pos + 4 > len(data):
            raise MalformedResponseError("AV_PAIR list without MsvAvEOL")
        av_id, length = struct.unpack_from("<HH", data, pos)
        pos += 4
        if av_id == _MSV_AV_EOL:
            return out
        if pos + length > len(data):
            raise MalformedResponseError("AV_PAIR overruns the NTLMv2 response")
        out.setdefault(av_id, data[pos : pos + length])
        pos += length


def _mac(sign_key: bytes, seal_key: bytes, key_exch: bool, seq: int, message: bytes) -> bytes:
    """NTLMSSP_MESSAGE_SIGNATURE with extended session security (MS-NLMP 3.4.4.2),
    computed as the first message of a fresh RC4 sealing handle."""
    checksum = _hmac_md5(sign_key, struct.pack("<I", seq) + message)[:8]
    if key_exch:
        checksum = _rc4(seal_key, checksum)
    return struct.pack("<I", 1) + checksum + struct.pack("<I", seq)


class _NtlmAcceptor:
    """One NTLM exchange as the server: NEGOTIATE in, CHALLENGE out, AUTHENTICATE in."""

    def __init__(
        self,
        users: Mapping[str, tuple[str, Credential]],
        allow_guest: bool,
        server_name: str,
        domain_name: str,
    ) -> None:
        self._users = users
        self._allow_guest = allow_guest
        self._server_name = server_name
        self._domain_name = domain_name
        self._negotiate = b""
        self._challenge = b""
        self._server_challenge = b""
        self._challenge_flags = 0
        self.flags = 0
        self.username = ""
        self.domain = ""
        self.workstation = ""
        self.session_key = b""
        self.is_anonymous = False
        self.mic_present = False

    # -- NEGOTIATE -> CHALLENGE -------------------------------------------------

    def negotiate(self, token: bytes) -> bytes:
        if len(token) < 16 or token[:8] != _SIGNATURE:
            raise AuthError("not an NTLMSSP message")
        msg_type, client_flags = struct.unpack_from("<II", token, 8)
        if msg_type != ntlm.NTLMSSP_AUTH_NEGOTIATE:
            raise AuthError(f"expected NTLM NEGOTIATE, got message type {msg_type}")
        flags = (
            ntlm.NTLMSSP_NEGOTIATE_NTLM
            | ntlm.NTLMSSP_NEGOTIATE_TARGET_INFO
            | ntlm.NTLMSSP_REQUEST_TARGET
            | ntlm.NTLMSSP_TARGET_TYPE_SERVER
            | (client_flags & _ECHOED_FLAGS)
        )
        if client_flags & ntlm.NTLMSSP_NEGOTIATE_UNICODE:
            flags |= ntlm.NTLMSSP_NEGOTIATE_UNICODE
        elif client_flags & _NEGOTIATE_OEM:
            flags |= _NEGOTIATE_OEM
        else:
            raise AuthError("client offers neither UNICODE nor OEM strings")
        server_challenge = os.urandom(8)

        nb_name = _upper(self._server_name)
        av = ntlm.AV_PAIRS()
        av[ntlm.NTLMSSP_AV_HOSTNAME] = nb_name.encode("utf-16-le")
        av[ntlm.NTLMSSP_AV_DOMAINNAME] = _upper(self._domain_name).encode("utf-16-le")
        av[ntlm.NTLMSSP_AV_DNS_HOSTNAME] = self._server_name.lower().encode("utf-16-le")
        filetime = _FILETIME_EPOCH + time.time_ns() // 100
        av[ntlm.NTLMSSP_AV_TIME] = struct.pack("<Q", filetime)
        target_info = av.getData()

        target_name = self._encode(nb_name, flags)
        version = b""
        if flags & ntlm.NTLMSSP_NEGOTIATE_VERSION:
            v = ntlm.VERSION()
            v["ProductMajorVersion"] = 6
            v["ProductMinorVersion"] = 1
            v["ProductBuild"] = 7601
            v["NTLMRevisionCurrent"] = 15
            version = v.getData()
        challenge = ntlm.NTLMAuthChallenge()
        challenge["flags"] = flags
        challenge["challenge"] = server_challenge
        challenge["Version"] = version
        challenge["domain_name"] = target_name
        challenge["domain_offset"] = 48 + len(version)
        challenge["TargetInfoFields"] = target_info
        challenge["TargetInfoFields_offset"] = 48 + len(version) + len(target_name)
        out: bytes = challenge.getData()

        self._negotiate = token
        self._challenge = out
        self._server_challenge = server_challenge
        self._challenge_flags = flags
        return out

    @staticmethod
    def _encode(s: str, flags: int) -> bytes:
        if flags & ntlm.NTLMSSP_NEGOTIATE_UNICODE:
            return s.encode("utf-16-le")
        return s.encode("cp850", errors="replace")

    @staticmethod
    def _decode(b: bytes, unicode: bool) -> str:
        try:
            return b.decode("utf-16-le") if unicode else b.decode("cp850")
        except UnicodeDecodeError:
            raise AuthError("undecodable name in AUTHENTICATE") from None

    # -- AUTHENTICATE -----------------------------------------------------------

    def authenticate(self, token: bytes) -> None:
        if not self._challenge:
            raise AuthError("AUTHENTICATE before NEGOTIATE")
        if len(token) < _AUTH_FIELDS.size or token[:8] != _SIGNATURE:
            raise AuthError("not an NTLMSSP AUTHENTICATE message")
        (msg_type,) = struct.unpack_from("<I", token, 8)
        if msg_type != ntlm.NTLMSSP_AUTH_CHALLENGE_RESPONSE:
            raise AuthError(f"expected NTLM AUTHENTICATE, got message type {msg_type}")
        values = _AUTH_FIELDS.unpack_from(token)
        fields: list[bytes] = []
        min_offset = len(token)
        for i in range(6):
            length, _max, offset = values[3 * i : 3 * i + 3]
            if length:
                if offset < _AUTH_FIELDS.size or offset + length > len(token):
                    raise AuthError("AUTHENTICATE field outside the message")
                min_offset = min(min_offset, offset)
            fields.append(token[offset : offset + length] if length else b"")
        lm, nt, domain_b, user_b, ws_b, enc_key = fields
        auth_flags = values[18]
        flags = auth_flags & self._challenge_flags
        if not flags & (ntlm.NTLMSSP_NEGOTIATE_UNICODE | _NEGOTIATE_OEM):
            flags |= self._challenge_flags & (ntlm.NTLMSSP_NEGOTIATE_UNICODE | _NEGOTIATE_OEM)
        unicode = bool(flags & ntlm.NTLMSSP_NEGOTIATE_UNICODE)
        user = self._decode(user_b, unicode)
        domain = self._decode(domain_b, unicode)
        self.workstation = self._decode(ws_b, unicode)

        if not user and not nt and lm in (b"", b"\x00"):
            if not self._allow_guest:
                raise AuthError("anonymous logon refused")
            self.is_anonymous = True
            key_exchange_key = _ZERO16
            av: dict[int, bytes] = {}
        else:
            key_exchange_key, av = self._check_ntlmv2(user, domain, lm, nt)

        if flags & ntlm.NTLMSSP_NEGOTIATE_KEY_EXCH and len(enc_key) == 16:
            session_key = _rc4(key_exchange_key, enc_key)
        else:
            session_key = key_exchange_key

        av_flags = int.from_bytes(av.get(_MSV_AV_FLAGS, b"")[:4].ljust(4, b"\0"), "little")
        if av_flags & _AV_FLAG_MIC:
            if min_offset < _MIC_OFFSET + 16:
                raise AuthError("MIC flagged but the message has no room for it")
            mic = token[_MIC_OFFSET : _MIC_OFFSET + 16]
            zeroed = token[:_MIC_OFFSET] + _ZERO16 + token[_MIC_OFFSET + 16 :]
            expected = _hmac_md5(session_key, self._negotiate + self._challenge + zeroed)
            if not hmac.compare_digest(mic, expected):
                raise AuthError("bad MIC in AUTHENTICATE")
            self.mic_present = True

        self.flags = flags
        self.domain = domain
        self.session_key = session_key

    def _check_ntlmv2(
        self, user: str, domain: str, lm: bytes, nt: bytes
    ) -> tuple[bytes, dict[int, bytes]]:
        if not user:
            raise AuthError("empty user name with a non-anonymous response")
        entry = self._users.get(user.lower())
        if entry is None and "@" in user and not domain:
            entry = self._users.get(user.rpartition("@")[0].lower())
        if entry is None:
            raise AuthError(f"unknown user {user!r}")
        if len(nt) <= 24:
            raise AuthError("NTLMv1/LM response refused (NTLMv2 only)")
        if len(nt) < 16 + 28 or nt[16] != 1:
            raise AuthError("malformed NTLMv2 response")
        nt_proof, blob = nt[:16], nt[16:]
        av = _av_pairs(blob[28:])
        canonical, credential = entry
        # Everything below (NTOWFv2, the session base key, and so the signing
        # and sealing keys) derives from the NT hash alone.
        nt_hash = nt_hash_of(credential)
        for dom in dict.fromkeys((domain, _upper(domain), "")):
            response_key = _ntowfv2(nt_hash, user, dom)
            if hmac.compare_digest(
                _hmac_md5(response_key, self._server_challenge + blob), nt_proof
            ):
                self.username = canonical
                return _hmac_md5(response_key, nt_proof), av
        raise AuthError(f"wrong password for {user!r}")

    # -- SPNEGO mechListMIC (MS-SPNG 3.1.5.1, MS-NLMP 3.4.4.2) ---------------------

    def _keys(self, client: bool) -> tuple[bytes, bytes]:
        key = self.session_key
        if self.flags & ntlm.NTLMSSP_NEGOTIATE_128:
            seal_base = key
        elif self.flags & ntlm.NTLMSSP_NEGOTIATE_56:
            seal_base = key[:7]
        else:
            seal_base = key[:5]
        if client:
            return hashlib.md5(key + _CLIENT_SIGN).digest(), hashlib.md5(
                seal_base + _CLIENT_SEAL
            ).digest()
        return hashlib.md5(key + _SERVER_SIGN).digest(), hashlib.md5(
            seal_base + _SERVER_SEAL
        ).digest()

    def _require_ess(self) -> None:
        if not self.flags & ntlm.NTLMSSP_NEGOTIATE_EXTENDED_SESSIONSECURITY:
            raise AuthError("mechListMIC without NTLM extended session security")

    def verify_mech_list_mic(self, mech_types_der: bytes, mic: bytes) -> None:
        self._require_ess()
        sign, seal = self._keys(client=True)
        key_exch = bool(self.flags & ntlm.NTLMSSP_NEGOTIATE_KEY_EXCH)
        expected = _mac(sign, seal, key_exch, 0, mech_types_der)
        if not hmac.compare_digest(mic, expected):
            raise AuthError("bad SPNEGO mechListMIC")

    def mech_list_mic(self, mech_types_der: bytes) -> bytes:
        self._require_ess()
        sign, seal = self._keys(client=False)
        key_exch = bool(self.flags & ntlm.NTLMSSP_NEGOTIATE_KEY_EXCH)
        return _mac(sign, seal, key_exch, 0, mech_types_der)


# ---------------------------------------------------------------------------
# the SESSION_SETUP driver

_START, _WAIT_NEGOTIATE, _CHALLENGE_SENT, _DONE, _FAILED = range(5)


class Authenticator:
    """One SESSION_SETUP exchange; create a new one for every logon attempt.

    `users` maps user name -> NT hash or clear-text password (as
    `gateway.config.load_users` returns).
    After `step()` returned done=True: `username` (the users-file spelling),
    `domain` (as the client sent it), `workstation`, `session_key` (16 bytes,
    the NTLM exported session key: the SMB signing/encryption key source),
    `is_guest` and `is_anonymous`.
    """

    def __init__(
        self,
        users: Mapping[str, Credential],
        allow_guest: bool = False,
        *,
        server_name: str = "SMBGW",
        domain_name: str = "WORKGROUP",
    ) -> None:
        table = {name.lower(): (name, cred) for name, cred in users.items()}
        self._ntlm = _NtlmAcceptor(table, allow_guest, server_name, domain_name)
        self._state = _START
        self._spnego = False
        self._mech_types_der = b""
        self.username = ""
        self.domain = ""
        self.workstation = ""
        self.session_key = b""
        self.is_guest = False
        self.is_anonymous = False

    @property
    def complete(self) -> bool:
        return self._state == _DONE

    @property
    def uses_spnego(self) -> bool:
        return self._spnego

    def step(self, token: bytes) -> tuple[bytes, bool]:
        """Feed the client's security buffer; returns (buffer to send back, done).

        Raises AuthError (STATUS_LOGON_FAILURE) on bad credentials or a
        malformed or out-of-order token; the exchange cannot continue after that.
        """
        if self._state == _DONE:
            raise AuthError("authentication already complete")
        if self._state == _FAILED:
            raise AuthError("authentication already failed")
        try:
            return self._step(bytes(token))
        except AuthError:
            self._state = _FAILED
            raise
        except (ValueError, IndexError, struct.error) as e:
            self._state = _FAILED
            raise AuthError(f"malformed security token: {e}") from None

    def _step(self, token: bytes) -> tuple[bytes, bool]:
        if self._state == _START:
            if not token:
                # An empty buffer asks for the server's mechanism list again.
                return spnego_init_token(), False
            if token.startswith(_SIGNATURE):
                out = self._ntlm.negotiate(token)
                self._state = _CHALLENGE_SENT
                return out, False
            if token[0] not in (0x60, 0xA0):
                raise AuthError("unrecognised security token")
            self._spnego = True
            init = _parse_neg_token_init(token)
            if NTLMSSP_OID not in init.mech_types:
                raise AuthError("client offers no NTLMSSP mechanism")
            self._mech_types_der = init.mech_types_der
            if init.mech_token is not None and init.mech_types[0] == NTLMSSP_OID:
                challenge = self._ntlm.negotiate(init.mech_token)
                self._state = _CHALLENGE_SENT
                return _neg_token_resp(ACCEPT_INCOMPLETE, NTLMSSP_OID, challenge), False
            # No optimistic token, or one for a mechanism we do not offer: pick
            # NTLMSSP and wait for its NEGOTIATE (RFC 4178 3.2).
            self._state = _WAIT_NEGOTIATE
            return _neg_token_resp(ACCEPT_INCOMPLETE, NTLMSSP_OID), False

        if self._state == _WAIT_NEGOTIATE:
            resp = _parse_neg_token_resp(token)
            if resp.neg_state == REJECT or resp.response_token is None:
                raise AuthError("expected the NTLM NEGOTIATE in a NegTokenResp")
            challenge = self._ntlm.negotiate(resp.response_token)
            self._state = _CHALLENGE_SENT
            return _neg_token_resp(ACCEPT_INCOMPLETE, None, challenge), False

        assert self._state == _CHALLENGE_SENT
        if not self._spnego:
            self._ntlm.authenticate(token)
            self._finish()
            return b"", True
        resp = _parse_neg_token_resp(token)
        if resp.neg_state == REJECT or resp.response_token is None:
            raise AuthError("expected the NTLM AUTHENTICATE in a NegTokenResp")
        mic = resp.mech_list_mic
        if mic is not None and mic == resp.response_token:
            mic = None  # old Windows bug: mechListMIC duplicating the responseToken
        self._ntlm.authenticate(resp.response_token)
        out_mic = None
        if mic is not None:
            self._ntlm.verify_mech_list_mic(self._mech_types_der, mic)
            out_mic = self._ntlm.mech_list_mic(self._mech_types_der)
        elif self._ntlm.mic_present:
            # A client whose NTLM message carries a MIC always protects the mech
            # list too; its absence means the SPNEGO layer was tampered with.
            raise AuthError("mechListMIC missing although the NTLM MIC is present")
        self._finish()
        return _neg_token_resp(ACCEPT_COMPLETED, None, None, out_mic), True

    def _finish(self) -> None:
        n = self._ntlm
        self.username = n.username
        self.domain = n.domain
        self.workstation = n.workstation
        self.session_key = n.session_key
        self.is_anonymous = n.is_anonymous
        self.is_guest = n.is_anonymous
        self._state = _DONE
