"""``smbgw serve --workers 2`` (gateway/workers.py): one node of two processes
on one address (SO_REUSEPORT), each its own node on a private Redis bus.

A connection is served by the worker its ClientGuid names (gateway/connpass.py),
so a test that needs a client on each worker opens connections until it has
them, and asks ``smbgw status`` which worker serves each (by client port).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from smbprotocol.open import ShareAccess

from bench.persistent import (
    STATUS_OBJECT_NAME_NOT_FOUND,
    Client,
    durable_open,
    open_file,
    reclaim,
    status_of,
    until_reclaimed,
)
from bench.samba import run_torture
from clients.smb2client import SMB2Client

from .conftest import (
    PASSWORD,
    REPO,
    USER,
    GatewayNode,
    free_port,
    local_spec,
    need,
    signalled_cluster,
    write_users,
)

STATUS_SHARING_VIOLATION = 0xC0000043
BATCH = 0x09
NODE_TTL = 1.0
T = TypeVar("T")


@dataclass
class WorkerNode:
    port: int
    share: Path
    users: Path
    runtime: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    node_id: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self) -> dict[str, object]:
        out = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "status", "--json",
             "--runtime-dir", str(self.runtime)],
            capture_output=True, text=True, timeout=20, cwd=REPO,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        doc: dict[str, object] = json.loads(out.stdout)
        return doc

    def workers_of(self, client_ports: list[int]) -> dict[int, str]:
        """client port -> the id of the worker whose session serves it."""
        sessions = self.status()["sessions"]
        assert isinstance(sessions, list)
        out: dict[int, str] = {}
        for s in sessions:
            for client in s["clients"]:
                port = int(client.rpartition(":")[2])
                if port in client_ports:
                    out[port] = s["node"]
        return out

    def children(self) -> list[int]:
        found = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True
        )
        return [int(p) for p in found.stdout.split()]


def _wait_for(what: str, check: Callable[[], T | None], timeout: float = 30) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def start_workers(tmp: Path, workers: int = 2) -> WorkerNode:
    share, runtime = tmp / "share", tmp / "run"
    share.mkdir(parents=True)
    runtime.mkdir()
    users = write_users(tmp / "users")
    port = free_port()
    node_id = f"wk{uuid.uuid4().hex[:6]}"
    log_path = tmp / "node.log"
    cmd = [
        sys.executable, "-m", "gateway.cli", "serve", "--listen", f"127.0.0.1:{port}",
        "--share", f"share={share}", "--users", str(users), "--node-id", node_id,
        "--workers", str(workers), "--node-ttl", str(NODE_TTL), "--break-timeout", "5",
        "--runtime-dir", str(runtime),
    ]  # fmt: skip
    with log_path.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    node = WorkerNode(port, share, users, runtime, log_path, proc, node_id)
    try:
        _wait_for(
            "the node to serve",
            lambda: proc.poll() is not None or f"with {workers} workers" in node.log(),
        )
        assert proc.poll() is None, node.log()
    except BaseException:
        proc.kill()
        raise
    return node


def stop_workers(node: WorkerNode) -> int:
    """SIGTERM to the parent, as conftest's nodes are stopped."""
    return GatewayNode(
        "127.0.0.1", node.port, node.share, node.users, node.log_path, node.proc
    ).stop()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerNode]:
    n = start_workers(tmp_path_factory.mktemp("workers"))
    yield n
    assert stop_workers(n) == 0, n.log()[-4000:]
    assert "Traceback" not in n.log(), n.log()[-4000:]


def one_on_each_worker(node: WorkerNode) -> dict[str, Client]:
    """smbprotocol clients, one served by each worker: connect (each with a
    new ClientGuid, which names the worker) until both have one, close the others."""
    clients: dict[int, Client] = {}
    picked: dict[str, Client] = {}
    for _ in range(24):
        c = Client("127.0.0.1", node.port, uuid.uuid4())
        clients[c.conn.transport._sock.getsockname()[1]] = c
        if len(clients) >= 2:
            by_worker = node.workers_of(list(clients))
            picked = {w: clients[p] for p, w in sorted(by_worker.items())}
            if len(picked) >= 2:
                break
    keep = {id(c) for c in picked.values()}
    for c in clients.values():
        if id(c) not in keep:
            c.close()
    assert len(picked) == 2, f"24 connections, all on one worker: {picked}"
    return picked


