"""What a client sees when Redis loses its state (issue 13): the pause.

Each run starts its own Redis and a 2-node cluster on it
(``clients.demo_redis_loss``, ``clients.demo_common.demo_cluster``). Client
A opens a file through node 1 with no sharing and keeps writing 64 bytes and
taking and releasing a byte-range lock on it; client B, through node 2,
keeps opening a file of its own, writing, locking, unlocking and closing it
(each of its opens and closes goes to the bus). After a random 0.5-1.5 s
(the loss falls anywhere in the nodes' heartbeat period) Redis loses
everything:

* ``restart``: the redis-server is killed with SIGKILL and started again,
  empty, on the same port;
* ``sentinel``: a master, a replica and three Sentinels; the master is
  killed and the replica restarted empty before Sentinel promotes it.

The figure is the client-visible pause: the longest time between two
completed requests of a client that ended after the kill (the larger of A's
and B's). Beside it, Redis's own time: kill to a restarted server answering,
or kill to ``SENTINEL get-master-addr-by-name`` naming the replica (Sentinel's
own switch time). The issue's goal: a pause within that time + 1 s (p50 of
5). Each run also checks that nothing went wrong meanwhile; a run is clean
when no request was answered with an error (the loops note it and go on,
as an application that tries again would), B's open of A's file is still
refused with STATUS_SHARING_VIOLATION while A works on it (nothing granted
twice), and no connection was dropped.

    .venv/bin/python -m bench.bus_recovery [--runs 5] [--how restart sentinel] [--json]

Progress goes to stderr, the table (or with ``--json`` the figures) to
stdout. Exit status: 0 when every mode met the goal, 1 otherwise, 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TypeVar

from clients.demo_common import PASSWORD, SHARE, USER, DemoCluster, demo_cluster
from clients.demo_redis_loss import HOWS, Gaps, LosableRedis, Loss, losable_redis
from clients.smb2client import SMB2Client, SmbError, Tree
from gateway.protocol.constants import Status

GOAL_MARGIN = 1.0  # the goal: Redis's own time + 1 s
SETTLE = 2.0  # seconds the clients go on after Redis is back
GIVE_UP = 30.0  # a client with nothing completed this long after the loss fails the run
HOLDER, OTHER = 0, 1  # client numbers in Gaps
HELD = "held.dat"
RECORD = b"r" * 64
RETRY_AFTER = 0.01  # seconds a loop waits after an error answer before going on
T = TypeVar("T")


@dataclass
class Run:
    pause: float | None = None  # longest gap ended after the kill, either client
    pauses: tuple[float, float] = (0.0, 0.0)  # the holder's, the other client's
    back: float | None = None  # kill to Redis answering again / Sentinel's switch
    requests: int = 0
    # Requests answered with an error: (seconds after the kill, what).
    failed: list[tuple[float, str]] = field(default_factory=list)
    error: str | None = None
    log_tail: str = ""  # the nodes' last log lines, for a run that failed

    @property
    def clean(self) -> bool:
        """Through the loss with nothing wrong: no error answer, nothing
        granted twice, no connection dropped."""
        return self.error is None and self.pause is not None and not self.failed


@dataclass
class Results:
    how: str
    runs: list[Run] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Pauses over every run that measured one (a run that then failed a
        check included: its pause is what the clients waited all the same)."""
        pauses = [r.pause for r in self.runs if r.pause is not None]
        backs = [r.back for r in self.runs if r.pause is not None and r.back is not None]
        p50 = statistics.median(pauses) if pauses else None
        back = statistics.median(backs) if backs else None
        goal = None if back is None else back + GOAL_MARGIN
        return {
            "how": self.how,
            "runs": len(self.runs),
            "measured": len(pauses),
            "clean": sum(r.clean for r in self.runs),
            "pause_p50": p50,
            "pause_min": min(pauses, default=None),
            "pause_max": max(pauses, default=None),
            "back_p50": back,
            "goal": goal,
            "ratio": None if p50 is None or goal is None else p50 / goal,
            "pauses": [r.pause for r in self.runs],
            "holder_other": [r.pauses for r in self.runs],
            "backs": [r.back for r in self.runs],
            "failed_requests": [len(r.failed) for r in self.runs],
            "errors": [r.error for r in self.runs if r.error],
            "failures": _grouped([f for r in self.runs for f in r.failed]),
        }

    @property
    def met(self) -> bool:
        """Every run went through, no request failed, and the p50 pause is
        within the goal."""
        s = self.summary()
        return s["clean"] == s["runs"] and s["ratio"] is not None and s["ratio"] <= 1.0


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _client(host: str, port: int) -> tuple[SMB2Client, Tree]:
    client = await SMB2Client.connect(host, port, user=USER, password=PASSWORD)
    return client, await client.tree_connect(SHARE)


