"""gateway.protocol.crypto against Microsoft's test vectors and two independent implementations.

Known answers come from Microsoft's Open Specifications blog posts (the same
vectors Isilon's pike test suite carries in pike/test/test_smb3_encryption_vector.py):

- "SMB 3.1.1 Pre-authentication integrity in Windows 10" (2015-08-11):
  a NEGOTIATE/SESSION_SETUP exchange, the running SHA-512, the signing key;
- "Encryption in SMB 3.0: A protocol perspective" (2012-10-05): keys and an
  AES-128-CCM transform each way;
- "SMB 3.1.1 Encryption in Windows 10" (2015-09-09): keys and an
  AES-128-GCM transform each way.

Those vectors are captured from a client, so the client's EncryptionKey is
this server's decryption key and the other way round.

Cross-checks run the other side's real code paths with the network stubbed:
smbprotocol's Session.connect key derivation, Connection._generate_signature /
verify_signature, Connection._encrypt / _decrypt; impacket's KDF_CounterMode,
SMB3.signSMB, and SMB3.sendSMB / recvSMB encryption.
"""

from __future__ import annotations

import hashlib
import os
import struct
import types
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import smbprotocol.session as smbp_session
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from impacket import crypto as impacket_crypto
from impacket.smb3 import SMB3
from impacket.smb3structs import SMB2_SESSION_FLAG_ENCRYPT_DATA, SMB2Packet
from smbprotocol.connection import Connection, SMB2HeaderResponse, SMB2TransformHeader

from gateway.protocol import crypto
from gateway.protocol.constants import (
    TRANSFORM_HEADER_SIZE,
    TRANSFORM_PROTOCOL_ID,
    Cipher,
    Command,
    Dialect,
    HeaderFlags,
    SigningAlgorithm,
)

h = bytes.fromhex

# -- Microsoft test vectors ----------------------------------------------------

PREAUTH_MESSAGES_AND_HASHES = [
    (  # NEGOTIATE request
        "FE534D4240000100000000000000800000000000000000000100000000000000FFFE000000000000"
        "00000000000000000000000000000000000000000000000024000500000000003F000000ECD86F32"
        "6276024F9F7752B89BB33F3A70000000020000000202100200030203110300000100260000000000"
        "010020000100FA49E6578F1F3A9F4CD3E9CC14A67AA884B3D05844E0E5A118225C15887F32FF0000"
        "0200060000000000020002000100",
        "DD94EFC5321BB618A2E208BA8920D2F422992526947A409B5037DE1E0FE8C7362B8C47122594CDE0"
        "CE26AA9DFC8BCDBDE0621957672623351A7540F1E54A0426",
    ),
    (  # NEGOTIATE response
        "FE534D4240000100000000000000010001000000000000000100000000000000FFFE000000000000"
        "000000000000000000000000000000000000000000000000410001001103020039CBCAF329714942"
        "BDCE5D60F09AB3FB2F000000000080000000800000008000D8DAE5ADCBAED00109094AB095AED001"
        "80004001C00100006082013C06062B0601050502A08201303082012CA01A3018060A2B0601040182"
        "3702021E060A2B06010401823702020AA282010C048201084E45474F455854530100000000000000"
        "60000000700000007C7CC0FD06D6362D02DDE1CF343BFE292900F49750B4AA97934D9C4296B26E51"
        "FD370471B235E15A50DAE15BD5489C87000000000000000060000000010000000000000000000000"
        "5C33530DEAF90D4DB2EC4AE3786EC3084E45474F4558545303000000010000004000000098000000"
        "7C7CC0FD06D6362D02DDE1CF343BFE295C33530DEAF90D4DB2EC4AE3786EC3084000000058000000"
        "3056A05430523027802530233121301F06035504031318546F6B656E205369676E696E6720507562"
        "6C6963204B65793027802530233121301F06035504031318546F6B656E205369676E696E67205075"
        "626C6963204B6579010026000000000001002000010060A3C3B95C3C7CCD51EC536648D9B3AC74C4"
        "83CA5B65385A251117BEB30712E50000020004000000000001000200",
        "324BFA92A4F3A190E466EBEA08D9C110DC88BFED758D9846ECC6F541CC1D02AE3C94A79F36011E99"
        "7E13F841B91B50957AD07B19C8E2539C0B23FDAE09D2C513",
    ),
    (  # SESSION_SETUP request 1 (NTLM NEGOTIATE)
        "FE534D4240000100000000000100800000000000000000000200000000000000FFFE000000000000"
        "00000000000000000000000000000000000000000000000019000001010000000000000058004A00"
        "0000000000000000604806062B0601050502A03E303CA00E300C060A2B06010401823702020AA22A"
        "04284E544C4D5353500001000000978208E200000000000000000000000000000000060380250000"
        "000F",
        "AC0B0F2B9986257700365E416D142A6EDC96DF03594A19E52A15F6BD0D041CD5D432F8ED42C55E33"
        "197A50C9EC00F1462B50C592211B1471A04B56088FDFD5F9",
    ),
    (  # SESSION_SETUP response 1 (MORE_PROCESSING_REQUIRED, NTLM CHALLENGE)
        "FE534D4240000100160000C00100010001000000000000000200000000000000FFFE000000000000"
        "190000000010000000000000000000000000000000000000090000004800B300A181B03081ADA003"
        "0A0101A10C060A2B06010401823702020AA281970481944E544C4D53535000020000000C000C0038"
        "00000015828AE20D1D8BA31179D008000000000000000050005000440000000A0092270000000F53"
        "005500540033003100310002000C0053005500540033003100310001000C00530055005400330031"
        "00310004000C0053005500540033003100310003000C0053005500540033003100310007000800A1"
        "A1F5ADCBAED00100000000",
        "2729E3440DFDDD839E37193F6E8F20C20CEFB3469E453A70CD980EEC06B8835740A7376008563336"
        "4C8989895ECE81BF102DEEB14D4B7D48AFA76901A7A38387",
    ),
    (  # SESSION_SETUP request 2 (NTLM AUTHENTICATE)
        "FE534D4240000100000000000100800000000000000000000300000000000000FFFE000000000000"
        "1900000000100000000000000000000000000000000000001900000101000000000000005800CF01"
        "0000000000000000A18201CB308201C7A0030A0101A28201AA048201A64E544C4D53535000030000"
        "001800180090000000EE00EE00A80000000C000C00580000001A001A0064000000120012007E0000"
        "001000100096010000158288E2060380250000000FECAC77A5F385A8BF9C38C706EEEDDCD3530055"
        "005400330031003100610064006D0069006E006900730074007200610074006F0072004400520049"
        "0056004500520033003100310000000000000000000000000000000000000000000000000063078E"
        "B639FE03E20A231C3AE3BF23080101000000000000A1A1F5ADCBAED001BC4AD05F223CC90F000000"
        "0002000C0053005500540033003100310001000C0053005500540033003100310004000C00530055"
        "00540033003100310003000C0053005500540033003100310007000800A1A1F5ADCBAED001060004"
        "00020000000800300030000000000000000000000000300000B61FEFCAA857EA57BF1EDCEBF8974B"
        "8E0EBA5A6DFD9D07A31D11B548F8C9D0CC0A00100000000000000000000000000000000000090016"
        "0063006900660073002F005300550054003300310031000000000000000000000000003B9BDFF38F"
        "5EE8F9663F11A0F4C03A78A31204100100000063775A9A5FD97F0600000000",
        "0DD13628CC3ED218EF9DF9772D436D0887AB9814BFAE63A80AA845F36909DB7928622DDDAD522D97"
        "51640A459762C5A9D6BB084CBB3CE6BDADEF5D5BCE3C6C01",
    ),
]
PREAUTH_SESSION_KEY = h("270E1BA896585EEB7AF3472D3B4C75A7")
PREAUTH_SIGNING_KEY = h("73FE7A9A77BEF0BDE49C650D8CCB5F76")

