"""The SESSION_SETUP acceptor against independent clients' NTLM/SPNEGO code.

Clients: pyspnego (negotiate and raw ntlm), impacket's NTLM generation (raw and
inside impacket's SPNEGO), and, where the system Python has Samba's bindings,
Samba's own gensec (the code smbclient runs).  Session keys derived on both
sides must be equal.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import spnego
from impacket import ntlm
from impacket.spnego import SPNEGO_NegTokenInit, SPNEGO_NegTokenResp, TypesMech

from gateway.auth import (
    NTLMSSP_OID,
    Authenticator,
    AuthError,
    spnego_init_token,
)
from gateway.config import load_users
from gateway.protocol.constants import NtStatusError, Status

USERS = {"Alice": "Secret1", "bob": "p:a ss"}
NTLMSSP_MECH = TypesMech["NTLMSSP - Microsoft NTLM Security Support Provider"]
KRB5_MECH = TypesMech["MS KRB5 - Microsoft Kerberos 5"]


# ---------------------------------------------------------------------------
# drivers


def run_pyspnego(
    auth: Authenticator,
    user: str,
    password: str,
    protocol: str,
    tamper: Callable[[int, bytes], bytes] | None = None,
) -> spnego.ContextProxy:
    """Run a pyspnego client against `auth` the way an SMB client does."""
    client = spnego.client(user, password, hostname="smbgw", service="cifs", protocol=protocol)
    token = client.step(spnego_init_token() if protocol == "negotiate" else None)
    leg = 0
    while True:
        assert token is not None
        if tamper is not None:
            token = tamper(leg, token)
        out, done = auth.step(token)
        leg += 1
        if done:
            if out:
                assert client.step(out) is None
            return client
        token = client.step(out)


def impacket_raw(
    auth: Authenticator,
    user: str,
    password: str,
    domain: str,
    signing: bool = True,
    v2: bool = True,
) -> bytes:
    """impacket's NTLM client, raw NTLMSSP; returns the client's exported session key."""
    type1 = ntlm.getNTLMSSPType1("", "", signingRequired=signing, use_ntlmv2=v2)
    challenge, done = auth.step(type1.getData())
    assert not done and challenge.startswith(b"NTLMSSP\x00")
    type3, key = ntlm.getNTLMSSPType3(type1, challenge, user, password, domain, use_ntlmv2=v2)
    out, done = auth.step(type3.getData())
    assert done and out == b""
    return bytes(key)


def impacket_spnego(
    auth: Authenticator, user: str, password: str, domain: str, mechs: list[bytes] | None = None
) -> bytes:
    """impacket's NTLM inside impacket's SPNEGO, as impacket's SMB client sends it."""
    type1 = ntlm.getNTLMSSPType1("", "", signingRequired=True)
    init = SPNEGO_NegTokenInit()
    init["MechTypes"] = mechs or [NTLMSSP_MECH]
    init["MechToken"] = type1.getData() if not mechs else b"\x60\x03\x06\x01\x00"
    out, done = auth.step(init.getData())
    assert not done
    if mechs:  # the optimistic token was not NTLM: NTLMSSP selected, no challenge yet
        # negTokenResp { negState accept-incomplete, supportedMech NTLMSSP }
        assert out.hex() == "a1153013a0030a0101a10c060a2b06010401823702020a"
        neg = SPNEGO_NegTokenResp()
        neg["ResponseToken"] = type1.getData()
        out, done = auth.step(neg.getData())
        assert not done
    resp = SPNEGO_NegTokenResp(out)
    if not mechs:
        assert resp["SupportedMech"] == NTLMSSP_MECH
    type3, key = ntlm.getNTLMSSPType3(type1, resp["ResponseToken"], user, password, domain)
    final = SPNEGO_NegTokenResp()
    final["ResponseToken"] = type3.getData()
    out, done = auth.step(final.getData())
    assert done
    assert out == bytes.fromhex("a1073005a0030a0100")  # accept-completed, no mechListMIC
    return bytes(key)


# ---------------------------------------------------------------------------
# pyspnego


@pytest.mark.parametrize("protocol", ["negotiate", "ntlm"])
def test_pyspnego_success_and_equal_keys(protocol: str) -> None:
    auth = Authenticator(USERS)
    client = run_pyspnego(auth, "alice", "Secret1", protocol)
    assert client.complete
    assert auth.complete
    assert auth.username == "Alice"  # the users-file spelling
    assert not auth.is_guest and not auth.is_anonymous
    assert len(auth.session_key) == 16
    assert auth.session_key == client.session_key
    assert auth.uses_spnego == (protocol == "negotiate")