class Loops:
    """A's and B's request loops, each noting its completed requests in ``gaps``.

    A request answered with an error is noted and the loop goes on, as an
    application that tries again would: the pause is then the time to the
    next request that succeeded. A lost connection ends the run."""

    def __init__(self, a: Tree, b: Tree, gaps: Gaps) -> None:
        self.a, self.b, self.gaps = a, b, gaps
        self.running = True
        self.requests = 0
        self.failed: list[tuple[float, str]] = []  # (when, what)

    async def _step(self, client: int, request: Awaitable[T]) -> tuple[bool, T | None]:
        """(whether it succeeded, what it returned)."""
        try:
            result = await request
        except SmbError as e:
            self.failed.append((time.monotonic(), f"{'AB'[client]}: {e}"))
            await asyncio.sleep(RETRY_AFTER)
            return False, None
        self.gaps.done(client)
        self.requests += 1
        return True, result

    async def holder(self) -> None:
        f = await self.a.create(HELD, share_access=0)
        self.gaps.begin(HOLDER)
        n = 0
        while self.running:
            await self._step(HOLDER, f.write((n % 64) * len(RECORD), RECORD))
            # A new byte each time: a lock whose answer was lost may be held.
            locked, _ = await self._step(HOLDER, f.lock(0x1000 + n, 1, wait=False))
            if locked:
                await self._step(HOLDER, f.unlock(0x1000 + n, 1))
            n += 1
        await f.close()

    async def other(self) -> None:
        self.gaps.begin(OTHER)
        n = 0
        while self.running:
            _, f = await self._step(OTHER, self.b.create("other.dat"))
            if f is None:
                continue
            await self._step(OTHER, f.write(0, RECORD))
            locked, _ = await self._step(OTHER, f.lock(n, 1, wait=False))
            if locked:
                await self._step(OTHER, f.unlock(n, 1))
            await self._step(OTHER, f.close())
            n += 1


async def measure(cluster: DemoCluster, redis: LosableRedis, rng: random.Random, run: Run) -> None:
    (h1, port), (h2, _) = cluster.endpoints
    (a, ta), (b, tb) = await _client(h1, port), await _client(h2, port)
    gaps = Gaps()
    loops = Loops(ta, tb, gaps)
    tasks = [asyncio.ensure_future(loops.holder()), asyncio.ensure_future(loops.other())]
    try:
        await asyncio.sleep(rng.uniform(0.5, 1.5))
        _raise_failed(tasks)
        # Off the event loop: the clients go on while Redis goes and comes back.
        loss: Loss = await asyncio.to_thread(redis.lose)
        run.back = loss.seconds
        settled = loss.back_at + SETTLE
        while not all(gaps.longest_of(c, since=settled) > 0 for c in (HOLDER, OTHER)):
            _raise_failed(tasks)
            if time.monotonic() > loss.killed_at + GIVE_UP:
                raise TimeoutError(f"a client completed nothing for {GIVE_UP:g} s after the loss")
            await asyncio.sleep(0.05)
        run.pauses = (
            gaps.longest_of(HOLDER, since=loss.killed_at),
            gaps.longest_of(OTHER, since=loss.killed_at),
        )
        run.pause = max(run.pauses)
        run.requests = loops.requests
        run.failed = [(when - loss.killed_at, what) for when, what in loops.failed]
        await _still_held(tb)  # while A still holds it
        loops.running = False
        await asyncio.gather(*tasks)
        dropped = [name for name, c in (("A", a), ("B", b)) if c.transport.closed]
        if dropped:
            raise ConnectionError(f"connection of {' and '.join(dropped)} dropped")
    finally:
        loops.running = False
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(a.close(), b.close(), return_exceptions=True)


def _grouped(failed: list[tuple[float, str]]) -> list[str]:
    """Failures alike in one line: what, how many, from when to when after the kill."""
    times: dict[str, list[float]] = {}
    for when, what in failed:
        times.setdefault(what, []).append(when)
    return [
        f"{what}: {len(ts)} times, {min(ts):+.2f} to {max(ts):+.2f} s after the kill"
        for what, ts in sorted(times.items())
    ]