# SMB 3.0, AES-128-CCM.
SMB300_SESSION_KEY = h("B4546771B515F766A86735532DD6C4F0")
SMB300_SESSION_ID = 0x8E40014000011
SMB300_C2S_KEY = h("261B72350558F2E9DCF613070383EDBF")  # client EncryptionKey
SMB300_S2C_KEY = h("8FE2B57EC34D2DB5B1A9727F526BBDB5")  # client DecryptionKey
SMB300_C2S_PLAIN = h(  # WRITE request, "Smb3 encryption testing"
    "FE534D4240000100000000000900400008000000000000000400000000000000"
    "FFFE0000010000001100001400E4080000000000000000000000000000000000"
    "3100700017000000000000000000000015010000390000020100000039020000"
    "00000000000000007000000000000000536D623320656E6372797074696F6E20"
    "74657374696E67"
)
SMB300_C2S_TRANSFORM = h(
    "FD534D4281A286535415445DAE393921E44FA42E66E69A111892584FB5ED524A"
    "744DA3EE87000000000001001100001400E4080025C8FEE16605A437832D1CD5"
    "2DA9F4645333482A175FE5384563F45FCDAFAEF38BC62BA4D5C62897996625A4"
    "4C29BE5658DE2E6117585779E7B59FFD971278D08580D7FA899E410E910EABF5"
    "AA1DB43050B33B49182637759AC15D84BFCDF5B6B238993C0F4CF4D6012023F6"
    "C627297075D84B7803912D0A9639634453595EF3E33FFE4E7AC2AB"
)
SMB300_S2C_TRANSFORM = h(
    "FD534D42A6015530A18F6D9AFFE22AFAE8E66484860000000000000011000014"
    "00E4080050000000000001001100001400E40800DBF46435C5F14169293CE079"
    "E344479BF670227E49873F458672C3098DAC467DD5809F369D67409166515787"
    "1483E01F7BECD02064EAC3E235F913668BBC2F097980D4B378F1993EFF6E60D1"
    "77309E5B"
)
SMB300_S2C_PLAIN = h(  # WRITE response
    "FE534D4240000100000000000900210009000000000000000400000000000000"
    "FFFE0000010000001100001400E4080000000000000000000000000000000000"
    "11000000170000000000000000000000"
)

# SMB 3.1.1, AES-128-GCM.
SMB311_SESSION_KEY = h("419FDDF34C1E001909D362AE7FB6AF79")
SMB311_PREAUTH_HASH = h(
    "B23F3CBFD69487D9832B79B1594A367CDD950909B774C3A4C412B4FCEA9EDDDBA7DB256BA2EA30E9"
    "77F11F9B113247578E0E915C6D2A513B8F2FCA5707DC8770"
)
SMB311_SESSION_ID = 0x100000000025
SMB311_C2S_KEY = h("A2F5E80E5D59103034F32E52F698E5EC")
SMB311_S2C_KEY = h("748C50868C90F302962A5C35F5F9A8BF")
SMB311_C2S_NONCE = h("C7D6822D269CAF48904C664C")
SMB311_C2S_PLAIN = h(
    "FE534D4240000100000000000900010008000000000000000500000000000000FFFE000001000000"
    "25000000001000000000000000000000000000000000000031007000170000000000000000000000"
    "0600000004000000010000000400000000000000000000007000000000000000536D623320656E63"
    "72797074696F6E2074657374696E67"
)
SMB311_C2S_TRANSFORM = h(
    "FD534D42BD73D97D2BC9001BCAFAC0FDFF5FEEBCC7D6822D269CAF48904C664C0000000087000000"
    "0000010025000000001000006ECDD2A7AFC7B47763057A041B8FD4DAFFE990B70C9E09D36C084E02"
    "D14EF247F8BDE38ACF6256F8B1D3B56F77FBDEB312FEA5E92CBCC1ED8FB2EBBFAA75E49A4A394BB4"
    "4576545567C24D4C014D47C9FBDFDAFD2C4F9B72F8D256452620A299F48E29E53D6B61D1C13A19E9"
    "1AF013F00D17E3ABC2FC3D36C8C1B6B93973253852DBD442E46EE8"
)
SMB311_S2C_TRANSFORM = h(
    "FD534D42ACBE1CB7ED343ADF1725EF144D90D4B0E06831DD2E8EB7B4000000000000000050000000"
    "00000100250000000010000026BBBF949983A6C1C796559D0F2C510CB651D1F7B6AC8DED32A2A0B8"
    "F2D793A815C6F6B848D69767A215841A42D400AE6DDB5F0B44173A014973321FDD7950DA6179159B"
    "82E03C9E18A050FF0EA1C967"
)
SMB311_S2C_PLAIN = h(
    "FE534D4240000100000000000900010001000000000000000500000000000000FFFE000001000000"
    "25000000001000000000000000000000000000000000000011000000170000000000000000000000"
)

