"""A channel bound through one node to a session of another (gateway/smb/relay.py).

Two nodes on a test redis-server (node 1 on 127.0.0.1, node 2 on 127.0.0.2).
The client makes its session through node 2, opens a second connection to
node 1 and binds it to that session, as smbtorture's
smb2.replay.dhv2-pending2*/3* do; node 1 relays the connection to node 2.
smbprotocol carries the connections, impacket's NTLM the tokens (as in
tests/test_sessions.py), so the client derives the channel's key itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from impacket import crypto as icrypto
from smbprotocol.connection import Connection
from smbprotocol.header import NtStatus
from smbprotocol.open import SMB2WriteRequest

from gateway import connpass
from gateway.cluster import LocalCluster
from gateway.smb import relay

from .conftest import PASSWORD, USER, local_spec
from .test_sessions import (
    BINDING,
    Client,
    _client,
    _connect,
    _preauth,
    _read_through,
    _session_setup,
    _stand_in,
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    spec = local_spec(tmp_path_factory.mktemp("bind"), node_args=["--node-ttl", "10"])
    c = LocalCluster(spec)
    c.start()
    yield c
    c.stop()
    for node in c.nodes:
        assert node.proc.returncode == 0, node.log_path
        assert node.log_path is not None and "Traceback" not in node.log_path.read_text()


def _log(cluster: LocalCluster, index: int) -> str:
    path = cluster.nodes[index].log_path
    assert path is not None
    return path.read_text(errors="replace")


def _wait_for(cluster: LocalCluster, index: int, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in _log(cluster, index):
        assert time.monotonic() < deadline, f"{text!r} not in:\n{_log(cluster, index)[-3000:]}"
        time.sleep(0.05)


def _endpoint(cluster: LocalCluster, index: int) -> SimpleNamespace:
    host, port = cluster.endpoints[index]
    return SimpleNamespace(host=host, port=port)


def _relay_sockets(cluster: LocalCluster) -> int:
    """Node 1's established TCP connections to node 2's SMB port: its relays."""
    pid = cluster.nodes[0].proc.pid
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    port = cluster.endpoints[1][1]
    count = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            remote, state, inode = fields[2], fields[3], fields[9]
            if state == "01" and remote == f"0200007F:{port:04X}" and inode in inodes:
                count += 1
    return count


def _bind(conn: Connection, c: Client) -> bytes:
    """Bind ``conn`` to ``c``'s session; the channel's signing key."""
    sid = c.session.session_id
    _stand_in(conn, c, c.session.signing_key)  # the bind is signed with the session key
    bound = _session_setup(conn, sid, USER, PASSWORD, BINDING)
    assert bound.status == NtStatus.STATUS_SUCCESS
    key: bytes = icrypto.KDF_CounterMode(
        bound.session_key, b"SMBSigningKey\x00", _preauth(conn, bound.preauth), 128
    )
    _stand_in(conn, c, key)
    conn.verify_signature(bound.last, sid, force=True)  # signed with the channel's key
    return key


def _write_through(conn: Connection, c: Client, data: bytes) -> None:
    write = SMB2WriteRequest()
    write["offset"] = 0
    write["file_id"] = c.open.file_id
    write["buffer"] = data
    sent = conn.send(write, sid=c.session.session_id, tid=c.tree.tree_connect_id)
    assert conn.receive(sent)["status"].get_value() == NtStatus.STATUS_SUCCESS


def test_bind_through_another_node(cluster: LocalCluster) -> None:
    node1, node2 = _endpoint(cluster, 0), _endpoint(cluster, 1)
    guid = uuid.uuid4()
    c = _client(node2, "relayed.txt", guid)  # session, tree and open on node 2
    conn = _connect(node1, guid)
    sid = c.session.session_id
    try:
        _bind(conn, c)
        assert _relay_sockets(cluster) == 1
        # Signed requests on the bound channel reach the open made on node 2,
        # and smbprotocol checks each reply's signature with the channel's key.
        assert _read_through(conn, c) == b"multichannel payload"
        _write_through(conn, c, b"written through node 1")
        assert c.read(22) == b"written through node 1"
        assert _read_through(conn, c)[:22] == b"written through node 1"
    finally:
        conn.disconnect(False)
        c.conn.disconnect(False)
    _wait_for(cluster, 0, "ended (")
    assert f"relayed to node node2 for session {sid:#x}" in _log(cluster, 0)
    assert f"adopted from node node1 for session {sid:#x}" in _log(cluster, 1)
    assert f"bound to session {sid:#x}" in _log(cluster, 1)
    assert _relay_sockets(cluster) == 0


def test_bind_on_a_connection_with_a_session_of_its_own(cluster: LocalCluster) -> None:
    """smb2.replay.replay3: the second connection to node 1 has its own session
    there when it binds the one of node 2; node 1 forwards that session's
    requests (and their replies) and serves its own."""
    node1, node2 = _endpoint(cluster, 0), _endpoint(cluster, 1)
    guid = uuid.uuid4()
    c = _client(node2, "forwarded.txt", guid)
    own = _client(node1, "own.txt", guid)  # a connection, session and open on node 1
    sid = c.session.session_id
    try:
        _bind(own.conn, c)
        assert _relay_sockets(cluster) == 1
        assert f"session {sid:#x} forwarded to its node" in _log(cluster, 0)
        for _ in range(3):  # the two sessions' requests interleave on one connection
            assert _read_through(own.conn, c) == b"multichannel payload"
            assert own.read() == b"multichannel payload"
        _write_through(own.conn, c, b"forwarded write")
        assert c.read(15) == b"forwarded write"
    finally:
        own.conn.disconnect(False)
        c.conn.disconnect(False)
    _wait_for(cluster, 0, f"forward of session {sid:#x} ended")
    assert _relay_sockets(cluster) == 0


def test_relay_ends_when_the_client_closes(cluster: LocalCluster) -> None:
    node1, node2 = _endpoint(cluster, 0), _endpoint(cluster, 1)
    guid = uuid.uuid4()
    c = _client(node2, "closing.txt", guid)
    try:
        before = _log(cluster, 0).count("ended (")
        conn = _connect(node1, guid)
        _bind(conn, c)
        assert _relay_sockets(cluster) == 1
        conn.disconnect(False)  # the client's socket closes; the session lives on node 2
        deadline = time.monotonic() + 10
        while _log(cluster, 0).count("ended (") == before or _relay_sockets(cluster):
            assert time.monotonic() < deadline, _log(cluster, 0)[-3000:]
            time.sleep(0.05)
        assert c.read() == b"multichannel payload"  # the first channel goes on
    finally:
        c.conn.disconnect(False)


def _handover(cluster: LocalCluster, key: bytes, session: int) -> bytes:
    state = {"from": "node1", "to": "node2", "session": session, "time": time.time(),
             "nonce": os.urandom(16).hex(), "peer": "10.9.9.9:1", "local": "127.0.0.2"}  # fmt: skip
    return relay.seal(key, state)


def _answer(host: str, port: int, data: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(data)
        got = b""
        while chunk := s.recv(4096):
            got += chunk
        return got


def test_forged_handover_is_refused(cluster: LocalCluster) -> None:
    node2 = _endpoint(cluster, 1)
    guid = uuid.uuid4()
    c = _client(node2, "forged.txt", guid)
    adopted = _log(cluster, 1).count("adopted from node")
    try:
        forged = _handover(cluster, os.urandom(32), c.session.session_id)
        assert _answer(node2.host, node2.port, forged) == b""  # closed, nothing adopted
        _wait_for(cluster, 1, "hand-over refused: bad signature")
        # Its bytes altered after signing: refused too.
        tampered = bytearray(forged)
        tampered[-2] ^= 1
        assert _answer(node2.host, node2.port, bytes(tampered)) == b""
        assert _log(cluster, 1).count("hand-over refused: bad signature") == 2
        assert _log(cluster, 1).count("adopted from node") == adopted
        assert c.read() == b"multichannel payload"  # the node serves on
    finally:
        c.conn.disconnect(False)


def test_bind_to_unknown_or_unreachable_node_is_refused(cluster: LocalCluster) -> None:
    node1, node2 = _endpoint(cluster, 0), _endpoint(cluster, 1)
    guid = uuid.uuid4()
    c = _client(node2, "stopped.txt", guid)
    conn = _connect(node1, guid)
    proc = cluster.nodes[1].proc
    try:
        _stand_in(conn, c, c.session.signing_key)
        # A session id whose tag names no node: refused at once, as before.
        tag = relay.tag_of(c.session.session_id)
        stranger = ((tag ^ 1) << (63 - relay.TAG_BITS)) | 12345
        conn.session_table[stranger] = conn.session_table[c.session.session_id]
        lone = _session_setup(conn, stranger, USER, PASSWORD, BINDING)
        assert lone.status == NtStatus.STATUS_USER_SESSION_DELETED
        # Node 2 frozen: its kernel accepts, nobody answers. The bind is refused
        # after the relay's timeout instead of hanging.
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            frozen = _session_setup(conn, c.session.session_id, USER, PASSWORD, BINDING)
            took = time.monotonic() - started
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        assert frozen.status == NtStatus.STATUS_USER_SESSION_DELETED
        assert took < relay.CONNECT_TIMEOUT + 2
        assert c.read() == b"multichannel payload"
    finally:
        conn.disconnect(False)
        c.conn.disconnect(False)


def test_bind_through_another_node_with_workers(tmp_path: Path) -> None:
    """Two workers per node: the hand-over goes to the worker holding the session."""
    spec = local_spec(tmp_path, node_args=["--node-ttl", "10"])
    spec.workers = 2
    c2 = LocalCluster(spec)
    c2.start()
    try:
        for index in (0, 1):  # every worker serving, so that each client meets its own
            _wait_for(c2, index, "with 2 workers")
        node1, node2 = _endpoint(c2, 0), _endpoint(c2, 1)
        # Two clients per worker of node 2 (smbprotocol sends UUID.bytes as ClientGuid).
        guids = [uuid.uuid4() for _ in range(64)]
        chosen = [g for g in guids if connpass.owner(g.bytes, 2) == 1][:2]
        chosen += [g for g in guids if connpass.owner(g.bytes, 2) == 2][:2]
        for n, guid in enumerate(chosen):
            c = _client(node2, f"w{n}.txt", guid)
            conn = _connect(node1, guid)
            try:
                _bind(conn, c)
                assert _read_through(conn, c) == b"multichannel payload"
            finally:
                conn.disconnect(False)
                c.conn.disconnect(False)
    finally:
        c2.stop()
    logs = "".join(n.log_path.read_text() for n in c2.nodes if n.log_path)
    assert logs.count("adopted from node") == 4
    lines = [line for line in logs.splitlines() if "adopted from node" in line]
    by_worker = [line.split("smbgw.relay")[1][:4] for line in lines]
    assert sorted(by_worker) == ["[w1]", "[w1]", "[w2]", "[w2]"]
    assert "hand-over refused" not in logs and "Traceback" not in logs


def test_session_ids_name_their_node() -> None:
    ids = {relay.new_session_id("node2") for _ in range(100)}
    assert len(ids) == 100
    assert {relay.tag_of(i) for i in ids} == {relay.node_tag("node2")}
    assert all(0 < i < 1 << 63 for i in ids)  # the sign bit clear, as Windows' ids
    assert relay.node_tag("node1") != relay.node_tag("node2")  # the cluster's nodes above