def _raise_failed(tasks: Sequence[asyncio.Future[None]]) -> None:
    for t in tasks:
        error = t.exception() if t.done() else None
        if error is not None:
            raise error


async def _still_held(b: Tree) -> None:
    """Nothing granted twice: A's open (no sharing) still keeps B out."""
    try:
        f = await b.create(HELD)
    except SmbError as e:
        if e.status == Status.SHARING_VIOLATION:
            return
        raise
    await f.close()
    raise AssertionError("B opened A's file after the loss while A holds it: granted twice")


def one_run(how: str, seed: int) -> Run:
    run = Run()
    try:
        with losable_redis(how) as redis, demo_cluster(2, bus=redis.url) as cluster:
            try:
                asyncio.run(asyncio.wait_for(measure(cluster, redis, random.Random(seed), run), 90))
            finally:
                logs = "".join(
                    n.log_path.read_text(errors="replace")
                    for n in cluster.cluster.nodes
                    if n.log_path is not None and n.log_path.exists()
                )
                run.log_tail = cluster.node_log_tail(12)
            if "dropping every client connection" in logs:
                run.error = "a node dropped its clients"
    except Exception as e:  # noqa: BLE001 - a failed run is reported, the others go on
        run.error = f"{type(e).__name__}: {e}".strip()
    return run


def _fig(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(results: list[Results], runs: int) -> str:
    lines = [
        f"client-visible pause of a Redis loss, {runs} runs per mode, 2 nodes, 2 clients",
        "",
        "| how | pause p50 (s) | min | max | Redis back / Sentinel switch p50 (s)"
        " | goal (s) | pause / goal | clean runs | requests failed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r.summary()
        lines.append(
            f"| {r.how} | {_fig(s['pause_p50'])} | {_fig(s['pause_min'])}"
            f" | {_fig(s['pause_max'])} | {_fig(s['back_p50'])} | {_fig(s['goal'])}"
            f" | {_fig(s['ratio'])} | {s['clean']}/{s['runs']} | {sum(s['failed_requests'])} |"
        )
    lines += [
        "",
        "pause: the longest wait between two completed requests of a client that ended after",
        "the kill (A's and B's, the larger); clean: no error answer, B still refused A's file",
        "(nothing granted twice), no connection dropped.",
        "",
    ]
    for r in results:
        s = r.summary()
        each = ", ".join(
            "failed" if p is None else f"{p:.2f} (A {ho[0]:.2f}, B {ho[1]:.2f}; back {_fig(b)})"
            for p, ho, b in zip(s["pauses"], s["holder_other"], s["backs"], strict=True)
        )
        lines.append(f"{r.how}, pause per run: {each}")
        lines += [f"{r.how}: {e}" for e in s["errors"]]
        lines += [f"{r.how}, requests failed: {f}" for f in s["failures"]]
    return "\n".join(lines)


def on_sigterm(_sig: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.bus_recovery", description=(__doc__ or "").split("\n\n")[0]
    )
    ap.add_argument("--runs", type=int, default=5, help="runs per mode (default 5)")
    ap.add_argument("--how", nargs="+", choices=HOWS, default=list(HOWS), help="modes (both)")
    ap.add_argument("--seed", type=int, default=0, help="when in each run Redis goes (0)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument(
        "--verbose", action="store_true", help="the nodes' last log lines of a run that failed"
    )
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    signal.signal(signal.SIGTERM, on_sigterm)
    results = [Results(how) for how in dict.fromkeys(args.how)]
    started = time.monotonic()
    try:
        for i in range(args.runs):
            for r in results:
                run = one_run(r.how, args.seed * 1000 + i)
                r.runs.append(run)
                head = f"run {i + 1}/{args.runs} {r.how}:"
                if run.pause is not None:
                    say(
                        f"{head} pause {_fig(run.pause)} s (A {run.pauses[0]:.2f}, B"
                        f" {run.pauses[1]:.2f}), Redis back after {_fig(run.back)} s,"
                        f" {run.requests} requests, {len(run.failed)} failed"
                    )
                if run.error:
                    say(f"{head} FAILED: {run.error}")
                if args.verbose and (run.error or run.failed):
                    say(run.log_tail)
    except KeyboardInterrupt:
        say("interrupted; every process this benchmark started is stopped")
        return 130
    say(f"{time.monotonic() - started:.0f} s in all")
    if args.json:
        print(json.dumps([r.summary() for r in results], indent=2))
    else:
        print(table(results, args.runs))
    return 0 if all(r.met for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