ALL_CIPHERS = list(Cipher)
_HEADER = struct.Struct("<4sHHIHHIIQIIQ16s")


def smb2_message(
    command: int = Command.WRITE,
    flags: int = 0,
    message_id: int = 9,
    session_id: int = 0x4000000000021,
    body: bytes = b"\x31\x00" + bytes(46) + b"hello, signing",
    status: int = 0,
) -> bytes:
    """A sync SMB2 header (Signature zero) followed by `body`."""
    # ProtocolId, StructureSize, CreditCharge, Status, Command, Credits, Flags,
    # NextCommand, MessageId, Reserved, TreeId, SessionId, Signature.
    fields = (b"\xfeSMB", 64, 1, status, command, 1, flags, 0, message_id, 0xFEFF, 7, session_id)
    return _HEADER.pack(*fields, bytes(16)) + body


def key_of(n: int) -> bytes:
    return os.urandom(n)


def cipher_key(cipher: int) -> bytes:
    return key_of(32 if cipher in (Cipher.AES_256_CCM, Cipher.AES_256_GCM) else 16)


# -- known answers ------------------------------------------------------------


def test_preauth_integrity_hash_and_signing_key_match_windows() -> None:
    value = crypto.PREAUTH_HASH_INITIAL
    assert value == bytes(64)
    for message, expected in PREAUTH_MESSAGES_AND_HASHES:
        value = crypto.preauth_update(value, h(message))
        assert value == h(expected)
    keys = crypto.derive_session_keys(PREAUTH_SESSION_KEY, Dialect.SMB3_1_1, value, None)
    assert keys.signing_key == PREAUTH_SIGNING_KEY


def test_smb300_keys_match_windows() -> None:
    keys = crypto.derive_session_keys(SMB300_SESSION_KEY, Dialect.SMB3_0, None, None)
    assert keys.decryption_key == SMB300_C2S_KEY
    assert keys.encryption_key == SMB300_S2C_KEY
    # 3.0.2 derives the same way.
    assert crypto.derive_session_keys(SMB300_SESSION_KEY, Dialect.SMB3_0_2, None, None) == keys


def test_smb311_keys_match_windows() -> None:
    keys = crypto.derive_session_keys(
        SMB311_SESSION_KEY, Dialect.SMB3_1_1, SMB311_PREAUTH_HASH, Cipher.AES_128_GCM
    )
    assert keys.decryption_key == SMB311_C2S_KEY
    assert keys.encryption_key == SMB311_S2C_KEY


@pytest.mark.parametrize(
    ("key", "cipher", "plain", "transform", "session_id"),
    [
        (
            SMB300_C2S_KEY,
            Cipher.AES_128_CCM,
            SMB300_C2S_PLAIN,
            SMB300_C2S_TRANSFORM,
            SMB300_SESSION_ID,
        ),
        (
            SMB300_S2C_KEY,
            Cipher.AES_128_CCM,
            SMB300_S2C_PLAIN,
            SMB300_S2C_TRANSFORM,
            SMB300_SESSION_ID,
        ),
        (
            SMB311_C2S_KEY,
            Cipher.AES_128_GCM,
            SMB311_C2S_PLAIN,
            SMB311_C2S_TRANSFORM,
            SMB311_SESSION_ID,
        ),
        (
            SMB311_S2C_KEY,
            Cipher.AES_128_GCM,
            SMB311_S2C_PLAIN,
            SMB311_S2C_TRANSFORM,
            SMB311_SESSION_ID,
        ),
    ],
    ids=["3.0-c2s", "3.0-s2c", "3.1.1-c2s", "3.1.1-s2c"],
)
def test_transforms_match_windows(
    key: bytes, cipher: Cipher, plain: bytes, transform: bytes, session_id: int
) -> None:
    assert crypto.decrypt_message(transform, key, cipher) == (session_id, plain)
    # Windows fills the whole 16-byte Nonce field in the 3.0 vectors; all of
    # it is authenticated, so passing the field reproduces the bytes exactly.
    assert crypto.encrypt_message(plain, session_id, key, cipher, transform[20:36]) == transform


def test_gcm_vector_from_twelve_byte_nonce() -> None:
    out = crypto.encrypt_message(
        SMB311_C2S_PLAIN, SMB311_SESSION_ID, SMB311_C2S_KEY, Cipher.AES_128_GCM, SMB311_C2S_NONCE
    )
    assert out == SMB311_C2S_TRANSFORM


# -- key derivation ---------------------------------------------------------------


