"""The cross-node break as the client feels it (issue 15 item 5).

Client A (pike) opens a file through node 1 with a Batch oplock; client B
(pike, another connection) opens the same file through node 2. The figure
is B's CREATE from send to completion: node 2 asks the bus, the bus
decides a break, node 1 sends A the OPLOCK_BREAK, A acknowledges at once
(the ack leaves from the callback that read the break, MS-SMB2 3.2.5.19.1),
node 1 records the new level, node 2 learns of it and answers B. Both
handles are closed between rounds; the file is the same every round, as
for two clients sharing a document.

The same rounds run against two gateway nodes (127.0.0.1 and 127.0.0.2 over
a private redis-server, ``gateway.cluster.LocalCluster``) and a two-node
clustered Samba (``bench.samba.CtdbCluster``) in the same run, taking turns
``--repeat`` times; the report is p50/p90 of ``--rounds`` per turn and the
ratio gateway/Samba of the p50s. Needs root (smbd, loopback aliases).

    .venv/bin/python -m bench.break_latency [--rounds 40] [--repeat 3]
        [--gateway-tree DIR] [--before-tree /tmp/wt-break] [--no-samba] [--spin] [--json]

``--gateway-tree`` runs the gateway nodes from another checkout (its
``gateway`` and ``oplock_bus`` packages) with this checkout's bench and
client; ``--before-tree`` adds a second gateway pair from another checkout
(e.g. a worktree of the code before a change) to the same run, taking turns
with the others.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pike.model
import pike.smb2
import pike.transport

from bench.samba import PASSWORD, SHARE, USER, CtdbCluster
from bench.servers import work_dir
from clients.demo_common import free_cluster_port
from gateway.cluster import ClusterSpec, LocalCluster

Endpoint = tuple[str, int]
SHARE_ALL = (
    pike.smb2.FILE_SHARE_READ | pike.smb2.FILE_SHARE_WRITE | pike.smb2.FILE_SHARE_DELETE
)
WARMUP = 5  # rounds not counted: first opens, channel subscriptions, caches
POLL_MS = 50  # the longest a client's poll blocks before pike looks at its futures again


def block_in_poll() -> None:
    """Make pike's event loop sleep in poll(2) until a socket is ready.

    pike polls with a zero timeout, so a client that waits spins on a core;
    on this 2-core machine that leaves one core to two nodes and Redis (or
    two smbds and two ctdbds), and the figure measures the scheduler. A
    client that sleeps while it waits (as a real redirector does) measures
    the servers. Every wait of pike's calls the poll once per turn of its
    loop and then checks its future, so blocking changes no outcome.
    """
    poller = pike.transport.poller
    if not isinstance(poller, pike.transport.PollPoller):
        raise RuntimeError(f"pike uses {type(poller).__name__}, not poll(2)")
    events = poller.p

    class Blocking:
        def poll(self, _timeout: int) -> list[tuple[int, int]]:
            return events.poll(POLL_MS)

        def __getattr__(self, name: str) -> Any:
            return getattr(events, name)

    poller.p = Blocking()


class Side:
    """One pike connection, session and tree on one node."""

    def __init__(self, endpoint: Endpoint) -> None:
        host, port = endpoint
        self.client = pike.model.Client()
        self.conn = self.client.connect(host, port).negotiate()
        self.chan = self.conn.session_setup(f"{USER}%{PASSWORD}")
        self.tree = self.chan.tree_connect(SHARE)

    def create(self, name: str, oplock: int) -> Any:
        return self.chan.create(
            self.tree, name, share=SHARE_ALL, oplock_level=oplock,
            disposition=pike.smb2.FILE_OPEN_IF,
        )  # fmt: skip

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.chan.logoff()
        with contextlib.suppress(Exception):
            self.conn.close()


def measure(endpoints: list[Endpoint], rounds: int) -> list[float]:
    """Milliseconds of B's CREATE, one per counted round."""
    a, b = Side(endpoints[0]), Side(endpoints[1])
    name = f"break-{uuid.uuid4().hex[:8]}.dat"
    times: list[float] = []
    try:
        for i in range(WARMUP + rounds):
            held = a.create(name, pike.smb2.SMB2_OPLOCK_LEVEL_BATCH).result()
            if held.oplock_level != pike.smb2.SMB2_OPLOCK_LEVEL_BATCH:
                raise RuntimeError(f"A was granted oplock {held.oplock_level}, not Batch")
            acks: list[Any] = []
            broke = a.client.oplock_break_future(held.file_id)
            broke.then(_acknowledge(a, held, acks))
            start = time.perf_counter_ns()
            opened = b.create(name, pike.smb2.SMB2_OPLOCK_LEVEL_NONE).result()
            took = time.perf_counter_ns() - start
            if not acks:
                raise RuntimeError("B's open completed without breaking A's Batch oplock")
            for ack in acks:
                ack.result()
            b.chan.close(opened)
            a.chan.close(held)
            if i >= WARMUP:
                times.append(took / 1e6)
    finally:
        a.close()
        b.close()
    return times