@pytest.mark.parametrize("protocol", ["negotiate", "ntlm"])
@pytest.mark.parametrize(
    "user",
    ["ALICE", "WORKGROUP\\alice", "SOMEDOMAIN\\Alice", "alice@EXAMPLE.COM", "bob"],
)
def test_pyspnego_case_domain_and_upn(protocol: str, user: str) -> None:
    password = "p:a ss" if user == "bob" else "Secret1"
    auth = Authenticator(USERS)
    client = run_pyspnego(auth, user, password, protocol)
    assert client.complete and auth.session_key == client.session_key
    assert auth.username in ("Alice", "bob")


@pytest.mark.parametrize("protocol", ["negotiate", "ntlm"])
@pytest.mark.parametrize(("user", "password"), [("alice", "wrong"), ("mallory", "Secret1")])
def test_pyspnego_failures(protocol: str, user: str, password: str) -> None:
    auth = Authenticator(USERS)
    with pytest.raises(AuthError) as info:
        run_pyspnego(auth, user, password, protocol)
    assert info.value.status == Status.LOGON_FAILURE
    assert not auth.complete
    with pytest.raises(AuthError):  # the exchange cannot be resumed
        auth.step(b"")


def test_spnego_mech_list_mic_is_checked() -> None:
    def bad_mic(leg: int, token: bytes) -> bytes:
        # mechListMIC [3] is the last element of pyspnego's NegTokenResp
        return token[:-1] + bytes([token[-1] ^ 1]) if leg == 1 else token

    with pytest.raises(AuthError, match="mechListMIC"):
        run_pyspnego(Authenticator(USERS), "alice", "Secret1", "negotiate", bad_mic)


def test_spnego_missing_mech_list_mic_refused_when_ntlm_mic_present() -> None:
    from gateway.auth import _der, _parse_neg_token_resp

    def strip_mic(leg: int, token: bytes) -> bytes:
        if leg != 1:
            return token
        resp = _parse_neg_token_resp(token)
        assert resp.mech_list_mic is not None and resp.response_token is not None
        body = _der(0xA2, _der(0x04, resp.response_token))
        return _der(0xA1, _der(0x30, body))

    with pytest.raises(AuthError, match="mechListMIC missing"):
        run_pyspnego(Authenticator(USERS), "alice", "Secret1", "negotiate", strip_mic)


def test_ntlm_authenticate_mic_is_checked() -> None:
    def bad_mic(leg: int, token: bytes) -> bytes:
        if leg != 1:
            return token
        assert token[:8] == b"NTLMSSP\x00" and token[8] == 3
        return token[:80] + bytes([token[80] ^ 0xFF]) + token[81:]  # MIC is bytes 72..88

    with pytest.raises(AuthError, match="MIC"):
        run_pyspnego(Authenticator(USERS), "alice", "Secret1", "ntlm", bad_mic)


def test_tampered_nt_response_refused() -> None:
    def flip(leg: int, token: bytes) -> bytes:
        if leg != 1:
            return token
        nt_len = int.from_bytes(token[20:22], "little")
        nt_off = int.from_bytes(token[24:28], "little")
        pos = nt_off + nt_len - 5  # inside the client blob's AV pairs
        return token[:pos] + bytes([token[pos] ^ 1]) + token[pos + 1 :]

    with pytest.raises(AuthError):
        run_pyspnego(Authenticator(USERS), "alice", "Secret1", "ntlm", flip)


# ---------------------------------------------------------------------------
# impacket


@pytest.mark.parametrize("signing", [True, False], ids=["key_exch", "no_key_exch"])
def test_impacket_raw_success(signing: bool) -> None:
    auth = Authenticator(USERS)
    key = impacket_raw(auth, "alice", "Secret1", "WORKGROUP", signing=signing)
    assert auth.complete and auth.username == "Alice" and auth.domain == "WORKGROUP"
    assert auth.session_key == key and len(key) == 16


def test_impacket_spnego_success() -> None:
    auth = Authenticator(USERS)
    key = impacket_spnego(auth, "ALICE", "Secret1", "ANYDOM")
    assert auth.uses_spnego and auth.session_key == key


def test_spnego_ntlm_not_first_mech() -> None:
    """A client preferring Kerberos gets NTLMSSP selected and then sends its NEGOTIATE."""
    auth = Authenticator(USERS)
    key = impacket_spnego(auth, "alice", "Secret1", "D", mechs=[KRB5_MECH, NTLMSSP_MECH])
    assert auth.session_key == key


