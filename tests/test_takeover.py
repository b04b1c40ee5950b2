"""Addresses move (issue 12, item 6): `smbgw serve --takeover`.

A three-node cluster on 127.0.0.1-3 (one port, `node_ttl` 1 s, a takeover
command that records its calls). Node 1 is killed: a client connecting to
127.0.0.1 logs on, reads a file and is answered by the node the rendezvous
hash picks, within node_ttl + 1 s. Node 1 is started again: the taker gives the
address back (its connection accepted there is closed, the command removes
the address) and node 1 serves it, as `smbgw status` shows. A frozen node 1
(SIGSTOP) keeps its socket on this one host: the taker says once that the
address is in use, and node 1 serves on when resumed. A failing command keeps
the address untaken, in one log line. Wildcard addresses and the in-process
bus are refused with one line.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from smbprotocol.exceptions import SMBException
from smbprotocol.open import (
    CreateDisposition,
    FileAttributes,
    FilePipePrinterAccessMask,
    ImpersonationLevel,
    Open,
    ShareAccess,
)

from gateway.cli import build_parser, cluster_spec
from gateway.cluster import ClusterSpec, LocalCluster
from gateway.takeover import assignment, rendezvous
from oplock_bus.liveness import AddressView
from oplock_bus.status import collect

from .conftest import REPO, free_port, signalled_cluster, write_users
from .smbp import logged_on

NODE_TTL = 1.0

RECORDER = """#!/bin/sh
# what a real one would do: ip addr "$1" "$2"/24 dev eth0
echo "$PPID $*" >> {log}
"""
FAILING = """#!/bin/sh
echo "RTNETLINK answers: Operation not permitted" >&2
exit 1
"""


def _script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def _spec(tmp: Path, nodes: int, command: Path) -> ClusterSpec:
    share = tmp / "share"
    share.mkdir()
    (share / "hello.txt").write_bytes(b"hello")
    return ClusterSpec(
        nodes=nodes,
        port=free_port(),
        shares=[f"share={share}"],
        users=str(write_users(tmp / "users")),
        takeover=True,
        node_args=["--node-ttl", str(NODE_TTL), "--takeover-command", str(command)],
        log_dir=tmp / "logs",
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Path]]:
    tmp = tmp_path_factory.mktemp("takeover")
    calls = tmp / "commands.log"
    calls.touch()
    command = _script(tmp / "move-address", RECORDER.format(log=calls))
    with signalled_cluster(_spec(tmp, 3, command)) as c:
        yield c, calls


# -- helpers -------------------------------------------------------------------------------


def _node_of(c: LocalCluster, server_guid: uuid.UUID) -> str:
    """Which node answered: a node's ServerGuid is derived from its id (sent
    little-endian, read by smbprotocol as a big-endian UUID)."""
    guids = {
        uuid.UUID(bytes=uuid.uuid5(uuid.NAMESPACE_URL, f"smbgw:{n.node_id}").bytes_le): n.node_id
        for n in c.nodes
    }
    return guids[server_guid]




def _visit(c: LocalCluster, host: str) -> str:
    """Log on through ``host``, read hello.txt; the node that answered."""
    conn, tree = logged_on(host, c.spec.port, timeout=2)
    try:
        f = Open(tree, "hello.txt")
        f.create(
            ImpersonationLevel.Impersonation, FilePipePrinterAccessMask.GENERIC_READ,
            FileAttributes.FILE_ATTRIBUTE_NORMAL, ShareAccess.FILE_SHARE_READ,
            CreateDisposition.FILE_OPEN, 0,
        )  # fmt: skip
        assert f.read(0, 5) == b"hello"
        f.close()
        return _node_of(c, conn.server_guid)
    finally:
        conn.disconnect()


def _status(c: LocalCluster) -> dict[str, Any]:
    assert c.bus_url is not None
    return asyncio.run(collect(c.bus_url))


def _answering(c: LocalCluster, host: str) -> str | None:
    """``_visit``, or None while nobody listens there."""
    try:
        return _visit(c, host)
    except ValueError as e:  # smbprotocol's "Failed to connect"
        if "Connection refused" not in str(e):
            raise
        return None


def _served(c: LocalCluster, address: str) -> list[str]:
    rows = {a["address"]: a for a in _status(c)["addresses"]}
    return list(rows[address]["served_by"]) if address in rows else []


def _until(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout} s")
        time.sleep(0.05)


def _log(c: LocalCluster, index: int) -> str:
    path = c.nodes[index].log_path
    assert path is not None
    return path.read_text(errors="replace")


def _index(c: LocalCluster, node_id: str) -> int:
    return next(i for i, n in enumerate(c.nodes) if n.node_id == node_id)


def _smbgw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


# -- the cluster ------------------------------------------------------------------------------


def test_status_shows_which_node_serves_which_address(cluster: tuple[LocalCluster, Path]) -> None:
    c, _ = cluster
    port = c.spec.port
    assert c.bus_url is not None
    for host, node_id in (("127.0.0.1", "node1"), ("127.0.0.2", "node2"), ("127.0.0.3", "node3")):
        _until(f"{node_id} entered", lambda h=host: _served(c, f"{h}:{port}"), 5)
        assert _served(c, f"{host}:{port}") == [node_id]
    text = _smbgw("status", "--bus", c.bus_url)
    assert text.returncode == 0, text.stderr
    assert f"  127.0.0.2:{port}  served by node2\n" in text.stdout, text.stdout
    node_lines = [line for line in text.stdout.splitlines() if line.startswith("  node")]
    assert len(node_lines) == 3 and all(line.endswith("takeover") for line in node_lines)
    rows = json.loads(_smbgw("status", "--bus", c.bus_url, "--json").stdout)["addresses"]
    assert {r["address"]: r["owner"] for r in rows} == {
        f"127.0.0.{i}:{port}": f"node{i}" for i in (1, 2, 3)
    }


def test_a_dead_nodes_address_is_served_until_it_comes_back(
    cluster: tuple[LocalCluster, Path],
) -> None:
    c, calls = cluster
    port = c.spec.port
    address = f"127.0.0.1:{port}"
    taker = rendezvous(address, ["node2", "node3"])
    taker_pid = c.nodes[_index(c, taker)].proc.pid
    assert _visit(c, "127.0.0.1") == "node1"

    os.kill(c.nodes[0].proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    c.nodes[0].proc.wait()

    def reached() -> str | None:
        try:
            return _visit(c, "127.0.0.1")
        except (OSError, SMBException, ValueError):
            return None

    answered = _until("127.0.0.1 served again", reached, 10)
    took = time.monotonic() - killed
    print(f"\n127.0.0.1 served by {answered} {took:.2f} s after SIGKILL of node1")
    assert answered == taker
    assert took <= NODE_TTL + 1, took
    assert f"{taker_pid} add 127.0.0.1 {port}" in calls.read_text()
    text = _smbgw("status", "--bus", c.bus_url or "").stdout
    assert f"  {address}  served by {taker} (taken over from node1)\n" in text, text

    # A client that came in through the taken address, and node 1 back.
    held, _tree = logged_on("127.0.0.1", port, timeout=2)
    assert _node_of(c, held.server_guid) == taker
    c.restart(0)
    _until("node1 serving 127.0.0.1 again", lambda: _served(c, address) == ["node1"], 10)
    assert _visit(c, "127.0.0.1") == "node1"
    assert f"{taker_pid} remove 127.0.0.1 {port}" in calls.read_text()
    given = [line for line in _log(c, _index(c, taker)).splitlines() if "gave " in line]
    assert len(given) == 1 and "node1 is registered again" in given[0], given
    assert "closed 1 connection(s)" in given[0], given
    with pytest.raises(SMBException):
        held.echo()  # the taker closed it: the client comes back through node 1
    held.disconnect()


def test_a_frozen_owner_keeps_its_address(cluster: tuple[LocalCluster, Path]) -> None:
    """On one host a stopped process still holds its listening socket: the
    taker finds the address in use, says so once, and the resumed (fenced,
    re-registered) owner goes on serving it, once it stopped listening for as
    long as the bus could not vouch for it (gateway/busstate.py)."""
    c, calls = cluster
    port = c.spec.port
    address = f"127.0.0.1:{port}"
    taker = _index(c, rendezvous(address, ["node2", "node3"]))
    before = _log(c, taker).count(f"cannot take over {address}")
    os.kill(c.nodes[0].proc.pid, signal.SIGSTOP)
    try:
        _until(
            "the taker tried",
            lambda: _log(c, taker).count(f"cannot take over {address}") > before,
            NODE_TTL + 3,
        )
        time.sleep(1.0)  # several more ticks: still one line
    finally:
        os.kill(c.nodes[0].proc.pid, signal.SIGCONT)
    tried = [line for line in _log(c, taker).splitlines() if f"cannot take over {address}" in line]
    assert len(tried) == before + 1 and "address in use" in tried[-1], tried
    _until("node1 registered again", lambda: _served(c, address) == ["node1"], 10)
    assert _until("node1 answering", lambda: _answering(c, "127.0.0.1") == "node1", 5)
    assert "registration under epoch" in _log(c, 0)  # it lapsed: node 1 was fenced

    # The command added the address once for all those attempts, and removed
    # it when node 1 was back (at the taker's next tick).
    def mine() -> list[str]:
        pid = f"{c.nodes[taker].proc.pid} "
        return [line[len(pid) :] for line in calls.read_text().splitlines() if line.startswith(pid)]

    _until("removed", lambda: mine()[-1] == f"remove 127.0.0.1 {port}", 2)
    assert mine()[-2:] == [f"add 127.0.0.1 {port}", f"remove 127.0.0.1 {port}"], mine()


def test_a_failing_takeover_command_leaves_the_address_untaken(tmp_path: Path) -> None:
    command = _script(tmp_path / "move-address", FAILING)
    with signalled_cluster(_spec(tmp_path, 2, command)) as c:
        port = c.spec.port
        os.kill(c.nodes[0].proc.pid, signal.SIGKILL)
        c.nodes[0].proc.wait()
        needle = f"cannot take over 127.0.0.1:{port}"
        _until("the command failed", lambda: needle in _log(c, 1), NODE_TTL + 3)
        time.sleep(2.5)  # it is run again (COMMAND_RETRY), and logged no more
        failed = [line for line in _log(c, 1).splitlines() if needle in line]
        assert len(failed) == 1, failed
        assert "exited with status 1: RTNETLINK answers: Operation not permitted" in failed[0]
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        text = _smbgw("status", "--bus", c.bus_url or "").stdout
        assert f"  127.0.0.1:{port}  not served (its owner node1 is dead)\n" in text, text


# -- the choice ---------------------------------------------------------------------------------


def _view(alive: list[str], dead: list[str]) -> AddressView:
    def rec(node: str) -> dict[str, Any]:
        return {"id": node, "address": f"10.0.0.{node[1:]}:445", "takeover": True}

    return AddressView({n: rec(n) for n in alive}, {n: rec(n) for n in alive + dead})


def test_every_node_makes_the_same_choice_and_addresses_move_only_with_their_node() -> None:
    nodes = [f"n{i}" for i in range(1, 21)]
    first = assignment(_view(nodes[10:], nodes[:10]))
    assert first == assignment(_view(list(reversed(nodes[10:])), list(reversed(nodes[:10]))))
    assert set(first) == {f"10.0.0.{i}:445" for i in range(1, 11)}
    assert len(set(first.values())) >= 5  # spread over the takers, not piled on one
    # n20 dies too: only the addresses it held move, and its own joins them.
    second = assignment(_view(nodes[10:19], nodes[:10] + ["n20"]))
    assert {a: n for a, n in second.items() if a in first and first[a] != "n20"} == {
        a: n for a, n in first.items() if n != "n20"
    }
    assert "10.0.0.20:445" in second and "n20" not in second.values()


# -- refused configurations --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "bus", "words"),
    [
        ("0.0.0.0:{port}", "redis://127.0.0.1:1", "wildcard"),
        ("[::]:{port}", "redis://127.0.0.1:1", "wildcard"),
        ("localhost:{port}", "redis://127.0.0.1:1", "needs an IP address"),
        ("127.0.0.1:{port}", None, "no other node to take over from"),
        ("127.0.0.1:{port}", "memory://", "no other node to take over from"),
    ],
)
def test_takeover_refuses_what_it_cannot_move(
    tmp_path: Path, listen: str, bus: str | None, words: str
) -> None:
    users = write_users(tmp_path / "users")
    args = ["serve", "--takeover", "--listen", listen.format(port=free_port()),
            "--share", f"s={tmp_path}", "--users", str(users)]  # fmt: skip
    result = _smbgw(*args, *(["--bus", bus] if bus else []))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr


def test_takeover_from_toml(tmp_path: Path) -> None:
    users = write_users(tmp_path / "users")
    conf = tmp_path / "gw.toml"
    base = f'bus = "redis://127.0.0.1:1"\nusers = "{users}"\n[[shares]]\nname = "s"\n'
    base += f'path = "{tmp_path}"\n'
    for settings, words in (
        ('takeover = true\nlisten = "0.0.0.0:4450"\n', "wildcard"),
        ('takeover = "yes"\nlisten = "127.0.0.1:4450"\n', '"yes": expected true or false'),
        ('takeover = true\nlisten = "127.0.0.1:4450"\ntakeover_command = "/no/such"\n',
         "/no/such is not an executable"),
    ):  # fmt: skip
        conf.write_text(settings + base)
        result = _smbgw("serve", "--config", str(conf))
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], result.stderr


def test_cluster_up_passes_takeover_to_its_nodes(tmp_path: Path) -> None:
    users = str(write_users(tmp_path / "users"))
    up = ["cluster", "up", "--share", f"s={tmp_path}", "--users", users, "--takeover"]
    spec = cluster_spec(build_parser().parse_args(up))
    assert spec.takeover
    refused = _smbgw(*up, "--uncoordinated")
    assert refused.returncode == 2 and "--takeover" in refused.stderr, refused.stderr
