"""Re-authentication and multichannel session binding, with smbprotocol and impacket.

smbprotocol carries the connections (negotiation, signing of ordinary requests,
opens); impacket's NTLM builds the authentication tokens, so the client keeps
the NTLM session key and can derive a channel's signing key on its own
(MS-SMB2 3.2.5.3.3). Nothing here uses the gateway's own crypto.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from impacket import crypto as icrypto
from impacket import ntlm
from impacket.spnego import SPNEGO_NegTokenInit, SPNEGO_NegTokenResp, TypesMech
from smbprotocol.connection import Connection, Dialects, SigningAlgorithms
from smbprotocol.exceptions import SMBResponseException
from smbprotocol.header import NtStatus
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    FileAttributes,
    ImpersonationLevel,
    Open,
    ShareAccess,
    SMB2QueryInfoRequest,
    SMB2QueryInfoResponse,
    SMB2ReadRequest,
    SMB2ReadResponse,
)
from smbprotocol.security_descriptor import SMB2CreateSDBuffer
from smbprotocol.session import Session, SMB2SessionSetupRequest, SMB2SessionSetupResponse
from smbprotocol.tree import TreeConnect

from .conftest import PASSWORD, USER, GatewayNode, start_gateway

BINDING = 0x01
OTHER, OTHER_PASSWORD = "other", "other-secret"
_NTLMSSP = TypesMech["NTLMSSP - Microsoft NTLM Security Support Provider"]
_GENERIC_ALL = 0x10000000
REQUEST_OUT_OF_SEQUENCE = 0xC000042A


def _start(workdir: Path, *extra: str) -> GatewayNode:
    users = workdir / "two-users"
    workdir.mkdir(parents=True, exist_ok=True)
    users.write_text(f"{USER}:{PASSWORD}\n{OTHER}:{OTHER_PASSWORD}\n")
    # The last --users wins over the one start_gateway writes.
    return start_gateway(workdir, extra=["--users", str(users), *extra])


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayNode]:
    gw = _start(tmp_path_factory.mktemp("sessions"))
    yield gw
    assert gw.stop() == 0
    assert "Traceback" not in gw.log(), gw.log()[-4000:]


@dataclass
class Client:
    """One smbprotocol connection with a session, a tree and an open file."""

    conn: Connection
    session: Session
    tree: TreeConnect
    open: Open

    def read(self, length: int = 64) -> bytes:
        return bytes(self.open.read(0, length))

    def close(self) -> None:
        self.conn.disconnect(True)


def _connect(
    node: GatewayNode,
    guid: uuid.UUID,
    dialect: int = Dialects.SMB_3_1_1,
    signing: list[int] | None = None,
) -> Connection:
    conn = Connection(guid, node.host, node.port, require_signing=True)
    conn.connect(dialect=dialect, preferred_signing_algos=signing)
    return conn


def _client(
    node: GatewayNode, name: str, guid: uuid.UUID, signing: list[int] | None = None
) -> Client:
    conn = _connect(node, guid, signing=signing)
    session = Session(conn, USER, PASSWORD, require_encryption=False, auth_protocol="ntlm")
    session.connect()
    tree = TreeConnect(session, rf"\\{node.host}\share")
    tree.connect()
    op = Open(tree, name)
    op.create(
        ImpersonationLevel.Impersonation,
        _GENERIC_ALL,
        FileAttributes.FILE_ATTRIBUTE_NORMAL,
        ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE,
        CreateDisposition.FILE_OVERWRITE_IF,
        CreateOptions.FILE_NON_DIRECTORY_FILE,
    )
    op.write(b"multichannel payload", 0)
    return Client(conn, session, tree, op)


@dataclass
class Setup:
    """The outcome of one SESSION_SETUP exchange driven by hand."""

    status: int
    session_key: bytes
    preauth: list[bytes]  # the exchange's messages that enter a 3.1.1 preauth hash
    last: object  # smbprotocol's header of the final response


def _session_setup(
    conn: Connection, session_id: int, user: str, password: str, flags: int = 0
) -> Setup:
    """NTLM in SPNEGO over SESSION_SETUP for ``session_id`` (a re-authentication, or
    a bind with ``flags=BINDING``); requests are signed as smbprotocol signs them
    for that session id on ``conn``."""
    type1 = ntlm.getNTLMSSPType1("", "", True)
    init = SPNEGO_NegTokenInit()
    init["MechTypes"] = [_NTLMSSP]
    init["MechToken"] = type1.getData()
    token = init.getData()
    preauth: list[bytes] = []
    session_key = b""
    for leg in range(2):
        req = SMB2SessionSetupRequest()
        req["flags"] = flags
        req["security_mode"] = conn.client_security_mode
        req["buffer"] = token
        sent = conn.send(req, sid=session_id, force_signature=flags == BINDING)
        mid = sent.message["message_id"].get_value()
        try:
            resp = conn.receive(sent)
        except SMBResponseException as e:
            preauth += conn.preauth_integrity_session_hash_value.pop(mid, [])
            if e.status != NtStatus.STATUS_MORE_PROCESSING_REQUIRED:
                return Setup(e.status, session_key, preauth, e.header)
            resp = e.header
        preauth += conn.preauth_integrity_session_hash_value.pop(mid, [])
        if leg == 1:
            return Setup(resp["status"].get_value(), session_key, preauth, resp)
        body = SMB2SessionSetupResponse()
        body.unpack(resp["data"].get_value())
        challenge = SPNEGO_NegTokenResp(body["buffer"].get_value())["ResponseToken"]
        type3, session_key = ntlm.getNTLMSSPType3(type1, challenge, user, password, "")
        answer = SPNEGO_NegTokenResp()
        answer["ResponseToken"] = type3.getData()
        token = answer.getData()
    raise AssertionError("unreachable")


def _stand_in(conn: Connection, client: Client, signing_key: bytes) -> Session:
    """Make ``conn`` sign and verify for ``client``'s session with ``signing_key``."""
    stub = Session(conn, USER, PASSWORD, require_encryption=False, auth_protocol="ntlm")
    stub.session_id = client.session.session_id
    stub.signing_key = signing_key
    stub.signing_required = True
    stub.encrypt_data = False
    stub.tree_connect_table = {client.tree.tree_connect_id: client.tree}
    conn.session_table[stub.session_id] = stub
    return stub


