"""How long a persistent handle is out of reach when its node dies (issue 12).

Each run starts a private redis-server and a 2-node cluster whose share is
continuously available (``LocalCluster``, ``--ca``). A real smbprotocol
client opens a file through node 1 with a persistent durable handle (DH2Q
with the persistent flag), an RWH lease and a byte-range lock, and writes
to it. Node 1 is then killed with SIGKILL, and the client connects to
node 2 and sends the DH2C reconnect every ``--interval`` seconds (it is
OBJECT_NAME_NOT_FOUND until the cluster has declared node 1 dead) until it
succeeds. The figure is the time from the kill to the successful DH2C.
Each run then checks the handle: the same persistent FileId, an RWH lease,
the data read back, and its lock refusing another open's conflicting lock
(a second connection of the same client, under the same lease: an open
under another lease would break it, and smbprotocol cannot take a break).

A crash falls anywhere between two heartbeats of node 1 (renewed every
``node_ttl``/3), so the kill comes after a random wait of up to ``node_ttl``/3
once the handle is held; the heartbeat's remaining life at the kill is read
from Redis, and what the reclaim took after the heartbeat expired (the
cluster's own delay: its watcher, the take-over, the client's retry) is
reported too. ``node_ttl`` plus the largest such delay is the worst case: a
kill right after a renewal.

    .venv/bin/python -m bench.failover_reclaim [--runs 10] [--node-ttl default 2] [--json]

The settings are interleaved run by run. A run that has not reclaimed the
handle ``node_ttl`` + 10 s after the kill fails, and the benchmark goes on
(its directory, with the nodes' logs, is kept and named). The goal of the
issue: reclaimed within ``node_ttl`` + 1 s. Progress goes to stderr, the
summary table (or with ``--json`` the figures as JSON) to stdout. Exit
status: 0 when every setting met the goal, 1 otherwise, 130 when interrupted
(Ctrl-C or SIGTERM: every process the benchmark started is stopped first).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import redis
from smbprotocol.open import FilePipePrinterAccessMask

from bench.persistent import (
    PERSISTENT,
    RWH,
    SHARE_READ_WRITE,
    STATUS_LOCK_NOT_GRANTED,
    Client,
    durable_open,
    lease,
    lock_range,
    open_file,
    status_of,
    until_reclaimed,
)
from clients.demo_common import free_cluster_port
from gateway.cluster import ClusterSpec, LocalCluster
from gateway.config import Config
from oplock_bus.redis_url import DEFAULT_NAMESPACE

DEFAULT_TTL = Config().node_ttl
GOAL_MARGIN = 1.0  # the goal: reclaimed within node_ttl + 1 s
GIVE_UP_AFTER = 10.0  # a run that has not reclaimed by node_ttl + 10 s fails
DATA = b"committed record before the failover"
NAME = "db.dat"
LOCKED = (0, 10)


@dataclass(frozen=True)
class Setting:
    """A node_ttl to measure; ``None`` leaves the nodes at their default."""

    node_ttl: float | None

    @property
    def ttl(self) -> float:
        return DEFAULT_TTL if self.node_ttl is None else self.node_ttl

    @property
    def label(self) -> str:
        return f"{self.ttl:g} (default)" if self.node_ttl is None else f"{self.ttl:g}"

    @property
    def goal(self) -> float:
        return self.ttl + GOAL_MARGIN

    def node_args(self) -> list[str]:
        args = ["--log-level", "WARNING"]
        return args if self.node_ttl is None else [*args, "--node-ttl", str(self.node_ttl)]


@dataclass
class Run:
    seconds: float | None = None  # kill to reclaim; None: not reclaimed
    heartbeat_left: float | None = None  # node 1's heartbeat's remaining life at the kill
    attempts: int = 0  # DH2C requests sent through node 2
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.seconds is not None and self.error is None

    @property
    def after_expiry(self) -> float | None:
        """Kill to reclaim, less what the heartbeat still had to live."""
        if not self.ok or self.seconds is None or self.heartbeat_left is None:
            return None
        return self.seconds - self.heartbeat_left


@dataclass
class Results:
    setting: Setting
    runs: list[Run] = field(default_factory=list)

    @property
    def times(self) -> list[float]:
        return [r.seconds for r in self.runs if r.ok and r.seconds is not None]

    @property
    def lags(self) -> list[float]:
        return [r.after_expiry for r in self.runs if r.after_expiry is not None]

    @property
    def failed(self) -> int:
        return sum(not r.ok for r in self.runs)

    @property
    def met(self) -> bool:
        """Every run reclaimed, none later than the goal."""
        times = self.times
        return bool(times) and not self.failed and max(times) <= self.setting.goal

    def summary(self) -> dict[str, Any]:
        times, lags = self.times, self.lags
        return {
            "node_ttl": self.setting.ttl,
            "default": self.setting.node_ttl is None,
            "goal": self.setting.goal,
            "runs": len(self.runs),
            "reclaimed": len(times),
            "p50": round(statistics.median(times), 3) if times else None,
            "min": round(min(times), 3) if times else None,
            "max": round(max(times), 3) if times else None,
            "within_goal": sum(t <= self.setting.goal for t in times),
            "after_expiry_p50": round(statistics.median(lags), 3) if lags else None,
            "after_expiry_max": round(max(lags), 3) if lags else None,
            "worst_case": round(self.setting.ttl + max(lags), 3) if lags else None,
            "met": self.met,
            "seconds": [None if r.seconds is None else round(r.seconds, 3) for r in self.runs],
            "heartbeat_left": [
                None if r.heartbeat_left is None else round(r.heartbeat_left, 3) for r in self.runs
            ],
            "attempts": [r.attempts for r in self.runs],
            "errors": [r.error for r in self.runs if r.error],
            "notes": [n for r in self.runs for n in r.notes],
        }


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Watchdog:
    """Kills the run's nodes if the run outlives ``seconds``: smbprotocol
    waits for a reply without a timeout, and a dead server ends the wait."""

    def __init__(self, cluster: LocalCluster, seconds: float) -> None:
        self.cluster = cluster
        self.fired = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        self.fired = True
        for node in self.cluster.nodes:
            node.proc.send_signal(signal.SIGKILL)  # a no-op once it was reaped

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Cleanup that Ctrl-C (or SIGTERM) does not cut short: one arriving
    meanwhile interrupts once the cleanup is done."""
    caught: list[int] = []

    def later(sig: int, _frame: FrameType | None) -> None:
        caught.append(sig)

    previous = {s: signal.signal(s, later) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught:
        raise KeyboardInterrupt


def measure(cluster: LocalCluster, setting: Setting, interval: float, run: Run) -> None:
    """One failover on a running cluster; fills ``run`` (raises on a failed check)."""
    (h1, port), (h2, _) = cluster.endpoints
    guid, lease_key, create_guid = uuid.uuid4(), os.urandom(16), uuid.uuid4()
    clients: list[Client] = []
    try:
        a = Client(h1, port, guid)
        clients.append(a)
        f, flags, state = durable_open(a, NAME, lease_key, create_guid, persistent=True)
        if not flags & PERSISTENT:
            raise RuntimeError(f"DH2Q not granted persistent (flags {flags:#x})")
        if state != RWH:
            raise RuntimeError(f"lease {state:#x} granted at the open, not RWH")
        f.write(DATA, 0)
        lock_range(f, *LOCKED)

        time.sleep(random.uniform(0, setting.ttl / 3))  # anywhere between two heartbeats
        left = heartbeat_left(cluster, cluster.nodes[0].node_id)
        node1 = cluster.nodes[0].proc
        node1.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        run.heartbeat_left = left
        node1.wait(timeout=5)

        deadline = killed + setting.ttl + GIVE_UP_AFTER
        a2, (g, _, state), run.attempts = until_reclaimed(
            h2, port, guid, NAME, f, lease_key, create_guid, deadline, interval
        )
        took = time.monotonic() - killed
        clients.append(a2)
        if took > setting.ttl + GIVE_UP_AFTER:
            raise RuntimeError(f"reclaimed only {took:.2f} s after the kill")
        run.seconds = took

        if g.file_id[:8] != f.file_id[:8]:
            raise RuntimeError("the reconnect returned another persistent FileId")
        if state != RWH:
            raise RuntimeError(f"lease {state:#x} after the reconnect, not RWH")
        got = g.read(0, len(DATA))
        if got != DATA:
            raise RuntimeError(f"read back {got!r}")
        # The lock stands against another open: a second connection of the
        # same client, under the same lease (see the module's docstring).
        b = Client(h2, port, guid)
        clients.append(b)
        other = open_file(b, NAME, [lease(lease_key)], SHARE_READ_WRITE,
                          access=FilePipePrinterAccessMask.GENERIC_READ)  # fmt: skip
        status = status_of(lambda: lock_range(other, *LOCKED))
        if status != STATUS_LOCK_NOT_GRANTED:
            raise RuntimeError(f"a conflicting lock got {status:#x}, not LOCK_NOT_GRANTED")
        other.close()
        g.close()
    finally:
        for c in clients:
            c.close()


def heartbeat_left(cluster: LocalCluster, node_id: str) -> float | None:
    """Seconds node ``node_id``'s heartbeat key has to live (oplock_bus/liveness.py)."""
    assert cluster.bus_url is not None
    client = redis.Redis.from_url(cluster.bus_url, socket_timeout=2)
    try:
        ms = int(client.pttl(f"{DEFAULT_NAMESPACE}{{nodes}}:hb:{node_id}"))
    finally:
        client.close()
    return ms / 1000 if ms >= 0 else None


def one_run(setting: Setting, interval: float) -> Run:
    run = Run()
    work = Path(tempfile.mkdtemp(prefix="smbgw-failover-"))
    share = work / "share"
    share.mkdir()
    users = work / "users"
    users.write_text("test:test\n")
    spec = ClusterSpec(
        nodes=2,
        port=free_cluster_port(2),
        shares=[f"share={share}"],
        users=str(users),
        node_args=setting.node_args(),
        continuous_availability=True,
        log_dir=work / "logs",
    )
    cluster = LocalCluster(spec)
    # Setup and checks take a few seconds; this only bounds a hung request.
    watchdog = Watchdog(cluster, 30.0 + setting.ttl + GIVE_UP_AFTER + 30.0)
    try:
        cluster.start(timeout=20.0)
        with watchdog:
            measure(cluster, setting, interval, run)
    except Exception as e:  # noqa: BLE001 - a failed run is reported, the others go on
        why = f"{type(e).__name__}: {e}".strip()
        run.error = f"watchdog fired ({why})" if watchdog.fired else why
    except BaseException:  # Ctrl-C, SIGTERM: nothing of the run stays
        with uninterrupted():
            cluster.stop()
            shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        with uninterrupted():
            cluster.stop()
    for node in cluster.nodes:
        if node.log_path is not None and node.log_path.exists():
            if "Traceback" in node.log_path.read_text(errors="replace"):
                run.notes.append(f"{node.node_id} logged a traceback")
    if run.error or run.notes:
        run.notes.append(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return run


def ttl_arg(text: str) -> float | None:
    if text == "default":
        return None
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("node_ttl must be positive")
    return value


def _fig(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(results: list[Results], runs: int, interval: float) -> str:
    lines = [
        f"persistent handle: SIGKILL of node 1 to DH2C through node 2, {runs} runs per setting,"
        f" DH2C every {interval * 1000:g} ms",
        "",
        "| node_ttl (s) | reclaimed | p50 (s) | min (s) | max (s) | after heartbeat expiry,"
        " p50 / max (s) | worst case (s) | goal (s) | met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r.summary()
        met = "**yes**" if s["met"] else "**no**"
        lines.append(
            f"| {r.setting.label} | {s['reclaimed']}/{s['runs']} | {_fig(s['p50'])}"
            f" | {_fig(s['min'])} | {_fig(s['max'])} | {_fig(s['after_expiry_p50'])}"
            f" / {_fig(s['after_expiry_max'])} | {_fig(s['worst_case'])} | {s['goal']:g}"
            f" | {met} |"
        )
    lines += [
        "",
        "met: every run reclaimed within node_ttl + 1 s. Worst case: node_ttl plus the largest",
        "delay after the heartbeat expired (a kill right after a renewal).",
        "",
    ]
    for r in results:
        s = r.summary()
        each = ", ".join(
            "failed" if t is None else f"{t:.2f}" + ("" if h is None else f" ({h:.2f})")
            for t, h in zip(s["seconds"], s["heartbeat_left"], strict=True)
        )
        lines.append(f"node_ttl {r.setting.label}, seconds (heartbeat left at the kill): {each}")
    for r in results:
        s = r.summary()
        for e in s["errors"] + s["notes"]:
            lines.append(f"node_ttl {r.setting.label}: {e}")
    return "\n".join(lines)


def on_sigterm(_sig: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.failover_reclaim", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--runs", type=int, default=10, help="runs per setting (default 10)")
    ap.add_argument(
        "--node-ttl", type=ttl_arg, nargs="+", default=[None, 2.0], metavar="N",
        help=f"node_ttl settings, 'default' for the nodes' own ({DEFAULT_TTL:g} s);"
        " default: default 2",
    )  # fmt: skip
    ap.add_argument(
        "--interval", type=float, default=0.05, help="seconds between DH2C tries (0.05)"
    )
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.interval <= 0:
        ap.error("--runs must be at least 1 and --interval positive")
    signal.signal(signal.SIGTERM, on_sigterm)
    results = [Results(Setting(ttl)) for ttl in dict.fromkeys(args.node_ttl)]
    started = time.monotonic()
    try:
        for i in range(args.runs):
            for r in results:
                run = one_run(r.setting, args.interval)
                r.runs.append(run)
                head = f"run {i + 1}/{args.runs} node_ttl {r.setting.label}:"
                if run.ok and run.seconds is not None:
                    verdict = "within" if run.seconds <= r.setting.goal else "OVER"
                    left = "?" if run.heartbeat_left is None else f"{run.heartbeat_left:.2f}"
                    say(
                        f"{head} reclaimed {run.seconds:.2f} s after SIGKILL (heartbeat left"
                        f" {left} s; {run.attempts} DH2C), data and lock intact,"
                        f" {verdict} the goal {r.setting.goal:g} s"
                    )
                else:
                    say(f"{head} FAILED: {run.error}")
                for note in run.notes:
                    say(f"{head} {note}")
    except KeyboardInterrupt:
        say("interrupted; every process this benchmark started is stopped")
        return 130
    say(f"{time.monotonic() - started:.0f} s in all")
    if args.json:
        print(json.dumps({"interval": args.interval, "settings": [r.summary() for r in results]},
                         indent=2))  # fmt: skip
    else:
        print(table(results, args.runs, args.interval))
    return 0 if all(r.met for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