@pytest.mark.parametrize("bits", [128, 256, 384, 512])
def test_kdf_matches_impacket_and_smbprotocol(bits: int) -> None:
    ki, label, context = key_of(16), b"SMBC2SCipherKey\x00", key_of(64)
    ours = crypto.kdf(ki, label, context, bits)
    assert len(ours) == bits // 8
    if bits <= 256 or bits % 256 == 0:
        # impacket rounds the block count L/256 down (384 bits gives 256);
        # SMB itself only asks for 128 and 256.
        assert ours == impacket_crypto.KDF_CounterMode(ki, label, context, bits)
    # Session._smb3kdf does not use self; it wraps cryptography's KBKDFHMAC.
    assert ours == smbp_session.Session._smb3kdf(None, ki, label, context, length=bits // 8)


def test_kdf_rejects_bad_lengths() -> None:
    for bits in (0, -8, 100):
        with pytest.raises(ValueError):
            crypto.kdf(b"k" * 16, b"a\x00", b"b\x00", bits)


class _Field:
    def __init__(self, value: int) -> None:
        self.value = value

    def get_value(self) -> int:
        return self.value


class _SpnegoContext:
    def __init__(self, session_key: bytes) -> None:
        self.session_key = session_key
        self.complete = False

    def step(self, _token: bytes | None) -> bytes:
        self.complete = True
        return b"token"


class _FakeSmbprotocolConnection:
    """Just enough of smbprotocol's Connection for Session.connect to derive keys."""

    def __init__(
        self, dialect: int, cipher: int | None, conn_msgs: list[bytes], sess_msgs: list[bytes]
    ):
        self.gss_negotiate_token = None
        self.server_name = "server"
        self.require_signing = False
        self.client_security_mode = 1
        self.supports_encryption = True
        self.session_table: dict[int, Any] = {}
        self.dialect = dialect
        self.cipher_id = cipher
        self.preauth_integrity_hash_value = list(conn_msgs)
        self.preauth_integrity_session_hash_value = {7: list(sess_msgs)}

    def send(self, _msg: Any, sid: int = 0, credit_request: int = 0) -> Any:
        return types.SimpleNamespace(message={"message_id": _Field(7)})

    def receive(self, _request: Any) -> SMB2HeaderResponse:
        response = SMB2HeaderResponse()
        response["session_id"] = 0x4000000000021
        response["status"] = 0
        response["data"] = smbp_session.SMB2SessionSetupResponse().pack()
        return response


def smbprotocol_session_keys(
    monkeypatch: pytest.MonkeyPatch,
    gss_key: bytes,
    dialect: int,
    cipher: int | None,
    conn_msgs: list[bytes],
    sess_msgs: list[bytes],
) -> smbp_session.Session:
    """Run smbprotocol's own Session.connect (stubbed transport) to get its keys."""
    monkeypatch.setattr(smbp_session.spnego, "client", lambda *a, **k: _SpnegoContext(gss_key))
    conn = _FakeSmbprotocolConnection(dialect, cipher, conn_msgs, sess_msgs)
    session = smbp_session.Session(conn, "user", "password", require_encryption=False)
    session.connect()
    return session


@pytest.mark.parametrize(
    ("dialect", "cipher"),
    [
        (Dialect.SMB2_0_2, None),
        (Dialect.SMB2_1, None),
        (Dialect.SMB3_0, Cipher.AES_128_CCM),
        (Dialect.SMB3_0_2, Cipher.AES_128_CCM),
        (Dialect.SMB3_1_1, None),
        (Dialect.SMB3_1_1, Cipher.AES_128_CCM),
        (Dialect.SMB3_1_1, Cipher.AES_128_GCM),
        (Dialect.SMB3_1_1, Cipher.AES_256_CCM),
        (Dialect.SMB3_1_1, Cipher.AES_256_GCM),
    ],
)
@pytest.mark.parametrize("gss_key_len", [16, 32, 8], ids=["ntlm16", "krb32", "short8"])
def test_session_keys_match_smbprotocol(
    monkeypatch: pytest.MonkeyPatch, dialect: Dialect, cipher: Cipher | None, gss_key_len: int
) -> None:
    gss_key = key_of(gss_key_len)
    conn_msgs = [smb2_message(Command.NEGOTIATE), smb2_message(Command.NEGOTIATE, flags=1)]
    sess_msgs = [
        smb2_message(Command.SESSION_SETUP, message_id=1),
        smb2_message(Command.SESSION_SETUP, flags=1, message_id=1, status=0xC0000016),
        smb2_message(Command.SESSION_SETUP, message_id=2),
    ]
    theirs = smbprotocol_session_keys(monkeypatch, gss_key, dialect, cipher, conn_msgs, sess_msgs)

    preauth = None
    if dialect == Dialect.SMB3_1_1:
        preauth = crypto.PREAUTH_HASH_INITIAL
        for m in conn_msgs + sess_msgs:
            preauth = crypto.preauth_update(preauth, m)
    ours = crypto.derive_session_keys(gss_key, dialect, preauth, cipher)

    assert ours.signing_key == theirs.signing_key
    assert ours.application_key == theirs.application_key
    if dialect >= Dialect.SMB3_0:
        # smbprotocol is the client: its EncryptionKey is our decryption key.
        assert ours.decryption_key == theirs.encryption_key
        assert ours.encryption_key == theirs.decryption_key
        assert len(ours.encryption_key) == (
            32 if cipher in (Cipher.AES_256_CCM, Cipher.AES_256_GCM) else 16
        )
    else:
        assert ours.encryption_key == ours.decryption_key == b""


def test_aes256_keys_use_the_whole_gss_key_and_signing_keys_do_not() -> None:
    preauth = key_of(64)
    a = key_of(32)
    b = a[:16] + key_of(16)  # same first 16 bytes
    ka = crypto.derive_session_keys(a, Dialect.SMB3_1_1, preauth, Cipher.AES_256_GCM)
    kb = crypto.derive_session_keys(b, Dialect.SMB3_1_1, preauth, Cipher.AES_256_GCM)
    assert ka.signing_key == kb.signing_key and len(ka.signing_key) == 16
    assert ka.application_key == kb.application_key
    assert ka.encryption_key != kb.encryption_key
    assert ka.decryption_key != kb.decryption_key
    assert ka.encryption_key != ka.decryption_key
    # With a 128-bit cipher only the first 16 bytes matter.
    assert crypto.derive_session_keys(
        a, Dialect.SMB3_1_1, preauth, Cipher.AES_128_GCM
    ) == crypto.derive_session_keys(b, Dialect.SMB3_1_1, preauth, Cipher.AES_128_GCM)


def test_smb311_keys_depend_on_the_preauth_hash_and_need_it() -> None:
    k1 = crypto.derive_session_keys(SMB311_SESSION_KEY, Dialect.SMB3_1_1, bytes(64), None)
    k2 = crypto.derive_session_keys(SMB311_SESSION_KEY, Dialect.SMB3_1_1, b"\x01" + bytes(63), None)
    assert k1.signing_key != k2.signing_key
    with pytest.raises(ValueError):
        crypto.derive_session_keys(SMB311_SESSION_KEY, Dialect.SMB3_1_1, None, None)
    with pytest.raises(ValueError):
        crypto.derive_session_keys(SMB311_SESSION_KEY, Dialect.SMB3_1_1, bytes(32), None)


def test_smb2_signing_key_is_the_padded_session_key() -> None:
    keys = crypto.derive_session_keys(b"\x01\x02\x03", Dialect.SMB2_1, None, None)
    assert keys.signing_key == b"\x01\x02\x03" + bytes(13)
    assert crypto.derive_session_keys(
        bytes(range(32)), Dialect.SMB2_0_2, None, None
    ).signing_key == bytes(range(16))


def test_preauth_update_is_sha512_of_the_concatenation() -> None:
    prev, msg = key_of(64), key_of(100)
    assert crypto.preauth_update(prev, msg) == hashlib.sha512(prev + msg).digest()
    assert crypto.preauth_update(prev, msg) != crypto.preauth_update(msg[:64], prev)


# -- signing ------------------------------------------------------------------------


def test_signing_algorithm_selection() -> None:
    assert crypto.signing_algorithm(Dialect.SMB2_0_2) == SigningAlgorithm.HMAC_SHA256
    assert crypto.signing_algorithm(Dialect.SMB2_1) == SigningAlgorithm.HMAC_SHA256
    assert crypto.signing_algorithm(Dialect.SMB3_0) == SigningAlgorithm.AES_CMAC
    assert crypto.signing_algorithm(Dialect.SMB3_0_2) == SigningAlgorithm.AES_CMAC
    assert crypto.signing_algorithm(Dialect.SMB3_1_1) == SigningAlgorithm.AES_CMAC
    assert (
        crypto.signing_algorithm(Dialect.SMB3_1_1, SigningAlgorithm.AES_GMAC)
        == SigningAlgorithm.AES_GMAC
    )
    # Only 3.1.1 negotiates an algorithm.
    assert (
        crypto.signing_algorithm(Dialect.SMB3_0, SigningAlgorithm.AES_GMAC)
        == SigningAlgorithm.AES_CMAC
    )


def smbprotocol_connection(
    dialect: int, signing: int | None = None, cipher: int | None = None
) -> Connection:
    conn = Connection(uuid.uuid4(), "server")  # no I/O until .connect()
    conn.dialect = dialect
    conn.signing_algorithm_id = signing
    conn.cipher_id = cipher
    return conn


SIGNING_CASES = [
    (Dialect.SMB2_0_2, None, SigningAlgorithm.HMAC_SHA256),
    (Dialect.SMB2_1, None, SigningAlgorithm.HMAC_SHA256),
    (Dialect.SMB3_0, None, SigningAlgorithm.AES_CMAC),
    (Dialect.SMB3_0_2, None, SigningAlgorithm.AES_CMAC),
    (Dialect.SMB3_1_1, None, SigningAlgorithm.AES_CMAC),
    (Dialect.SMB3_1_1, SigningAlgorithm.AES_CMAC, SigningAlgorithm.AES_CMAC),
    (Dialect.SMB3_1_1, SigningAlgorithm.AES_GMAC, SigningAlgorithm.AES_GMAC),
    (Dialect.SMB3_1_1, SigningAlgorithm.HMAC_SHA256, SigningAlgorithm.HMAC_SHA256),
]
SIGNING_IDS = ["2.0.2", "2.1", "3.0", "3.0.2", "3.1.1", "3.1.1-cmac", "3.1.1-gmac", "3.1.1-hmac"]


@pytest.mark.parametrize(("dialect", "negotiated", "algorithm"), SIGNING_CASES, ids=SIGNING_IDS)
def test_client_requests_signed_by_smbprotocol_verify(
    dialect: Dialect, negotiated: SigningAlgorithm | None, algorithm: SigningAlgorithm
) -> None:
    assert crypto.signing_algorithm(dialect, negotiated) == algorithm
    key = key_of(16)
    conn = smbprotocol_connection(dialect, negotiated)
    for command, message_id in ((Command.WRITE, 9), (Command.CANCEL, 9), (Command.READ, 1 << 40)):
        msg = bytearray(smb2_message(command, flags=HeaderFlags.SIGNED, message_id=message_id))
        # What smbprotocol's send() does to sign a request.
        msg[48:64] = conn._generate_signature(bytes(msg), key, message_id, False, command)
        assert crypto.verify_message(msg, key, algorithm)
        assert crypto.verify_message(msg, key, algorithm, from_server=False)
        assert crypto.compute_signature(msg, key, algorithm) == bytes(msg[48:64])
        # Tampering anywhere, or a different key, breaks it.
        for offset in (4, 12, 24, 47, 64, len(msg) - 1):
            bad = bytearray(msg)
            bad[offset] ^= 0x01
            assert not crypto.verify_message(bad, key, algorithm), offset
        assert not crypto.verify_message(msg, key_of(16), algorithm)


@pytest.mark.parametrize(("dialect", "negotiated", "algorithm"), SIGNING_CASES, ids=SIGNING_IDS)
def test_server_responses_signed_by_us_verify_in_smbprotocol(
    dialect: Dialect, negotiated: SigningAlgorithm | None, algorithm: SigningAlgorithm
) -> None:
    key = key_of(16)
    session_id = 0x4000000000021
    conn = smbprotocol_connection(dialect, negotiated)
    conn.session_table[session_id] = types.SimpleNamespace(signing_key=key)
    for command, flags in (
        (Command.WRITE, HeaderFlags.SERVER_TO_REDIR),
        (Command.READ, HeaderFlags.SERVER_TO_REDIR | HeaderFlags.ASYNC_COMMAND),
        (Command.OPLOCK_BREAK, HeaderFlags.SERVER_TO_REDIR),
    ):
        msg = smb2_message(command, flags=flags, session_id=session_id)
        signed = crypto.sign_message(msg, key, algorithm)
        # Only the SIGNED flag and the Signature field change.
        assert struct.unpack_from("<I", signed, 16)[0] == flags | HeaderFlags.SIGNED
        assert signed[:16] == msg[:16] and signed[20:48] == msg[20:48] and signed[64:] == msg[64:]
        assert signed[48:64] != bytes(16)

        header = SMB2HeaderResponse()
        header.unpack(signed)
        conn.verify_signature(header, session_id, force=True)  # raises on a mismatch

        assert crypto.verify_message(signed, key, algorithm)
        bad = bytearray(signed)
        bad[-1] ^= 0x80
        header = SMB2HeaderResponse()
        header.unpack(bytes(bad))
        with pytest.raises(Exception, match="could not be verified"):
            conn.verify_signature(header, session_id, force=True)


@pytest.mark.parametrize(
    ("dialect", "algorithm"),
    [(0x0210, SigningAlgorithm.HMAC_SHA256), (0x0300, SigningAlgorithm.AES_CMAC)],
)
def test_signatures_match_impacket(dialect: int, algorithm: SigningAlgorithm) -> None:
    key = key_of(16)
    impacket = SMB3.__new__(SMB3)  # no connection: signSMB only reads these two dicts
    impacket._Connection = {"Dialect": dialect}
    impacket._Session = {"SessionKey": key, "SigningKey": key}
    for flags in (0, HeaderFlags.SERVER_TO_REDIR):
        signed = crypto.sign_message(smb2_message(flags=flags), key, algorithm)
        packet = SMB2Packet(signed)
        assert packet.getData() == signed
        impacket.signSMB(packet)
        assert packet["Signature"] == signed[48:64]


def test_gmac_nonce_binds_role_and_cancel() -> None:
    key = key_of(16)
    gmac = SigningAlgorithm.AES_GMAC
    response = crypto.sign_message(smb2_message(flags=HeaderFlags.SERVER_TO_REDIR), key, gmac)
    assert crypto.verify_message(response, key, gmac, from_server=True)
    # A verifier that knows the sender was a client refuses a server-role signature.
    assert not crypto.verify_message(response, key, gmac, from_server=False)
    request = crypto.sign_message(smb2_message(), key, gmac)
    assert not crypto.verify_message(request, key, gmac, from_server=True)
    # The same bytes signed as CANCEL and as another command differ beyond the command field.
    cancel = crypto.sign_message(smb2_message(Command.CANCEL), key, gmac)
    as_echo = bytearray(cancel)
    struct.pack_into("<H", as_echo, 12, Command.ECHO)
    echo_sig = crypto.compute_signature(as_echo, key, gmac)
    nonce_cancel = bytes(cancel[24:32]) + struct.pack("<I", 2)
    zeroed = bytearray(cancel)
    zeroed[48:64] = bytes(16)
    assert AESGCM(key).encrypt(nonce_cancel, b"", bytes(zeroed)) == cancel[48:64]
    assert echo_sig != cancel[48:64]
    # CMAC and HMAC have no nonce: the role makes no difference there.
    for alg in (SigningAlgorithm.AES_CMAC, SigningAlgorithm.HMAC_SHA256):
        signed = crypto.sign_message(smb2_message(flags=HeaderFlags.SERVER_TO_REDIR), key, alg)
        assert crypto.verify_message(signed, key, alg, from_server=False)


def test_verify_rejects_wrong_algorithm_short_messages_and_missing_keys() -> None:
    key = key_of(16)
    signed = crypto.sign_message(smb2_message(), key, SigningAlgorithm.AES_CMAC)
    assert crypto.verify_message(signed, key, SigningAlgorithm.AES_CMAC)
    assert not crypto.verify_message(signed, key, SigningAlgorithm.HMAC_SHA256)
    assert not crypto.verify_message(signed, key, SigningAlgorithm.AES_GMAC)
    assert not crypto.verify_message(signed[:63], key, SigningAlgorithm.AES_CMAC)
    assert not crypto.verify_message(signed, b"", SigningAlgorithm.AES_CMAC)
    # An HMAC "signature" under an empty key must not pass for a keyless session.
    forged = crypto.sign_message(smb2_message(), b"\x00" * 16, SigningAlgorithm.HMAC_SHA256)
    assert not crypto.verify_message(forged, b"", SigningAlgorithm.HMAC_SHA256)
    assert not crypto.verify_message(signed, b"short", SigningAlgorithm.AES_CMAC)
    assert not crypto.verify_message(signed, key, 0x7777)
    with pytest.raises(ValueError):
        crypto.sign_message(smb2_message(), b"", SigningAlgorithm.AES_CMAC)
    with pytest.raises(ValueError):
        crypto.sign_message(b"\xfeSMB", key, SigningAlgorithm.AES_CMAC)


def test_signature_covers_compound_padding_and_ignores_incoming_signature_bytes() -> None:
    key = key_of(16)
    padded = smb2_message(body=b"\x04\x00\x00\x00") + bytes(4)
    for alg in SigningAlgorithm:
        signed = crypto.sign_message(padded, key, alg)
        assert crypto.verify_message(signed, key, alg)
        assert not crypto.verify_message(signed[:-4], key, alg)
        # Re-signing an already signed message gives the same bytes.
        assert crypto.sign_message(signed, key, alg) == signed


def test_prepared_signer_matches_module_functions() -> None:
    key = key_of(16)
    for alg in SigningAlgorithm:
        signer = crypto.Signer(key, alg)
        msg = smb2_message(flags=HeaderFlags.SERVER_TO_REDIR)
        assert signer.sign(msg) == crypto.sign_message(msg, key, alg)
        assert signer.verify(crypto.sign_message(msg, key, alg))
        assert signer.sign(bytearray(msg)) == signer.sign(memoryview(msg))


# -- encryption ------------------------------------------------------------------------


@pytest.mark.parametrize("cipher", ALL_CIPHERS, ids=[c.name for c in ALL_CIPHERS])
def test_our_transforms_decrypt_in_smbprotocol(cipher: Cipher) -> None:
    key = cipher_key(cipher)
    session_id = 0x4000000000021
    plain = smb2_message(flags=HeaderFlags.SERVER_TO_REDIR) + os.urandom(1000)
    data = crypto.encrypt_message(plain, session_id, key, cipher)
    assert len(data) == TRANSFORM_HEADER_SIZE + len(plain)

    conn = smbprotocol_connection(Dialect.SMB3_1_1, cipher=cipher)
    conn.session_table[session_id] = types.SimpleNamespace(decryption_key=key)
    header = SMB2TransformHeader()
    header.unpack(data)
    assert conn._decrypt(header) == plain

    tampered = bytearray(data)
    tampered[-1] ^= 1
    header = SMB2TransformHeader()
    header.unpack(bytes(tampered))
    with pytest.raises(Exception):  # noqa: B017 - cryptography's InvalidTag, untyped here
        conn._decrypt(header)


@pytest.mark.parametrize("cipher", ALL_CIPHERS, ids=[c.name for c in ALL_CIPHERS])
def test_smbprotocol_transforms_decrypt_here(cipher: Cipher) -> None:
    key = cipher_key(cipher)
    session_id = 0x4000000000021
    plain = smb2_message() + os.urandom(333)
    conn = smbprotocol_connection(Dialect.SMB3_1_1, cipher=cipher)
    data = conn._encrypt(
        plain, types.SimpleNamespace(session_id=session_id, encryption_key=key)
    ).pack()
    assert data[:4] == TRANSFORM_PROTOCOL_ID
    assert crypto.decrypt_message(data, key, cipher) == (session_id, plain)
    # The function form resolves the key by SessionId.
    keys = {session_id: key}
    assert crypto.decrypt_message(data, keys.get, cipher) == (session_id, plain)
    assert crypto.TransformCipher(key, cipher).decrypt(data) == (session_id, plain)


class _SentPackets:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_packet(self, data: bytes) -> None:
        self.sent.append(data)


class _OnePacket:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def recv_packet(self, _timeout: Any) -> Any:
        return types.SimpleNamespace(get_trailer=lambda: self.data)


def test_impacket_ccm_transforms_decrypt_here() -> None:
    key = key_of(16)
    impacket = SMB3.__new__(SMB3)
    impacket._NetBIOSSession = wire = _SentPackets()
    impacket._Connection = {"SequenceWindow": 5, "Dialect": 0x0300}
    impacket._Session = {
        "SessionID": 0x77,
        "SessionFlags": SMB2_SESSION_FLAG_ENCRYPT_DATA,
        "SigningActivated": False,
        "EncryptionKey": key,
        "CalculatePreAuthHash": False,
        "TreeConnectTable": {},
    }
    packet = SMB2Packet(smb2_message())
    impacket.sendSMB(packet)
    assert crypto.decrypt_message(wire.sent[0], key, Cipher.AES_128_CCM) == (0x77, packet.getData())
    with pytest.raises(crypto.CryptoError):
        crypto.decrypt_message(wire.sent[0], key_of(16), Cipher.AES_128_CCM)


def test_our_ccm_transforms_decrypt_in_impacket() -> None:
    key = key_of(16)
    plain = smb2_message(flags=HeaderFlags.SERVER_TO_REDIR)
    impacket = SMB3.__new__(SMB3)
    impacket._NetBIOSSession = _OnePacket(
        crypto.encrypt_message(plain, 0x77, key, Cipher.AES_128_CCM)
    )
    impacket._Connection = {"SequenceWindow": 5, "Dialect": 0x0300, "OutstandingResponses": {}}
    impacket._Session = {"DecryptionKey": key}
    impacket._timeout = 1
    assert impacket.recvSMB().getData() == plain


@pytest.mark.parametrize("cipher", ALL_CIPHERS, ids=[c.name for c in ALL_CIPHERS])
def test_transform_header_layout_and_fresh_nonces(cipher: Cipher) -> None:
    key = cipher_key(cipher)
    plain = smb2_message()
    a = crypto.encrypt_message(plain, 0x1122334455667788, key, cipher)
    b = crypto.encrypt_message(plain, 0x1122334455667788, key, cipher)
    nonce_len = 11 if cipher in (Cipher.AES_128_CCM, Cipher.AES_256_CCM) else 12
    for data in (a, b):
        assert data[:4] == b"\xfdSMB"
        assert data[20 + nonce_len : 36] == bytes(16 - nonce_len)
        assert struct.unpack_from("<IHHQ", data, 36) == (len(plain), 0, 1, 0x1122334455667788)
        assert plain not in data
    assert a[20:36] != b[20:36] and a[4:20] != b[4:20]


def tampered_variants(data: bytes) -> Iterator[tuple[str, bytes]]:
    for name, offset in (
        ("signature", 4),
        ("nonce", 20),
        ("nonce-reserved", 35),  # outside the AEAD nonce but inside the AAD
        ("reserved", 40),
        ("session-id", 44),
        ("ciphertext-first", 52),
        ("ciphertext-last", len(data) - 1),
    ):
        bad = bytearray(data)
        bad[offset] ^= 0x01
        yield name, bytes(bad)


@pytest.mark.parametrize("cipher", ALL_CIPHERS, ids=[c.name for c in ALL_CIPHERS])
def test_tampering_and_wrong_keys_are_rejected(cipher: Cipher) -> None:
    key = cipher_key(cipher)
    plain = smb2_message() + b"payload" * 10
    data = crypto.encrypt_message(plain, 5, key, cipher)
    assert crypto.decrypt_message(data, key, cipher) == (5, plain)
    for name, bad in tampered_variants(data):
        with pytest.raises(crypto.CryptoError):
            crypto.decrypt_message(bad, key, cipher)
            pytest.fail(f"tampered {name} accepted")
    with pytest.raises(crypto.CryptoError):
        crypto.decrypt_message(data, cipher_key(cipher), cipher)
    other = {
        Cipher.AES_128_CCM: Cipher.AES_128_GCM,
        Cipher.AES_128_GCM: Cipher.AES_128_CCM,
        Cipher.AES_256_CCM: Cipher.AES_256_GCM,
        Cipher.AES_256_GCM: Cipher.AES_256_CCM,
    }[cipher]
    with pytest.raises(crypto.CryptoError):
        crypto.decrypt_message(data, key, other)
    # A key of the wrong size for the cipher, or none at all, is an error too.
    with pytest.raises(crypto.CryptoError):
        crypto.decrypt_message(data, key_of(24), cipher)
    with pytest.raises(crypto.CryptoError):
        crypto.decrypt_message(data, b"", cipher)
    with pytest.raises(crypto.CryptoError, match="no decryption key"):
        crypto.decrypt_message(data, lambda sid: None, cipher)


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda d: d[:51], "truncated"),
        (lambda d: b"\xfeSMB" + d[4:], "not a transform"),
        (lambda d: d[:42] + b"\x02\x00" + d[44:], "Flags"),
        (lambda d: d[:-1], "OriginalMessageSize"),
        (lambda d: d + b"\x00", "OriginalMessageSize"),
    ],
    ids=["truncated", "protocol-id", "flags", "size-short", "size-long"],
)
def test_malformed_transforms_are_rejected_before_decrypting(
    mangle: Callable[[bytes], bytes], reason: str
) -> None:
    key = key_of(16)
    data = crypto.encrypt_message(smb2_message(), 5, key, Cipher.AES_128_GCM)
    with pytest.raises(crypto.CryptoError, match=reason):
        crypto.decrypt_message(mangle(data), key, Cipher.AES_128_GCM)
    with pytest.raises(crypto.CryptoError, match=reason):
        crypto.parse_transform_header(mangle(data))
    assert crypto.parse_transform_header(data) == 5