@pytest.mark.parametrize(("user", "password"), [("alice", "nope"), ("carol", "Secret1")])
def test_impacket_failures(user: str, password: str) -> None:
    with pytest.raises(AuthError):
        impacket_raw(Authenticator(USERS), user, password, "WORKGROUP")
    with pytest.raises(AuthError):
        impacket_spnego(Authenticator(USERS), user, password, "WORKGROUP")


def test_ntlmv1_refused() -> None:
    with pytest.raises(AuthError, match="NTLMv1"):
        impacket_raw(Authenticator(USERS), "alice", "Secret1", "WORKGROUP", v2=False)


# ---------------------------------------------------------------------------
# anonymous


def test_anonymous_refused_by_default() -> None:
    with pytest.raises(AuthError, match="anonymous"):
        impacket_raw(Authenticator(USERS), "", "", "")


def test_anonymous_allowed_with_guest() -> None:
    auth = Authenticator(USERS, allow_guest=True)
    impacket_raw(auth, "", "", "")
    assert auth.complete and auth.is_anonymous and auth.is_guest
    assert auth.username == "" and len(auth.session_key) == 16


def test_allow_guest_does_not_weaken_password_checks() -> None:
    with pytest.raises(AuthError):
        impacket_raw(Authenticator(USERS, allow_guest=True), "alice", "wrong", "W")
    auth = Authenticator(USERS, allow_guest=True)
    impacket_raw(auth, "alice", "Secret1", "W")
    assert not auth.is_guest and not auth.is_anonymous


# ---------------------------------------------------------------------------
# Samba's gensec (smbclient's own SPNEGO/NTLMSSP), through the system Python

SAMBA_CLIENT = r"""
import sys
from samba import credentials, gensec
from samba.param import LoadParm

user, password, domain, mech = sys.argv[1:5]
lp = LoadParm()
lp.load("/dev/null")
creds = credentials.Credentials()
creds.guess(lp)
if user:
    creds.set_username(user)
    creds.set_password(password)
    creds.set_domain(domain)
else:
    creds.set_anonymous()
creds.set_workstation("SAMBACLIENT")
g = gensec.Security.start_client({"lp_ctx": lp, "target_hostname": "smbgw"})
g.set_credentials(creds)
g.set_target_service("cifs")
g.want_feature(gensec.FEATURE_SESSION_KEY)
g.want_feature(gensec.FEATURE_SIGN)
g.start_mech_by_name(mech)
for line in sys.stdin:
    finished, out = g.update(bytes.fromhex(line.strip()))
    print(("DONE " if finished else "MORE ") + bytes(out).hex(), flush=True)
    if finished:
        print("KEY " + bytes(g.session_key()).hex(), flush=True)
        break
"""


def _system_python_with_samba() -> str | None:
    """Samba's bindings are built for the distribution's Python, not the project's."""
    for exe in (sys.executable, shutil.which("python3", path="/usr/bin:/usr/local/bin")):
        if exe and _has_samba(exe):
            return exe
    return None


