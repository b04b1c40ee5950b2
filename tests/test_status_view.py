"""``smbgw status`` shows who holds what (issue 17, item 5; issue 13, item 5).

Real processes: two nodes on a real redis-server, and ``smbgw status`` run
as a command while a break crosses them. The holder is a pike client on
node 1 with an RWH lease (pike queues a break it was not asked to wait for,
where smbprotocol's receiver dies on one); an smbprotocol client opens the
file for writing through node 2 and waits for the break. During the wait
the command shows the user, the client addresses, the share, the path and
the lease in letters, in text and in ``--json``, and a byte-range lock in
hex. A single node on the in-process bus shows its own sessions and opens
through its admin socket.
"""

from __future__ import annotations

import array
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pike.model
import pike.smb2
import pytest
from smbprotocol.open import RequestedOplockLevel, ShareAccess

from gateway.cluster import ClusterSpec, LocalCluster

from .conftest import PASSWORD, REPO, USER, free_port, start_gateway, write_users
from .redis_fixtures import RedisProc, start_redis
from .test_cross_node import EXCL_NOW, Client, _lock

LOCK_AT = 0x10000000


def _smbgw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _status_json(*args: str) -> dict[str, Any]:
    out = _smbgw("status", *args, "--json")
    assert out.returncode == 0, out.stderr
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


class LeaseHolder:
    """A pike connection holding one file with an RWH lease, sharing it."""

    def __init__(self, host: str, port: int, name: str) -> None:
        self.conn = pike.model.Client().connect(host, port).negotiate()
        self.chan = self.conn.session_setup(f"{USER}%{PASSWORD}")
        self.tree = self.chan.tree_connect("share")
        self.handle = self.chan.create(
            self.tree, name,
            share=pike.smb2.FILE_SHARE_READ | pike.smb2.FILE_SHARE_WRITE
            | pike.smb2.FILE_SHARE_DELETE,
            oplock_level=pike.smb2.SMB2_OPLOCK_LEVEL_LEASE,
            lease_key=array.array("B", os.urandom(16)), lease_state=pike.smb2.SMB2_LEASE_RWH,
        ).result()  # fmt: skip
        assert self.handle.lease.lease_state == pike.smb2.SMB2_LEASE_RWH
        self.address = f"{self.conn.local_addr[0]}:{self.conn.local_addr[1]}"

    def lock(self, offset: int) -> None:
        self.chan.lock(
            self.handle, [(offset, 1, pike.smb2.SMB2_LOCKFLAG_EXCLUSIVE_LOCK
                           | pike.smb2.SMB2_LOCKFLAG_FAIL_IMMEDIATELY)]
        ).result()  # fmt: skip

    def ack_break(self) -> int:
        """Acknowledge the lease break the server sent; the state it offered."""
        notify = self.handle.lease.future.result(timeout=10)
        ack = self.chan.lease_break_acknowledgement(self.tree, notify)
        self.chan.connection.transceive(ack.parent.parent)
        return int(notify[0].new_lease_state)

    def close(self) -> None:
        self.chan.close(self.handle)
        self.chan.logoff()
        self.conn.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[LocalCluster, RedisProc, str]]:
    redis = start_redis(tmp_path / "redis")
    share = tmp_path / "share"
    share.mkdir()
    # A short path of its own: a Unix socket's path holds 107 bytes at most.
    run = tempfile.mkdtemp(prefix="smbgw-st-")
    spec = ClusterSpec(
        nodes=2,
        port=free_port(),
        shares=[f"share={share}"],
        users=str(write_users(tmp_path / "users")),
        bus=f"redis://127.0.0.1:{redis.port}/0",
        node_args=["--break-timeout", "20", "--runtime-dir", run],
        log_dir=tmp_path / "logs",
    )
    c = LocalCluster(spec)
    c.start()
    try:
        yield c, redis, run
    finally:
        c.stop()
        redis.stop()
        for node in c.nodes:
            assert node.log_path is not None
            assert "Traceback" not in node.log_path.read_text(), node.log_path
        # A clean stop takes the node's socket away.
        assert not [n for n in os.listdir(run) if n.endswith(".sock")], os.listdir(run)
        os.rmdir(run)


