"""What one client may take of a node (issue 16, finding 6).

Each limit is set small in the node's TOML and pushed past by a client; what
the client sees is the spec's status (or the connection closed, before
logon), and other clients go on as before.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from clients import messages as m
from clients.smb2client import SMB2Client, SmbError
from gateway.protocol.constants import (
    Command,
    CompletionFilter,
    CreateOptions,
    HeaderFlags,
    Status,
)
from gateway.protocol.header import Header
from gateway.protocol.wire import split_messages

from .conftest import PASSWORD, USER, GatewayNode, start_gateway
from .rawclient import RawClient

ALL_ONES = (0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF)
LIMITS = {
    "logon_timeout": 1.5,
    "max_connections_per_address": 4,
    "max_sessions_per_connection": 2,
    "max_opens_per_connection": 5,
    "max_opens_per_session": 4,
    "max_pending_per_connection": 3,
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayNode]:
    workdir = tmp_path_factory.mktemp("limits")
    conf = workdir / "limits.toml"
    conf.write_text("".join(f"{key} = {value}\n" for key, value in LIMITS.items()))
    gw = start_gateway(workdir / "gw", extra=["--config", str(conf)])
    yield gw
    assert gw.stop() == 0
    assert "Traceback" not in gw.log(), gw.log()[-4000:]


def _closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def test_before_logon_frames_are_small_and_time_runs_out(node: GatewayNode) -> None:
    big = socket.create_connection((node.host, node.port))
    big.sendall(struct.pack(">I", 1 << 20) + b"\xfeSMB")  # announces 1 MiB before logon
    assert _closed_by_peer(big, 5), "a stranger's 1 MiB frame was accepted for buffering"
    big.close()
    idle = socket.create_connection((node.host, node.port))
    assert not _closed_by_peer(idle, 0.5)
    assert _closed_by_peer(idle, 5), "a connection without a session was kept past the timeout"
    idle.close()
    logged_on = RawClient(node.host, node.port)
    logged_on.login(USER, PASSWORD, node.share, node.host)
    time.sleep(LIMITS["logon_timeout"] + 1)
    assert logged_on.request(Command.ECHO, struct.pack("<HH", 4, 0)).status == Status.SUCCESS
    logged_on.close()


def test_connections_per_address(node: GatewayNode) -> None:
    held = [RawClient(node.host, node.port) for _ in range(LIMITS["max_connections_per_address"])]
    for c in held:
        c.login(USER, PASSWORD, node.share, node.host)  # logged on: no timeout
    extra = socket.create_connection((node.host, node.port))
    assert _closed_by_peer(extra, 5), "a connection past the per-address limit was served"
    extra.close()
    held.pop().close()
    deadline = time.monotonic() + 5
    while True:  # the node sees the close a moment later
        again = RawClient(node.host, node.port)
        try:
            again.login(USER, PASSWORD, node.share, node.host)
            break
        except (ConnectionError, OSError):
            again.close()
            assert time.monotonic() < deadline, "no room again after a connection closed"
            time.sleep(0.1)
    for c in [*held, again]:
        c.close()
    assert "max_connections_per_address reached" in node.log()


def test_sessions_opens_and_waiting_requests_per_connection(node: GatewayNode) -> None:
    async def run() -> tuple[int, int, int, int, int]:
        client = await SMB2Client.connect(node.host, node.port, user=USER, password=PASSWORD)
        second = await client.add_session(USER, PASSWORD)  # the second of two
        with pytest.raises(SmbError) as sessions:
            await client.add_session(USER, PASSWORD)
        tree = await client.tree_connect(node.share)
        second_tree = await second.tree_connect(node.share)
        per_session = int(LIMITS["max_opens_per_session"])
        opens = [await tree.create(f"held{i}.txt") for i in range(per_session)]
        with pytest.raises(SmbError) as session_full:
            await tree.create("one-more.txt")
        # The other session still has room, up to what the connection may hold.
        per_connection = int(LIMITS["max_opens_per_connection"])
        opens += [await second_tree.create(f"second{i}.txt")
                  for i in range(per_connection - per_session)]  # fmt: skip
        with pytest.raises(SmbError) as too_many:
            await second_tree.create("one-more.txt")
        await opens.pop(0).close()
        reopened = await tree.create("one-more.txt")  # room again
        other = await SMB2Client.connect(node.host, node.port, user=USER, password=PASSWORD)
        other_tree = await other.tree_connect(node.share)
        await (await other_tree.create("elsewhere.txt")).close()  # others unaffected
        await other.close()
        for op in [*opens, reopened]:
            await op.close()
        # Waiting requests: CHANGE_NOTIFY on directories nothing changes in.
        assert client.channel is not None
        dirs = [await tree.create(f"watched{i}", options=CreateOptions.DIRECTORY_FILE,
                                  access=0x001200A9) for i in range(4)]  # fmt: skip
        body = [struct.pack("<HHIQQII", 32, 0, 4096, *d.file_id, CompletionFilter.FILE_NAME, 0)
                for d in dirs]  # fmt: skip
        waiting = [asyncio.ensure_future(client.transport.request(
            Command.CHANGE_NOTIFY, b, session=client.channel, tree_id=tree.tree_id,
            expect=(Status.SUCCESS, Status.CANCELLED, Status.INSUFFICIENT_RESOURCES),
        )) for b in body[:3]]  # fmt: skip
        await asyncio.sleep(0.5)
        fourth = await client.transport.request(
            Command.CHANGE_NOTIFY, body[3], session=client.channel, tree_id=tree.tree_id,
            expect=(Status.INSUFFICIENT_RESOURCES, Status.SUCCESS),
        )  # fmt: skip
        still = sum(not w.done() for w in waiting)
        for w in waiting:
            w.cancel()
        await client.transport.close()
        return (sessions.value.status, session_full.value.status, too_many.value.status,
                fourth.status, still)  # fmt: skip

    sessions, session_full, opens, fourth, still = asyncio.run(run())
    assert sessions == Status.INSUFFICIENT_RESOURCES
    assert session_full == Status.TOO_MANY_OPENED_FILES
    assert opens == Status.TOO_MANY_OPENED_FILES
    assert "max_opens_per_session reached" in node.log()
    assert fourth == Status.INSUFFICIENT_RESOURCES and still == 3


def test_compound_length_is_capped(node: GatewayNode) -> None:
    client = RawClient(node.host, node.port)
    client.login(USER, PASSWORD, node.share, node.host)
    client.request(Command.ECHO, struct.pack("<HH", 4, 0), credits=512)  # room for the chains

    def echoes(count: int) -> bytes:
        parts = []
        for i in range(count):
            hdr = Header(command=Command.ECHO, message_id=client.mid, credits=1, credit_charge=1,
                         session_id=client.session_id)  # fmt: skip
            client.mid += 1
            msg = hdr.pack() + struct.pack("<HH4x", 4, 0)  # padded to 8 bytes
            if i != count - 1:
                msg = msg[:20] + struct.pack("<I", len(msg)) + msg[24:]  # NextCommand
            parts.append(msg)
        return b"".join(parts)

    client.send_raw(echoes(100))
    answered = 0
    while answered < 100:
        frame = client.recv()
        assert frame is not None, "a 100-request compound was refused"
        answered += frame.count(b"\xfeSMB")
    client.send_raw(echoes(129))
    assert client.recv() is None, "a 129-request compound was answered"
    client.close()


def test_a_chain_of_large_reads_is_answered_in_bounded_parts(node: GatewayNode) -> None:
    """Each READ is paid in credits; the replies of a chain of them are not all
    held at once: past 8 MiB the replies so far go out (issue 16: a compound of
    large READs took a node from 232 to 2,486 MiB)."""
    mib = 1024 * 1024
    reads = 12
    content = bytes(range(256)) * (reads * mib // 256)
    (node.share_dir / "big-chain.bin").write_bytes(content)
    client = RawClient(node.host, node.port)
    client.login(USER, PASSWORD, node.share, node.host)
    client.request(Command.ECHO, struct.pack("<HH", 4, 0), credits=512)  # room to pay 16 a READ
    create = m.create_request("big-chain.bin", access=0x00120089, share=7, disposition=1)
    bodies = [(Command.CREATE, create, 1)]
    bodies += [(Command.READ, m.read_request(ALL_ONES, i * mib, mib), 16) for i in range(reads)]
    bodies.append((Command.CLOSE, m.close_request(ALL_ONES), 1))
    parts = []
    for i, (command, body, charge) in enumerate(bodies):
        hdr = Header(command=command, message_id=client.mid, credits=charge, credit_charge=charge,
                     session_id=client.session_id, tree_id=client.tree_id,
                     flags=HeaderFlags.RELATED_OPERATIONS if i else 0)  # fmt: skip
        client.mid += charge
        msg = hdr.pack() + body
        msg += b"\x00" * (-len(msg) % 8)
        if i != len(bodies) - 1:
            msg = msg[:20] + struct.pack("<I", len(msg)) + msg[24:]  # NextCommand
        parts.append(msg)
    client.send_raw(b"".join(parts))
    frames: list[bytes] = []
    replies: dict[int, tuple[int, bytes]] = {}  # MessageId -> status, body
    while len(replies) < len(bodies):
        frame = client.recv()
        assert frame is not None, "the chain of READs ended the connection"
        frames.append(frame)
        for hdr, body, _raw in split_messages(frame):
            replies[hdr.message_id] = (hdr.status, body)
    client.close()
    assert all(status == Status.SUCCESS for status, _ in replies.values())
    in_order = [body for _mid, (_status, body) in sorted(replies.items())]
    data = b"".join(m.parse_read_response(body) for body in in_order[1:-1])  # not CREATE, CLOSE
    assert data == content, "the READs of the chain did not return the file"
    assert len(frames) >= 2, "12 MiB of replies held back and sent as one"
    assert max(len(f) for f in frames) <= 9 * mib, [len(f) for f in frames]