def _owner_of_new_file(c: Client, name: str) -> str:
    """Create ``name`` through ``c``'s session and read back the owner it got."""
    op = Open(c.tree, name)
    op.create(
        ImpersonationLevel.Impersonation,
        _GENERIC_ALL,
        FileAttributes.FILE_ATTRIBUTE_NORMAL,
        ShareAccess.FILE_SHARE_READ,
        CreateDisposition.FILE_OVERWRITE_IF,
        CreateOptions.FILE_NON_DIRECTORY_FILE,
    )
    try:
        query = SMB2QueryInfoRequest()
        query["info_type"] = 3  # SMB2_0_INFO_SECURITY
        query["output_buffer_length"] = 4096
        query["additional_information"] = 1  # OWNER_SECURITY_INFORMATION
        query["file_id"] = op.file_id
        sent = c.conn.send(query, sid=c.session.session_id, tid=c.tree.tree_connect_id)
        body = SMB2QueryInfoResponse()
        body.unpack(c.conn.receive(sent)["data"].get_value())
        sd = SMB2CreateSDBuffer()
        sd.unpack(body["buffer"].get_value())
        return str(sd.get_owner())
    finally:
        op.close()


def _read_through(conn: Connection, client: Client) -> bytes:
    read = SMB2ReadRequest()
    read["length"] = 64
    read["offset"] = 0
    read["file_id"] = client.open.file_id
    sent = conn.send(read, sid=client.session.session_id, tid=client.tree.tree_connect_id)
    body = SMB2ReadResponse()
    body.unpack(conn.receive(sent)["data"].get_value())
    return bytes(body["buffer"].get_value())


# -- re-authentication ----------------------------------------------------------


def test_reauthentication_keeps_opens_keys_and_owner(node: GatewayNode) -> None:
    c = _client(node, "reauth.txt", uuid.uuid4())
    try:
        sid = c.session.session_id
        same = _session_setup(c.conn, sid, USER, PASSWORD)
        assert same.status == NtStatus.STATUS_SUCCESS
        # Signed with the session's unchanged key (the client keeps its keys).
        c.conn.verify_signature(same.last, sid, force=True)
        assert c.read() == b"multichannel payload"

        user_sid = _owner_of_new_file(c, "made-by-user.txt")
        assert user_sid.startswith("S-1-5-21-")

        anonymous = _session_setup(c.conn, sid, "", "")
        assert anonymous.status == NtStatus.STATUS_SUCCESS
        assert c.read() == b"multichannel payload"  # the open keeps what it was granted
        # What the session does next, it does as ANONYMOUS LOGON.
        assert _owner_of_new_file(c, "made-by-anonymous.txt") == "S-1-5-7"

        # Back to the user who logged on, but never to another one.
        other = _session_setup(c.conn, sid, OTHER, OTHER_PASSWORD)
        assert other.status == NtStatus.STATUS_ACCESS_DENIED
        back = _session_setup(c.conn, sid, USER, PASSWORD)
        assert back.status == NtStatus.STATUS_SUCCESS
        assert c.read() == b"multichannel payload"
        assert _owner_of_new_file(c, "made-by-user-again.txt") == user_sid

        # A failed re-authentication ends the session (MS-SMB2 3.3.5.5.3).
        wrong = _session_setup(c.conn, sid, USER, "not-the-password")
        assert wrong.status == NtStatus.STATUS_LOGON_FAILURE
        gone = _session_setup(c.conn, sid, USER, PASSWORD)
        assert gone.status == NtStatus.STATUS_USER_SESSION_DELETED
    finally:
        c.conn.disconnect(False)


# -- binding (multichannel) -----------------------------------------------------


def _preauth(conn: Connection, exchange: list[bytes]) -> bytes:
    value = bytes(64)
    for message in [*conn.preauth_integrity_hash_value, *exchange]:
        value = hashlib.sha512(value + message).digest()
    return value