def _pending(url: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        doc = _status_json("--bus", url)
        if doc["pending_breaks"]:
            return doc
        assert time.monotonic() < deadline, "no pending break"
        time.sleep(0.1)


def test_status_during_a_cross_node_break_shows_who_holds_what(
    cluster: tuple[LocalCluster, RedisProc, str],
) -> None:
    c, _redis, run = cluster
    (h1, port), (h2, _) = c.endpoints
    url = c.bus_url
    assert url is not None
    name = f"status-{uuid.uuid4().hex[:8]}.mdb"
    a = LeaseHolder(h1, port, name)
    a.lock(LOCK_AT)
    b = Client(h2, port)
    local = b.conn.transport._sock.getsockname()
    b_address = f"{local[0]}:{local[1]}"  # 127.0.0.1: Linux's source address on loopback
    opened: list[Any] = []
    errors: list[BaseException] = []

    def open_for_writing() -> None:  # waits for the break of A's lease
        try:
            opened.append(b.open(
                name, share=ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE,
                oplock=RequestedOplockLevel.SMB2_OPLOCK_LEVEL_NONE,
            ))  # fmt: skip
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    opener = threading.Thread(target=open_for_writing, daemon=True)
    opener.start()
    try:
        doc = _pending(url)

        # --json: the break, its holder and its waiter, by share and path.
        (brk,) = doc["pending_breaks"]
        assert (brk["kind"], brk["from"], brk["to"]) == ("lease", "RWH", "RH"), brk
        assert (brk["share"], brk["path"], brk["user"]) == ("share", name, USER), brk
        assert (brk["node_id"], brk["client"]) == ("node1", a.address), brk
        (waiter,) = brk["waiting"]
        assert (waiter["node"], waiter["user"], waiter["client"]) == ("node2", USER, b_address)
        (f,) = [f for f in doc["open_files"] if f["path"] == name]
        assert f["share"] == "share"
        (held,) = f["opens"]
        assert (held["node"], held["user"], held["client"]) == ("node1", USER, a.address)
        assert (held["oplock"], held["lease"], held["breaking_to"]) == ("lease", "RWH", "RH")
        assert held["share_words"] == ["read", "write", "delete"]
        assert {"read", "write"} <= set(held["access_words"]), held
        (waiting,) = f["waiting_opens"]
        assert (waiting["node"], waiting["client"]) == ("node2", b_address)
        assert waiting["share_words"] == ["read", "write"]
        (lock,) = f["locks"]
        assert (lock["range"], lock["kind"], lock["user"]) == (f"0x{LOCK_AT:x}+0x1", "exclusive",
                                                             USER)  # fmt: skip
        sessions = {(s["node"], s["client"]): s for s in doc["sessions"]}
        assert sessions[("node1", a.address)]["user"] == USER
        assert sessions[("node1", a.address)]["dialect"] in ("3.0", "3.0.2", "3.1.1")
        assert sessions[("node2", b_address)]["signing"], sessions  # it signs
        trees = {(t["node"], t["share"], t["client"]) for t in doc["tree_connects"]}
        assert {("node1", "share", a.address), ("node2", "share", b_address)} <= trees
        nodes = {n["id"]: n for n in doc["nodes"]}
        assert {n["state"] for n in nodes.values()} == {"alive"}, nodes
        assert all(n["answered"] for n in nodes.values()), nodes
        assert doc["generation"] and doc["recovering"] is False

        # The text: the same facts, the lease in letters, the lock in hex.
        out = _smbgw("status", "--bus", url)
        assert out.returncode == 0, out.stderr
        text = out.stdout
        print(f"\n{text}")
        assert f"  share\\{name}  (file {f['file']})" in text, text
        assert re.search(
            rf"    open node1/\S+ node node1 epoch \d+  user {USER} from {re.escape(a.address)}"
            r"  access [a-z,-]*read,write[a-z,-]* \(0x[0-9a-f]+\)  share read,write,delete"
            r"  lease RWH \(breaking to RH\)", text), text  # fmt: skip
        assert re.search(
            rf"    waiting open node2/\S+ node node2  user {USER} from "
            rf"{re.escape(b_address)}  access", text), text  # fmt: skip
        assert f"lock {held['open_id']} 0x{LOCK_AT:x}+0x1 exclusive  user {USER}" in text, text
        assert re.search(
            rf"  share\\{re.escape(name)} lease \S+ on node1  user {USER} from "
            rf"{re.escape(a.address)}: RWH -> RH, [0-9.]+s left; waiting: node2/",
            text,
        ), text
        assert re.search(rf"  node1  {re.escape(a.address)}  user {USER}  SMB 3", text), text
        assert re.search(r"\ngeneration [0-9a-f]+  \(no recovery running\)\n", text), text

        # A node's admin socket gives the same cluster, no URL needed.
        mine = _status_json("--runtime-dir", run, "--node", "node2")
        assert mine["pending_breaks"][0]["client"] == a.address
        assert {s["client"] for s in mine["sessions"]} >= {a.address, b_address}
    finally:
        assert a.ack_break() == pike.smb2.SMB2_LEASE_RH
        opener.join(15)
    assert not errors, errors
    (handle,) = opened
    with pytest.raises(Exception):  # noqa: B017, PT011 - the holder's lock stays hers
        _lock(handle, LOCK_AT, 1, EXCL_NOW)
    handle.close()
    a.close()
    b.close()
    after = _status_json("--bus", url)
    assert not after["pending_breaks"] and not [
        f for f in after["open_files"] if f["path"] == name
    ], after["open_files"]


def test_a_killed_node_is_shown_dead_since_it_was_reaped(
    cluster: tuple[LocalCluster, RedisProc, str],
) -> None:
    c, _redis, _run = cluster
    url = c.bus_url
    assert url is not None
    c.nodes[1].proc.kill()
    c.nodes[1].proc.wait()
    killed = time.time()
    deadline = time.monotonic() + 15
    while True:
        nodes = {n["id"]: n for n in _status_json("--bus", url)["nodes"]}
        gone = nodes.get("node2")
        if gone is not None and gone["state"] == "dead" and gone["dead_since"]:
            break
        assert time.monotonic() < deadline, nodes
        time.sleep(0.2)
    assert killed <= gone["dead_since"] <= time.time()
    assert gone["address"].startswith("127.0.0.2:"), gone
    assert nodes["node1"]["state"] == "alive"
    text = _smbgw("status", "--bus", url).stdout
    assert re.search(r"\n  node2  127\.0\.0\.2:\d+  epoch \d+  DEAD since \d{4}-", text), text
    c.restart(1)  # so that the fixture stops it cleanly
    deadline = time.monotonic() + 15
    while {n["id"]: n for n in _status_json("--bus", url)["nodes"]}["node2"]["state"] != "alive":
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_a_single_in_process_node_shows_its_own(tmp_path: Path) -> None:
    run = tempfile.mkdtemp(prefix="smbgw-st-")
    node = start_gateway(tmp_path / "gw", extra=["--runtime-dir", run])
    try:
        (sock,) = [n for n in os.listdir(run) if n.endswith(".sock")]
        assert os.stat(os.path.join(run, sock)).st_mode & 0o777 == 0o600
        client = Client(node.host, node.port)
        name = f"solo-{uuid.uuid4().hex[:8]}.txt"
        handle = client.open(
            name, share=ShareAccess.FILE_SHARE_READ,
            oplock=RequestedOplockLevel.SMB2_OPLOCK_LEVEL_BATCH,
        )  # fmt: skip
        _lock(handle, 0x200, 0x10, EXCL_NOW)
        doc = _status_json("--runtime-dir", run)
        assert doc["bus"].startswith("in-process")
        (me,) = doc["nodes"]
        assert (me["state"], me["address"]) == ("alive", f"{node.host}:{node.port}")
        (session,) = doc["sessions"]
        assert session["user"] == USER and session["client"].startswith(f"{node.host}:")
        (f,) = doc["open_files"]
        assert (f["share"], f["path"]) == ("share", name)
        (held,) = f["opens"]
        assert (held["user"], held["client"], held["oplock"]) == (USER, session["client"], "batch")
        assert held["share_words"] == ["read"]
        assert f["locks"][0]["range"] == "0x200+0x10"
        text = _smbgw("status", "--runtime-dir", run).stdout
        assert f"  share\\{name}  (file {f['file']})" in text, text
        assert f"user {USER} from {session['client']}" in text, text
        assert "oplock batch" in text and "0x200+0x10 exclusive" in text, text
        handle.close()
        client.close()
    finally:
        assert node.stop() == 0
    assert not os.listdir(run), os.listdir(run)  # its socket goes with it
    os.rmdir(run)
    down = _smbgw("status", "--runtime-dir", run)
    assert down.returncode == 2 and len(down.stderr.strip().splitlines()) == 1, down.stderr
    assert "no nodes on this host" in down.stderr


def test_status_shows_the_generation_and_a_recovery_running() -> None:
    """The recovery's own keys (oplock_bus/recovery.py), as a node beginning
    one leaves them: the generation marked running, its start, the nodes it
    waits for and those that re-asserted what they hold."""
    from redis import Redis

    from .redis_fixtures import isolated, shared_url

    url = isolated(shared_url("redis"))
    namespace = url.rsplit("namespace=", 1)[1]
    host, port = url.split("//", 1)[1].split("?", 1)[0].split(":")
    redis = Redis(host=host, port=int(port))
    started = float(redis.time()[0]) - 1.5
    redis.set(f"{namespace}{{nodes}}:gen", "5eed0fc0ffee0001 r")
    redis.set(f"{namespace}{{nodes}}:recovery", f"{started:.6f} 5000")
    redis.sadd(f"{namespace}{{nodes}}:expect", "node1", "node2")
    redis.sadd(f"{namespace}{{nodes}}:asserted", "node1")
    doc = _status_json("--bus", url)
    assert (doc["generation"], doc["recovering"]) == ("5eed0fc0ffee0001", True)
    assert doc["recovery"]["expected"] == ["node1", "node2"]
    assert doc["recovery"]["asserted"] == ["node1"]
    assert doc["recovery"]["since"] == pytest.approx(started, abs=0.01)
    text = _smbgw("status", "--bus", url).stdout
    assert re.search(
        r"\ngeneration 5eed0fc0ffee0001  RECOVERING for [0-9.]+s \(no grants anywhere\): "
        r"waiting for node2\n", text), text  # fmt: skip

    # Over: the generation alone, no record.
    redis.set(f"{namespace}{{nodes}}:gen", "5eed0fc0ffee0001")
    redis.delete(f"{namespace}{{nodes}}:recovery")
    doc = _status_json("--bus", url)
    assert (doc["generation"], doc["recovering"], doc["recovery"]) == (
        "5eed0fc0ffee0001", False, None,
    )  # fmt: skip
    assert "generation 5eed0fc0ffee0001  (no recovery running)" in _smbgw(
        "status", "--bus", url).stdout  # fmt: skip


def test_node_states_alive_fenced_and_dead() -> None:
    """How the bus's member records read: a heartbeat older than 0.6 of the
    node's TTL means it has fenced itself; a reaped node stays, dead since
    its reaper noted; a node that says the bus cannot vouch for it is fenced."""
    from gateway.statusview import merge, render

    now = 1_800_000_000.0

    def member(node_id: str, beat: float | None, epoch: int = 3) -> dict[str, Any]:
        return {"id": node_id, "address": f"10.0.0.{node_id[-1]}:445", "epoch": epoch,
                "ttl": 5.0, "heartbeat": beat, "alive": beat is not None, "drain": None,
                "takeover": False}  # fmt: skip

    bus = {
        "bus": "redis://r:6379", "namespace": "smbgw:", "time": now, "addresses": [],
        "files": {}, "leases": {}, "pending_breaks": [], "generation": "ab12",
        "recovering": False, "recovery": None,
        "nodes": [member("n1", now - 0.4), member("n2", now - 3.5), member("n3", now - 0.2)],
    }  # fmt: skip
    views = {
        "n1": {"request": "r", "time": now, "view": {"vouched": True, "fencings": 0}},
        "n3": {"request": "r", "time": now,
               "view": {"vouched": False, "fencings": 2, "last_fenced": now - 1}},
    }  # fmt: skip
    dead = {"n4": {"epoch": 7, "since": now - 42, "address": "10.0.0.4:445", "by": "n1"}}
    doc = merge(bus, views, dead, answered={"n1", "n3"})
    states = {n["id"]: (n["state"], n["dead_since"]) for n in doc["nodes"]}
    assert states == {
        "n1": ("alive", None), "n2": ("fenced", None), "n3": ("fenced", None),
        "n4": ("dead", now - 42),
    }  # fmt: skip
    text = render(doc)
    assert "\n  n1  10.0.0.1:445  epoch 3  alive, last heartbeat 0.4s ago\n" in text, text
    assert "\n  n2  10.0.0.2:445  epoch 3  FENCED: last heartbeat 3.5s ago" in text, text
    assert re.search(r"\n  n3  10\.0\.0\.3:445  epoch 3  FENCED: .* fenced 2x, last ", text)
    assert re.search(r"\n  n4  10\.0\.0\.4:445  epoch 7  DEAD since \S+ \S+ \(42s ago\)\n", text)


def test_a_runtime_dir_others_may_write_to_is_refused(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    run = Path(tempfile.mkdtemp(prefix="smbgw-st-"))
    try:
        run.chmod(0o777)  # anybody could put a socket of theirs there
        out = _smbgw(
            "serve", "--listen", f"127.0.0.1:{free_port()}", "--share", f"share={share}",
            "--users", str(write_users(tmp_path / "users")), "--runtime-dir", str(run),
        )  # fmt: skip
        assert out.returncode == 2, out.stderr
        (line,) = out.stderr.strip().splitlines()
        assert line == (
            f"smbgw: runtime dir {run} belongs to another user or others may write to it: "
            "give the node a directory of its own (--runtime-dir)"
        ), line
        assert not os.listdir(run)
    finally:
        run.rmdir()