def _acknowledge(a: Side, held: Any, acks: list[Any]) -> Callable[[Any], None]:
    def ack(future: Any) -> None:
        req = a.chan.oplock_break_acknowledgement(held, future.response)
        acks.extend(a.conn.submit(req.parent.parent))

    return ack


@contextmanager
def _cwd(tree: Path | None) -> Iterator[None]:
    """Nodes start as ``python -m gateway.cli`` in the current directory."""
    if tree is None:
        yield
        return
    before = os.getcwd()
    os.chdir(tree)
    try:
        yield
    finally:
        os.chdir(before)


@contextmanager
def gateway_pair(work: Path, tree: Path | None) -> Iterator[list[Endpoint]]:
    share = work / "gw" / "share"
    share.mkdir(parents=True)
    users = work / "gw" / "users"
    users.write_text(f"{USER}:{PASSWORD}\n")
    spec = ClusterSpec(
        nodes=2, port=free_cluster_port(2), shares=[f"{SHARE}={share}"], users=str(users),
        node_args=["--log-level", "WARNING"], log_dir=work / "gw" / "logs",
    )  # fmt: skip
    cluster = LocalCluster(spec)
    with _cwd(tree):
        cluster.start()
    try:
        yield cluster.endpoints
    finally:
        cluster.stop()


@contextmanager
def samba_pair(work: Path) -> Iterator[list[Endpoint]]:
    with CtdbCluster(work / "ctdb", 2, free_cluster_port(2)).start() as cluster:
        yield cluster.endpoints


def summary(times: list[float]) -> dict[str, float]:
    q = statistics.quantiles(times, n=10)
    return {"p50": statistics.median(times), "p90": q[8], "n": len(times)}


def _tree(ap: argparse.ArgumentParser, path: Path | None, option: str) -> Path | None:
    if path is None:
        return None
    tree = path.resolve()
    if not (tree / "gateway" / "cli.py").is_file():
        ap.error(f"{option} {tree}: no gateway/cli.py there")
    return tree


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=40, help="counted rounds per turn")
    ap.add_argument("--repeat", type=int, default=3, help="turns of each server")
    ap.add_argument("--gateway-tree", type=Path, help="run the nodes from this checkout")
    ap.add_argument("--before-tree", type=Path,
                    help="also a gateway pair from this checkout (the code before a change)")
    ap.add_argument("--no-samba", action="store_true", help="the gateway only")
    ap.add_argument("--spin", action="store_true",
                    help="leave pike polling with a zero timeout (a core busy while it waits)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.rounds < 2:
        ap.error("--rounds must be at least 2")
    tree = _tree(ap, args.gateway_tree, "--gateway-tree")
    before = _tree(ap, args.before_tree, "--before-tree")
    if not args.spin:
        block_in_poll()
    work = work_dir("break-latency-")
    results: dict[str, list[dict[str, float]]] = {}
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        servers = {"gateway": stack.enter_context(gateway_pair(work / "now", tree))}
        if before is not None:
            servers["before"] = stack.enter_context(gateway_pair(work / "before", before))
        if not args.no_samba:
            servers["samba"] = stack.enter_context(samba_pair(work))
        for turn in range(args.repeat):
            for label, endpoints in servers.items():
                got = summary(measure(endpoints, args.rounds))
                results.setdefault(label, []).append(got)
                print(f"turn {turn + 1} {label}: p50 {got['p50']:.3f} ms, "
                      f"p90 {got['p90']:.3f} ms", file=sys.stderr)  # fmt: skip
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"B's CREATE breaking A's Batch oplock across nodes, {args.rounds} rounds a turn (ms)")
    print(table(results))
    return 0


def table(results: dict[str, list[dict[str, float]]]) -> str:
    """One row per turn: p50 and p90 of each server, and each gateway's p50 over Samba's."""
    names = {"gateway": "gateway", "before": "gateway before", "samba": "Samba+CTDB"}
    labels = list(results)
    head = [f"{names[k]} p50 | p90" for k in labels]
    ratios = [k for k in labels if k != "samba"] if "samba" in results else []
    head += [f"{names[k]}/Samba p50" for k in ratios]
    rule = "|---" * (1 + 2 * len(labels) + len(ratios)) + "|"
    lines = ["| turn | " + " | ".join(head) + " |", rule]
    for turn in range(len(results[labels[0]])):
        cells = [f"{results[k][turn]['p50']:.2f} | {results[k][turn]['p90']:.2f}" for k in labels]
        samba = results["samba"][turn]["p50"] if ratios else 1.0
        cells += [f"{results[k][turn]['p50'] / samba:.2f}" for k in ratios]
        lines.append(f"| {turn + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
