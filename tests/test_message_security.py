"""What a message must prove before a node acts on it (issue 16).

Built with the project's own codec (``clients.transport``, ``gateway.protocol``)
since no client library sends these messages on purpose.

- An encrypted message acts as the session whose key decrypted it, never as
  another session its inner header names (MS-SMB2 3.3.5.2.1.1): one key and
  another's SessionId used to read and create files as that session's user.
  The node ends the connection, as issue 16 asks; smbd 4.17 refuses the
  request instead (an unencrypted error, the connection kept) and creates
  nothing either.
- On a session that requires signing, an unsigned request is refused, a break
  acknowledgement too (3.3.5.2.4): whoever sits between client and node could
  otherwise acknowledge a break for the client, and let another client in on
  data it still caches. smbd answers the same (ACCESS_DENIED, the open waits).
- A 3.1.1 TREE_CONNECT must be signed (3.3.5.7): its signature protects the
  share flags of the answer (ENCRYPT_DATA); unsigned, the node disconnects, as
  the specification says (smbd answers ACCESS_DENIED and keeps the connection).
- Every request spends MessageIds the node granted, once (3.3.5.2.3): a
  replayed message or an id never granted ends the connection, as smbd does;
  a READ or other transfer must pay 64 KiB a credit (3.3.5.2.5), else
  INVALID_PARAMETER, as smbd answers. (Each checked against smbd 4.17 on
  this machine with these same functions.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients import messages
from clients.messages import BreakNotice
from clients.smb2client import SMB2Client, SmbError
from clients.transport import Response, SessionChannel, Transport, _Pending
from gateway.protocol.constants import Command, CreateDisposition, Dialect, OplockLevel, Status
from gateway.protocol.framing import frame
from gateway.protocol.header import Header

from .conftest import PASSWORD, USER, GatewayNode, start_gateway


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayNode]:
    gw = start_gateway(tmp_path_factory.mktemp("msgsec"))
    yield gw
    assert gw.stop() == 0
    assert "Traceback" not in gw.log(), gw.log()[-4000:]


def _send(
    transport: Transport, key: SessionChannel, session_id: int, tree_id: int, body: bytes
) -> asyncio.Future[Response]:
    """A CREATE naming ``session_id``, encrypted with ``key``'s session whatever
    session that is; the future gets the answer, or the disconnect."""
    hdr = Header(
        command=Command.CREATE,
        message_id=transport._next_mid,
        credits=1,
        session_id=session_id,
        tree_id=tree_id,
    )
    transport._next_mid += 1
    transport._credits -= 1
    raw = hdr.pack() + body
    assert key.encryptor is not None
    future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
    transport._pending[hdr.message_id] = _Pending(future, raw, key, True)
    transport._writer.write(frame(key.encryptor.encrypt(raw, key.session_id)))
    return future


async def _two_sessions(node: GatewayNode, dialect: int) -> tuple[SMB2Client, SMB2Client, int]:
    """Sessions A and B on one connection, both encrypting; B's tree id."""
    a = await SMB2Client.connect(
        node.host, node.port, user=USER, password=PASSWORD, dialects=(dialect,), encrypt=True
    )
    b = await a.add_session(USER, PASSWORD, encrypt=True)
    tree = await b.tree_connect(node.share)
    return a, b, tree.tree_id


def _create(name: str) -> bytes:
    return messages.create_request(
        name, access=0x0012019F, share=0x7, disposition=CreateDisposition.CREATE
    )


@pytest.mark.parametrize("dialect", [Dialect.SMB3_0_2, Dialect.SMB3_1_1])
def test_encrypted_message_names_only_its_own_session(node: GatewayNode, dialect: int) -> None:
    async def run() -> tuple[int, BaseException | None]:
        a, b, tree_id = await _two_sessions(node, dialect)
        assert b.channel is not None and a.channel is not None
        # The forging path works: B's key with B's SessionId creates the file.
        ok = await asyncio.wait_for(
            _send(b.transport, b.channel, b.session_id, tree_id, _create(f"b{dialect}")), 10
        )
        # A's key with B's SessionId: the node must drop the connection.
        forged = _send(a.transport, a.channel, b.session_id, tree_id, _create(f"forged{dialect}"))
        try:
            await asyncio.wait_for(forged, 10)
            error: BaseException | None = None
        except (ConnectionError, OSError) as e:
            error = e
        await a.transport.close()
        return ok.status, error

    status, error = asyncio.run(run())
    assert status == 0, f"B's own encrypted CREATE failed: {status:#x}"
    share = Path(node.share_dir)
    assert (share / f"b{dialect}").exists()
    assert isinstance(error, ConnectionError), "the node answered a message naming another session"
    assert not (share / f"forged{dialect}").exists()


