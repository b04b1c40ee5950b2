"""The SMB1 multi-protocol NEGOTIATE that opens SMB2 (MS-SMB2 3.3.5.3.1, 3.3.5.3.2),
for each mix of dialect strings a client may offer, against a running node.

What each combination gets was measured against Samba's smbd 4.17 (server min
protocol SMB2_02, host msdfs = no, so that it too has no DFS capability):

* "SMB 2.???" offered: an SMB2 NEGOTIATE response for 0x02FF with LEASING and
  LARGE_MTU; the client must follow with an SMB2 NEGOTIATE (MessageId 1);
* "SMB 2.002" without "SMB 2.???": 2.0.2, capabilities 0, and negotiation is
  over: SESSION_SETUP follows, a later NEGOTIATE ends the connection;
* neither: an SMB1 NEGOTIATE response with DialectIndex 0xFFFF ("no dialect"),
  then the connection is closed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from clients import messages
from gateway.protocol.constants import Command, CreateDisposition
from gateway.protocol.header import Header

from .conftest import PASSWORD, USER, GatewayNode, smbclient
from .rawclient import NEGOTIATE_21, RawClient

_NEG_RESP = struct.Struct("<HHHH16sI")  # StructureSize .. Capabilities
LEASING_LARGE_MTU = 0x02 | 0x04


@pytest.fixture
def client(module_gateway: GatewayNode) -> Iterator[RawClient]:
    c = RawClient(module_gateway.host, module_gateway.port)
    yield c
    c.close()


def _smb2_negotiate_reply(frame: bytes | None) -> tuple[int, int, int]:
    """(status, dialect, capabilities) of an SMB2 NEGOTIATE response."""
    assert frame is not None, "the node hung up instead of answering"
    assert frame[:4] == b"\xfeSMB", f"not an SMB2 reply: {frame[:4]!r}"
    hdr = Header.unpack(frame)
    assert hdr.command == Command.NEGOTIATE and hdr.message_id == 0
    _size, _mode, dialect, _n, _guid, caps = _NEG_RESP.unpack_from(frame, 64)
    return hdr.status, dialect, caps


def _hung_up(c: RawClient) -> bool:
    try:
        return c.recv() is None
    except ConnectionResetError:
        return True


@pytest.mark.parametrize(
    "dialects",
    [
        ["SMB 2.???"],
        ["NT LM 0.12", "SMB 2.???"],
        ["NT LM 0.12", "SMB 2.002", "SMB 2.???"],
        ["SMB 2.???", "SMB 2.002"],
    ],
)
def test_wildcard_asks_for_an_smb2_negotiate(
    client: RawClient, module_gateway: GatewayNode, dialects: list[str]
) -> None:
    status, dialect, caps = _smb2_negotiate_reply(client.smb1_negotiate(dialects))
    assert (status, dialect, caps) == (0, 0x02FF, LEASING_LARGE_MTU)
    # Not negotiated yet: the SMB2 NEGOTIATE (MessageId 1) chooses the dialect.
    reply = client.request(Command.NEGOTIATE, NEGOTIATE_21)
    assert reply.status == 0
    assert struct.unpack_from("<H", client.last_body, 4)[0] == 0x0210
    client.login(USER, PASSWORD, module_gateway.share, module_gateway.host, negotiate=False)
    assert client.tree_id != 0


@pytest.mark.parametrize("dialects", [["NT LM 0.12", "SMB 2.002"], ["SMB 2.002"]])
def test_smb2002_alone_completes_negotiation(
    client: RawClient, module_gateway: GatewayNode, dialects: list[str]
) -> None:
    """pysmb's and Vista's offer: 2.0.2 is chosen and SESSION_SETUP is accepted."""
    status, dialect, caps = _smb2_negotiate_reply(client.smb1_negotiate(dialects))
    assert (status, dialect, caps) == (0, 0x0202, 0)
    client.login(USER, PASSWORD, module_gateway.share, module_gateway.host, negotiate=False)
    assert client.tree_id != 0
    # A file can be made and read back on the 2.0.2 connection.
    create = messages.create_request(
        "smb1neg.txt", access=0x0012019F, share=7, disposition=CreateDisposition.OVERWRITE_IF
    )
    reply = client.request(Command.CREATE, create)
    assert reply.status == 0
    assert (module_gateway.share_dir / "smb1neg.txt").exists()


def test_negotiate_after_smb2002_disconnects(client: RawClient) -> None:
    """MS-SMB2 3.3.5.4: NegotiateDialect 0x0202 is final; smbd hangs up too."""
    _smb2_negotiate_reply(client.smb1_negotiate(["NT LM 0.12", "SMB 2.002"]))
    client.send(Command.NEGOTIATE, NEGOTIATE_21)
    assert _hung_up(client)


def test_second_smb1_negotiate_disconnects(client: RawClient) -> None:
    _smb2_negotiate_reply(client.smb1_negotiate(["NT LM 0.12", "SMB 2.???"]))
    assert client.smb1_negotiate(["NT LM 0.12", "SMB 2.???"]) is None


@pytest.mark.parametrize(
    "dialects",
    [["NT LM 0.12"], ["PC NETWORK PROGRAM 1.0", "LANMAN1.0", "LM1.2X002", "NT LM 0.12"]],
)
def test_smb1_only_gets_no_dialect_then_hangup(client: RawClient, dialects: list[str]) -> None:
    frame = client.smb1_negotiate(dialects, pid=0x1234, mid=7)
    assert frame is not None, "smbd answers before hanging up"
    assert frame[:4] == b"\xffSMB" and frame[4] == 0x72
    status, flags = struct.unpack_from("<IB", frame, 5)
    assert status == 0 and flags & 0x80  # a reply
    pid, _uid, mid = struct.unpack_from("<HHH", frame, 26)
    assert (pid, mid) == (0x1234, 7)  # echoed, so the client can match it
    word_count, dialect_index, byte_count = struct.unpack_from("<BHH", frame, 32)
    assert (word_count, dialect_index, byte_count) == (1, 0xFFFF, 0)
    assert _hung_up(client)


def test_empty_dialect_list_is_refused(client: RawClient) -> None:
    """No dialect at all: refused like an SMB1-only offer (smbd answers an SMB1
    invalid-parameter error instead, and keeps the connection open)."""
    frame = client.smb1_negotiate([])
    assert frame is not None and frame[:4] == b"\xffSMB"
    assert _hung_up(client)


def test_smbclient_through_the_multi_protocol_negotiate(module_gateway: GatewayNode) -> None:
    """Samba's client allowed NT1 opens with the SMB1 NEGOTIATE ("SMB 2.???")."""
    done = smbclient(module_gateway, "ls", "--option=client min protocol=NT1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "blocks available" in done.stdout


def test_smbclient_smb1_only_is_told_no_protocol(module_gateway: GatewayNode) -> None:
    """The words smbclient prints against smbd too."""
    done = smbclient(
        module_gateway, "ls",
        "--option=client min protocol=NT1", "--option=client max protocol=NT1",
    )  # fmt: skip
    assert done.returncode != 0
    assert "No compatible protocol selected by server" in done.stdout + done.stderr