def test_unknown_cipher_is_a_crypto_error_when_decrypting() -> None:
    key = key_of(16)
    data = crypto.encrypt_message(smb2_message(), 5, key, Cipher.AES_128_GCM)
    with pytest.raises(crypto.CryptoError):
        crypto.decrypt_message(data, key, 0x0099)


def test_encrypt_argument_checks() -> None:
    with pytest.raises(ValueError):
        crypto.encrypt_message(b"x" * 64, 1, key_of(16), Cipher.AES_256_GCM)
    with pytest.raises(ValueError):
        crypto.encrypt_message(b"x" * 64, 1, key_of(16), 0x0099)
    with pytest.raises(ValueError):
        crypto.encrypt_message(b"x" * 64, 1, key_of(16), Cipher.AES_128_GCM, nonce=bytes(11))


def test_prepared_transform_cipher_round_trips_large_chains() -> None:
    for cipher in ALL_CIPHERS:
        key = cipher_key(cipher)
        out_side = crypto.TransformCipher(key, cipher)
        chain = b"".join(smb2_message(message_id=i, body=os.urandom(4096)) for i in range(16))
        data = out_side.encrypt(memoryview(chain), 42)
        assert crypto.TransformCipher(key, cipher).decrypt(bytearray(data)) == (42, chain)
        assert crypto.decrypt_message(data, key, cipher) == (42, chain)