def test_smbclient_and_smbprotocol_are_served(node: WorkerNode, tmp_path: Path) -> None:
    local = tmp_path / "up.txt"
    local.write_text("through smbclient\n")
    env = dict(os.environ, HOME=str(tmp_path))
    cmd = [need("smbclient"), "//127.0.0.1/share", "-p", str(node.port), "-U",
           f"{USER}%{PASSWORD}", "-c", f"put {local} up.txt; ls"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "up.txt" in done.stdout
    assert (node.share / "up.txt").read_text() == "through smbclient\n"
    c = Client("127.0.0.1", node.port, uuid.uuid4())
    f = open_file(c, "up.txt", [], ShareAccess.FILE_SHARE_READ)
    assert f.read(0, 17) == b"through smbclient"
    f.close()
    c.close()


def test_a_share_mode_holds_across_workers(node: WorkerNode) -> None:
    (w1, a), (w2, b) = sorted(one_on_each_worker(node).items())
    assert w1 != w2
    fa = open_file(a, "exclusive.dat", [], 0)
    assert status_of(lambda: open_file(b, "exclusive.dat", [], ShareAccess.FILE_SHARE_READ)) == (
        STATUS_SHARING_VIOLATION
    )
    fa.close()
    open_file(b, "exclusive.dat", [], ShareAccess.FILE_SHARE_READ).close()
    a.close()
    b.close()


def _local_port(client: SMB2Client) -> int:
    return int(client.transport._writer.get_extra_info("sockname")[1])


def test_an_open_through_one_worker_breaks_a_batch_oplock_held_through_the_other(
    node: WorkerNode,
) -> None:
    async def body() -> None:
        clients: dict[int, SMB2Client] = {}
        by_worker: dict[str, int] = {}
        for _ in range(24):
            c = await SMB2Client.connect("127.0.0.1", node.port, user=USER, password=PASSWORD)
            clients[_local_port(c)] = c
            if len(clients) >= 2:
                by_worker = {w: p for p, w in node.workers_of(list(clients)).items()}
                if len(by_worker) >= 2:
                    break
        assert len(by_worker) == 2, "24 connections, all on one worker"
        (_, pa), (_, pb) = sorted(by_worker.items())
        holder, opener = clients.pop(pa), clients.pop(pb)
        for c in clients.values():
            await c.close()
        broken, acked = asyncio.Event(), asyncio.Event()
        levels: list[int] = []

        async def on_break(op: object, notice: object) -> None:
            broken.set()
            levels.append(await op.acknowledge(notice))  # type: ignore[attr-defined]
            acked.set()

        tree_a = await holder.tree_connect("share")
        held = await tree_a.create("batch.mdb", oplock=BATCH, on_break=on_break)
        assert held.oplock_level == BATCH
        tree_b = await opener.tree_connect("share")
        started = time.monotonic()
        other = await tree_b.create("batch.mdb")  # waits for the holder's acknowledgement
        assert broken.is_set()
        assert time.monotonic() - started < 4  # acknowledged, not the 5 s break timeout
        await asyncio.wait_for(acked.wait(), 5)
        assert levels and levels[0] < BATCH  # lowered: Level II or none
        await other.close()
        await held.close()
        await holder.close()
        await opener.close()

    asyncio.run(body())


def test_a_clients_connections_meet_at_one_worker(node: WorkerNode) -> None:
    """The kernel spreads connections; those of one ClientGuid are passed to
    one worker (gateway/connpass.py), where its sessions can bind."""
    guid = uuid.uuid4()
    same = [Client("127.0.0.1", node.port, guid) for _ in range(10)]
    ports = [c.conn.transport._sock.getsockname()[1] for c in same]
    served = node.workers_of(ports)
    assert len(served) == 10 and len(set(served.values())) == 1, served
    for c in same:
        c.close()
    others = [Client("127.0.0.1", node.port, uuid.uuid4()) for _ in range(10)]
    served = node.workers_of([c.conn.transport._sock.getsockname()[1] for c in others])
    assert len(set(served.values())) == 2, served  # other clients, other workers
    for c in others:
        c.close()


def test_a_second_channel_binds_whichever_worker_accepted_it(
    node: WorkerNode, tmp_path: Path
) -> None:
    """smbtorture's smb2.session.bind1 binds its session to a second
    connection (same ClientGuid). Each run has a new ClientGuid, and the
    kernel would put the second connection on the other worker half the time."""
    need("smbtorture")
    for run in range(4):
        done = run_torture(["127.0.0.1"], "smb2.session.bind1", node.port, tmp_path / str(run))
        assert done.results == {"smb2.session.bind1": "success"}, done.log.read_text()[-2000:]
    assert "USER_SESSION_DELETED" not in node.log()


def _worker_of_guid(node: WorkerNode, guid: uuid.UUID) -> tuple[Client, str]:
    c = Client("127.0.0.1", node.port, guid)
    port = c.conn.transport._sock.getsockname()[1]
    return c, node.workers_of([port])[port]


def test_a_durable_handle_is_reclaimed_after_its_worker_was_killed(node: WorkerNode) -> None:
    """Its worker dies: the handle waits on the bus, disconnected, and the
    client reclaims it through the worker started in its place."""
    guid, lease_key, create_guid = uuid.uuid4(), os.urandom(16), uuid.uuid4()
    a, holder = _worker_of_guid(node, guid)
    f, _, _ = durable_open(a, "durable.doc", lease_key, create_guid, persistent=False)
    f.write(b"draft", 0)
    pid = _pid_of(node, holder)
    os.kill(pid, signal.SIGKILL)
    a.close()
    _wait_for("its replacement", lambda: f"worker {holder} (pid {pid}) exited" in node.log())
    # NOT_FOUND until the bus has declared the dead worker dead (NODE_TTL).
    again, (g, _, _), _ = until_reclaimed(
        "127.0.0.1", node.port, guid, "durable.doc", f, lease_key, create_guid,
        time.monotonic() + 10, persistent=False,
    )  # fmt: skip
    assert g.read(0, 5) == b"draft"
    g.close()
    # Taken: nobody can reclaim it a second time.
    y = Client("127.0.0.1", node.port, guid)
    assert status_of(lambda: reclaim(y, "durable.doc", f, lease_key, create_guid, False)) == (
        STATUS_OBJECT_NAME_NOT_FOUND
    )
    y.close()
    again.close()


def _pid_of(node: WorkerNode, worker: str) -> int:
    return next(p for p in node.children() if ["--node-id", worker] in _pairs(_cmdline(p)))


def test_a_killed_worker_is_replaced_and_the_other_serves_on(node: WorkerNode) -> None:
    (w1, a), (w2, b) = sorted(one_on_each_worker(node).items())
    share_rw = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE
    fb = open_file(b, "survivor.txt", [], share_rw)
    fb.write(b"before", 0)
    pid = _pid_of(node, w1)
    deaths = node.log().count("exited with status")
    os.kill(pid, signal.SIGKILL)
    line = _wait_for(
        "the parent to report the death",
        lambda: re.search(rf"worker {re.escape(w1)} \(pid {pid}\) exited with status SIGKILL.*",
                          node.log()),
    )  # fmt: skip
    replacement = re.sub(r"(-w\d+)(\.(\d+))?$", lambda m: f"{m[1]}.{int(m[3] or 0) + 1}", w1)
    assert replacement in line.group(0)
    fb.write(b"after", 7)  # the other worker's client keeps going
    assert fb.read(0, 12) == b"before\0after"
    fb.close()
    b.close()
    a.close()
    c = Client("127.0.0.1", node.port, uuid.uuid4())  # a new connection succeeds at once
    c.close()
    _wait_for("the replacement to serve", lambda: f"node {replacement} listening on" in node.log())
    # The dead one leaves the bus once its heartbeat lapses (NODE_TTL).
    _wait_for("the bus to see the replacement, not the dead worker",
              lambda: _alive(node) == {replacement, w2})  # fmt: skip
    assert node.log().count("exited with status") == deaths + 1


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def _pairs(args: list[str]) -> list[list[str]]:
    return [args[i : i + 2] for i in range(len(args) - 1)]


def _alive(node: WorkerNode) -> set[str]:
    nodes = node.status()["nodes"]
    assert isinstance(nodes, list)
    return {n["id"] for n in nodes if n["alive"]}


def test_sigterm_to_the_parent_leaves_no_process_behind(tmp_path: Path) -> None:
    n = start_workers(tmp_path)
    children = n.children()
    assert len(children) == 3, children  # two workers and the private redis-server
    assert stop_workers(n) == 0, n.log()[-4000:]
    pids = ",".join(map(str, children))
    left = subprocess.run(["ps", "-o", "pid=,args=", "-p", pids], capture_output=True, text=True)
    assert left.stdout.strip() == "", left.stdout
    assert "Traceback" not in n.log()
    assert not list(n.runtime.iterdir())  # the admin sockets went with the workers


def test_cluster_up_gives_every_node_its_workers(tmp_path: Path) -> None:
    """`smbgw cluster up --workers 2`: two nodes of two workers, one bus."""
    spec = local_spec(tmp_path, nodes=2)
    spec.workers = 2
    with signalled_cluster(spec) as c:
        assert c.bus_url is not None
        out = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "status", "--json", "--bus", c.bus_url],
            capture_output=True, text=True, timeout=20, cwd=REPO,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        alive = {n["id"] for n in json.loads(out.stdout)["nodes"] if n["alive"]}
        assert alive == {"node1-w1", "node1-w2", "node2-w1", "node2-w2"}
        (h1, port), (h2, _) = c.endpoints
        a, b = Client(h1, port, uuid.uuid4()), Client(h2, port, uuid.uuid4())
        fa = open_file(a, "one.dat", [], 0)
        assert status_of(lambda: open_file(b, "one.dat", [], 0)) == STATUS_SHARING_VIOLATION
        fa.close()
        a.close()
        b.close()


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--workers", "0"], "workers must be between 1 and 64, not 0"),
        (["--workers", "2", "--takeover", "--bus", "redis://127.0.0.1:1/0"],
         "--takeover with --workers above 1 is not supported yet"),
        (["--workers", "2", "--node-id", "n" * 60], "too long for 2 workers"),
        (["--workers", "3", "--metrics-listen", "127.0.0.1:65534"], "65536 is not a TCP port"),
    ],
)  # fmt: skip
def test_check_refuses_workers_it_cannot_run(tmp_path: Path, flags: list[str], words: str) -> None:
    share = tmp_path / "share"
    share.mkdir()
    users = write_users(tmp_path / "users")
    cmd = [sys.executable, "-m", "gateway.cli", "check", "--listen", "127.0.0.1:4450",
           "--share", f"share={share}", "--users", str(users), *flags]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=REPO)
    assert done.returncode == 2 and words in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