def _has_samba(exe: str) -> bool:
    try:
        r = subprocess.run(
            [exe, "-c", "import samba.gensec, samba.credentials"],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


SAMBA_PYTHON = _system_python_with_samba()
needs_samba = pytest.mark.skipif(SAMBA_PYTHON is None, reason="no Samba Python bindings")


def run_samba(tmp_path: Path, auth: Authenticator, user: str, password: str, mech: str) -> str:
    """Drive Samba's gensec client; returns its session key (hex)."""
    assert SAMBA_PYTHON is not None
    script = tmp_path / "samba_client.py"
    script.write_text(SAMBA_CLIENT)
    proc = subprocess.Popen(
        [SAMBA_PYTHON, str(script), user, password, "SAMBADOM", mech],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    server_out = spnego_init_token() if mech == "spnego" else b""
    try:
        while True:
            proc.stdin.write(server_out.hex() + "\n")
            proc.stdin.flush()
            words = proc.stdout.readline().split()
            assert words, "Samba client died"
            kind, token = words[0], bytes.fromhex(words[1]) if len(words) > 1 else b""
            if kind == "DONE":
                if token:  # raw NTLMSSP: the client is done once it sent AUTHENTICATE
                    out, done = auth.step(token)
                    assert done and out == b""
                key_line = proc.stdout.readline().split()
                assert key_line[0] == "KEY"
                return key_line[1]
            server_out, _done = auth.step(token)
    finally:
        proc.kill()
        proc.wait()


@needs_samba
@pytest.mark.parametrize("mech", ["spnego", "ntlmssp"])
def test_samba_gensec_client(tmp_path: Path, mech: str) -> None:
    auth = Authenticator(USERS)
    key = run_samba(tmp_path, auth, "alice", "Secret1", mech)
    assert auth.complete and auth.username == "Alice" and auth.domain == "SAMBADOM"
    assert auth.session_key.hex() == key


@needs_samba
def test_samba_gensec_wrong_password(tmp_path: Path) -> None:
    with pytest.raises(AuthError):
        run_samba(tmp_path, Authenticator(USERS), "alice", "bad", "spnego")


@needs_samba
def test_samba_gensec_anonymous(tmp_path: Path) -> None:
    with pytest.raises(AuthError):
        run_samba(tmp_path, Authenticator(USERS), "", "", "spnego")
    auth = Authenticator(USERS, allow_guest=True)
    run_samba(tmp_path, auth, "", "", "spnego")
    assert auth.is_anonymous and auth.is_guest


# ---------------------------------------------------------------------------
# tokens and robustness


def test_init_token_parses_with_impacket() -> None:
    token = spnego_init_token()
    init = SPNEGO_NegTokenInit(token)
    assert init["MechTypes"] == [NTLMSSP_OID]
    assert b"not_defined_in_RFC4178@please_ignore" in token


def test_empty_token_returns_the_init_token() -> None:
    auth = Authenticator(USERS)
    assert auth.step(b"") == (spnego_init_token(), False)
    key = impacket_raw(auth, "alice", "Secret1", "W")
    assert auth.session_key == key


def test_auth_error_is_logon_failure() -> None:
    err = AuthError("x")
    assert isinstance(err, NtStatusError) and err.status == Status.LOGON_FAILURE


@pytest.mark.parametrize(
    "token",
    [
        b"\x00",
        b"garbage!",
        b"NTLMSSP\x00",
        b"NTLMSSP\x00\x03\x00\x00\x00" + bytes(60),  # AUTHENTICATE first
        b"\x60\x02\x06\x00",
        b"\x60\x80",
        b"\x60\x84\xff\xff\xff\xff",
        b"\xa1\x03\x30\x01\x00",  # NegTokenResp as first token
        spnego_init_token()[:-3],
    ],
)
def test_malformed_first_tokens(token: bytes) -> None:
    with pytest.raises(AuthError):
        Authenticator(USERS).step(token)


def test_malformed_authenticate_fields() -> None:
    auth = Authenticator(USERS)
    type1 = ntlm.getNTLMSSPType1("", "", signingRequired=True)
    auth.step(type1.getData())
    bad = bytearray(b"NTLMSSP\x00\x03\x00\x00\x00" + bytes(80))
    bad[20:22] = (200).to_bytes(2, "little")  # NT response length past the end
    bad[24:28] = (64).to_bytes(4, "little")
    with pytest.raises(AuthError, match="outside"):
        auth.step(bytes(bad))


def test_random_tokens_never_crash() -> None:
    import random

    rng = random.Random(1234)
    good = [spnego_init_token(), ntlm.getNTLMSSPType1("", "", signingRequired=True).getData()]
    for _ in range(500):
        base = bytearray(rng.choice(good))
        for _ in range(rng.randint(1, 4)):
            base[rng.randrange(len(base))] = rng.randrange(256)
        cut = rng.randint(0, len(base))
        try:
            Authenticator(USERS).step(bytes(base[:cut]))
        except AuthError:
            pass


def test_step_after_done_refused() -> None:
    auth = Authenticator(USERS)
    impacket_raw(auth, "alice", "Secret1", "W")
    with pytest.raises(AuthError):
        auth.step(b"")


def test_challenge_names_the_server() -> None:
    auth = Authenticator(USERS, server_name="gw1", domain_name="corp")
    type1 = ntlm.getNTLMSSPType1("", "", signingRequired=True)
    challenge = ntlm.NTLMAuthChallenge(auth.step(type1.getData())[0])
    assert challenge["domain_name"].decode("utf-16-le") == "GW1"
    av = ntlm.AV_PAIRS(challenge["TargetInfoFields"])
    assert av[ntlm.NTLMSSP_AV_HOSTNAME][1].decode("utf-16-le") == "GW1"
    assert av[ntlm.NTLMSSP_AV_DOMAINNAME][1].decode("utf-16-le") == "CORP"
    assert av[ntlm.NTLMSSP_AV_TIME] is not None


def test_users_from_file_authenticate(tmp_path: Path) -> None:
    f = tmp_path / "users"
    f.write_text("Zoë:pässwörd\n")
    auth = Authenticator(load_users(f))
    client = run_pyspnego(auth, "zoË", "pässwörd", "negotiate")
    assert auth.username == "Zoë" and auth.session_key == client.session_key