@pytest.mark.parametrize("cipher", [Cipher.AES_128_CCM, Cipher.AES_128_GCM])
def test_nonces_count_and_run_out(cipher: int) -> None:
    """Nonces are a per-instance random prefix and a counter, never repeated under
    a key; past its limit a cipher refuses to seal (SMB cannot rekey: the session ends)."""
    key = bytes(range(16))
    sealer = crypto.TransformCipher(key, cipher, limit=3)
    n = sealer.nonce_size
    fields = [sealer.encrypt(b"x" * 64, 1)[20:36] for _ in range(3)]
    nonces = [f[:n] for f in fields]
    assert all(f[n:] == bytes(16 - n) for f in fields)
    assert len({nonce[:-4] for nonce in nonces}) == 1  # one prefix
    assert [int.from_bytes(nonce[-4:], "little") for nonce in nonces] == [0, 1, 2]
    with pytest.raises(crypto.NonceExhausted):
        sealer.encrypt(b"x", 1)
    other = crypto.TransformCipher(key, cipher)  # another channel: another prefix
    assert other.encrypt(b"x", 1)[20 : 20 + n - 4] != nonces[0][:-4]
    # What is sealed with a counted nonce opens with the same key.
    assert crypto.TransformCipher(key, cipher).decrypt(other.encrypt(b"y", 1)) == (1, b"y")