def test_unsigned_break_acknowledgement_is_refused_on_a_signed_session(node: GatewayNode) -> None:
    async def run() -> tuple[int, bool, int]:
        breaks: asyncio.Queue[BreakNotice] = asyncio.Queue()
        a = await SMB2Client.connect(
            node.host, node.port, user=USER, password=PASSWORD, dialects=(Dialect.SMB3_1_1,),
            require_signing=True,
        )  # fmt: skip
        b = await SMB2Client.connect(node.host, node.port, user=USER, password=PASSWORD)
        ta, tb = await a.tree_connect(node.share), await b.tree_connect(node.share)
        held = await ta.create(
            "cached.bin", oplock=OplockLevel.BATCH, on_break=lambda _op, n: breaks.put_nowait(n)
        )
        assert held.oplock_level == OplockLevel.BATCH and a.channel is not None
        opener = asyncio.ensure_future(tb.create("cached.bin"))
        notice = await asyncio.wait_for(breaks.get(), 10)
        # The acknowledgement a man in the middle would send: unsigned.
        forged = await a.transport.request(
            Command.OPLOCK_BREAK, messages.oplock_ack_request(held.file_id, notice.new_oplock),
            session=a.channel, sign=False, expect=(Status.ACCESS_DENIED, Status.SUCCESS),
        )  # fmt: skip
        await asyncio.sleep(0.5)
        still_waiting = not opener.done()
        level = await held.acknowledge(notice)  # the client's own, signed
        opened = await asyncio.wait_for(opener, 10)
        await opened.close()
        await held.close()
        await a.close()
        await b.close()
        return forged.status, still_waiting, level

    forged, still_waiting, level = asyncio.run(run())
    assert forged == Status.ACCESS_DENIED, f"unsigned acknowledgement answered {forged:#x}"
    assert still_waiting, "the other client's open went ahead on an unsigned acknowledgement"
    assert level in (OplockLevel.NONE, OplockLevel.II)


def test_unsigned_tree_connect_in_311_disconnects(node: GatewayNode) -> None:
    async def run() -> tuple[int, BaseException | None]:
        client = await SMB2Client.connect(
            node.host, node.port, user=USER, password=PASSWORD, dialects=(Dialect.SMB3_1_1,)
        )
        assert client.channel is not None
        unc = f"\\\\{node.host}\\{node.share}"
        signed = await client.transport.request(
            Command.TREE_CONNECT, messages.tree_connect_request(unc), session=client.channel,
            sign=True,
        )  # fmt: skip
        error: BaseException | None = None
        try:
            await client.transport.request(
                Command.TREE_CONNECT, messages.tree_connect_request(unc),
                session=client.channel, sign=False,
            )  # fmt: skip
        except (ConnectionError, SmbError) as e:  # SmbError: answered, with a refusal
            error = e
        await client.close()
        return signed.status, error

    signed, error = asyncio.run(run())
    assert signed == Status.SUCCESS
    assert isinstance(error, ConnectionError), "an unsigned 3.1.1 TREE_CONNECT was answered"


def _capture(transport: Transport) -> list[bytes]:
    """Every frame the transport writes, as sent (signed or encrypted)."""
    sent: list[bytes] = []
    write = transport._writer.write

    def record(data: bytes | bytearray | memoryview) -> None:
        sent.append(bytes(data))
        write(data)

    transport._writer.write = record  # type: ignore[method-assign]
    return sent


async def _disconnected(transport: Transport, timeout: float = 10) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not transport.closed and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    return transport.closed


@pytest.mark.parametrize("encrypt", [False, True])
def test_a_replayed_request_ends_the_connection(node: GatewayNode, encrypt: bool) -> None:
    """The exact bytes of a signed (or encrypted) CREATE, sent again, used to
    create the file again; a MessageId already used now ends the connection
    (MS-SMB2 3.3.5.2.3), as smbd does."""
    name = f"replayed-{int(encrypt)}.txt"

    async def run() -> bool:
        client = await SMB2Client.connect(
            node.host, node.port, user=USER, password=PASSWORD, dialects=(Dialect.SMB3_1_1,),
            require_signing=True, encrypt=encrypt,
        )  # fmt: skip
        tree = await client.tree_connect(node.share)
        sent = _capture(client.transport)
        f = await tree.create(name, disposition=CreateDisposition.CREATE)
        captured = sent[-1]
        await f.close()
        (Path(node.share_dir) / name).unlink()
        client.transport._writer.write(captured)
        return await _disconnected(client.transport)

    assert asyncio.run(run()), "the node answered a replayed request"
    assert not (Path(node.share_dir) / name).exists(), "the replay created the file again"


def test_a_message_id_never_granted_ends_the_connection(node: GatewayNode) -> None:
    async def run() -> bool:
        client = await SMB2Client.connect(node.host, node.port, user=USER, password=PASSWORD)
        client.transport._next_mid = 10**15  # far past anything granted
        with pytest.raises((ConnectionError, SmbError)):
            await asyncio.wait_for(client.echo(), 10)
        return await _disconnected(client.transport)

    assert asyncio.run(run())


def test_a_read_needs_the_credits_it_moves(node: GatewayNode) -> None:
    """A 1 MiB READ paid with one credit is INVALID_PARAMETER (3.3.5.2.5), as smbd
    answers; paid with 16 it reads. Replies stay bounded by what the client paid."""
    (Path(node.share_dir) / "big.bin").write_bytes(b"z" * (1 << 20))

    async def run() -> tuple[int, int]:
        client = await SMB2Client.connect(
            node.host, node.port, user=USER, password=PASSWORD, dialects=(Dialect.SMB3_1_1,)
        )
        tree = await client.tree_connect(node.share)
        f = await tree.create("big.bin", disposition=CreateDisposition.OPEN)
        assert client.channel is not None
        body = messages.read_request(f.file_id, 0, 1 << 20)
        cheap = await client.transport.request(
            Command.READ, body, session=client.channel, tree_id=tree.tree_id, payload=0,
            expect=(Status.SUCCESS, Status.INVALID_PARAMETER),
        )  # fmt: skip
        paid = await client.transport.request(
            Command.READ, body, session=client.channel, tree_id=tree.tree_id, payload=1 << 20,
        )  # fmt: skip
        await f.close()
        await client.close()
        return cheap.status, len(messages.parse_read_response(paid.body))

    cheap, read = asyncio.run(run())
    assert cheap == Status.INVALID_PARAMETER
    assert read == 1 << 20