def test_bind_second_connection_survives_the_first(node: GatewayNode) -> None:
    guid = uuid.uuid4()
    c = _client(node, "bind.txt", guid)
    conn2 = _connect(node, guid)
    try:
        assert c.conn.server_capabilities.has_flag(0x08)  # SMB2_GLOBAL_CAP_MULTI_CHANNEL
        sid = c.session.session_id
        _stand_in(conn2, c, c.session.signing_key)  # the bind is signed with the session key
        bound = _session_setup(conn2, sid, USER, PASSWORD, BINDING)
        assert bound.status == NtStatus.STATUS_SUCCESS
        key = icrypto.KDF_CounterMode(
            bound.session_key, b"SMBSigningKey\x00", _preauth(conn2, bound.preauth), 128
        )
        _stand_in(conn2, c, key)
        conn2.verify_signature(bound.last, sid, force=True)  # signed with the channel key

        # Both channels reach the open made through the first; replies are signed
        # with each channel's key (smbprotocol checks every one).
        assert _read_through(conn2, c) == b"multichannel payload"
        assert c.read() == b"multichannel payload"

        # Binding the same connection again is refused (the client signs with the
        # session key, which is not this channel's).
        _stand_in(conn2, c, c.session.signing_key)
        again = _session_setup(conn2, sid, USER, PASSWORD, BINDING)
        assert again.status == NtStatus.STATUS_ACCESS_DENIED
        _stand_in(conn2, c, key)

        # The first connection drops: the session and its open live on.
        c.conn.disconnect(False)
        deadline = time.monotonic() + 10
        while f"session {sid:#x} lives on" not in node.log():
            assert time.monotonic() < deadline, node.log()[-2000:]
            time.sleep(0.05)
        assert _read_through(conn2, c) == b"multichannel payload"
    finally:
        conn2.disconnect(False)
        c.conn.disconnect(False)
    assert f"bound to session {sid:#x}" in node.log()


_CMAC, _GMAC = SigningAlgorithms.AES_CMAC, SigningAlgorithms.AES_GMAC


@pytest.mark.parametrize(
    ("session_signing", "dialect", "signing", "status"),
    [
        # Another dialect than the session's (MS-SMB2 3.3.5.5).
        (_CMAC, Dialects.SMB_3_0_2, None, NtStatus.STATUS_INVALID_PARAMETER),
        # AES-GMAC on one side only: Windows refuses, with a status saying which.
        (_CMAC, Dialects.SMB_3_1_1, [_GMAC], NtStatus.STATUS_NOT_SUPPORTED),
        (_GMAC, Dialects.SMB_3_1_1, [_CMAC], REQUEST_OUT_OF_SEQUENCE),
    ],
    ids=["dialect", "gmac-here", "gmac-session"],
)
def test_bind_refused(
    node: GatewayNode, session_signing: int, dialect: int, signing: list[int] | None, status: int
) -> None:
    guid = uuid.uuid4()
    c = _client(node, "refused.txt", guid, signing=[session_signing])
    conn2 = _connect(node, guid, dialect, signing)
    try:
        sid = c.session.session_id
        stub = _stand_in(conn2, c, c.session.signing_key)
        # Signed with the session's algorithm whatever this connection negotiated.
        conn2.signing_algorithm_id = session_signing
        refused = _session_setup(conn2, sid, USER, PASSWORD, BINDING)
        assert refused.status == status
        # The refusal is signed with the session's key and algorithm (a client
        # that signs requires it).
        conn2.verify_signature(refused.last, sid, force=True)
        del conn2.session_table[stub.session_id]
        assert c.read() == b"multichannel payload"  # the session is unharmed
    finally:
        conn2.disconnect(False)
        c.close()


def test_bind_as_another_user_is_refused(node: GatewayNode) -> None:
    guid = uuid.uuid4()
    c = _client(node, "other-user.txt", guid)
    conn2 = _connect(node, guid)
    try:
        _stand_in(conn2, c, c.session.signing_key)
        refused = _session_setup(conn2, c.session.session_id, OTHER, OTHER_PASSWORD, BINDING)
        assert refused.status == NtStatus.STATUS_ACCESS_DENIED
        assert c.read() == b"multichannel payload"
    finally:
        conn2.disconnect(False)
        c.close()


def test_bind_refused_when_multichannel_is_off(tmp_path: Path) -> None:
    gw = _start(tmp_path / "gw", "--no-multichannel")
    try:
        guid = uuid.uuid4()
        c = _client(gw, "off.txt", guid)
        conn2 = _connect(gw, guid)
        try:
            assert not c.conn.server_capabilities.has_flag(0x08)
            _stand_in(conn2, c, c.session.signing_key)
            refused = _session_setup(conn2, c.session.session_id, USER, PASSWORD, BINDING)
            assert refused.status == NtStatus.STATUS_REQUEST_NOT_ACCEPTED
            conn2.verify_signature(refused.last, c.session.session_id, force=True)
            assert c.read() == b"multichannel payload"
        finally:
            conn2.disconnect(False)
            c.close()
    finally:
        assert gw.stop() == 0
    assert "Traceback" not in gw.log()
