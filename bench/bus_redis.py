"""Benchmark of the Redis lock bus on a redis-server it starts itself.

    .venv/bin/python bench/bus_redis.py [--iterations 3000] [--concurrency 16]

Reports, per operation, sequential latency (p50/p99) and ops/s, then ops/s
with ``--concurrency`` tasks in flight:

- open registration (an uncontended open of a file, then its close);
- byte-range lock and unlock on an open file;
- the cross-node break round trip: node A (bus instance 1) holds a batch
  oplock, node B (bus instance 2) opens the file; the break goes to A over
  Redis, A's handler acknowledges at once (no client time), B resumes.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from redis.asyncio import Redis  # noqa: E402

from oplock_bus import make_bus  # noqa: E402
from oplock_bus.api import (  # noqa: E402
    OPLOCK_BATCH,
    OPLOCK_II,
    STATUS_SUCCESS,
    BreakNotice,
    LockBus,
    LockRange,
    OpenRequest,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
         "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return proc, port
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("redis-server did not start")


@contextmanager
def private_redis(prefix: str) -> Iterator[str]:
    """A redis-server of the benchmark's own on a free loopback port (no
    persistence); its bus URL. Stopped and its folder removed at the end."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    proc, port = start_redis(workdir)
    try:
        yield f"redis://127.0.0.1:{port}?namespace=bench:"
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def report(name: str, samples: list[float]) -> None:
    samples = sorted(samples)
    p50 = samples[len(samples) // 2] * 1e3
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e3
    rate = len(samples) / sum(samples)
    print(f"{name:<34} p50 {p50:6.3f} ms  p99 {p99:6.3f} ms  {rate:8.0f} ops/s (sequential)")


async def timed(n: int, op: Callable[[int], Awaitable[float]]) -> list[float]:
    return [await op(i) for i in range(n)]


def acks_at_once(bus: LockBus) -> Callable[[BreakNotice], Awaitable[None]]:
    """A holder's break handler that acknowledges for its client straight
    away: the figures are bus time only."""

    async def ack(notice: BreakNotice) -> None:
        if notice.ack_required and notice.open_id is not None:
            asyncio.get_running_loop().create_task(
                bus.ack_oplock(notice.file, notice.open_id, notice.new_level)
            )

    return ack


def req(node: str, handle: str, file: str, oplock: int = 0) -> OpenRequest:
    return OpenRequest(f"{node}/{handle}", node, file, 0x3, 0x7, oplock=oplock)


async def bench(url: str, n: int, concurrency: int) -> None:
    one = make_bus(url, node_id="A", node_ttl=5)
    two = make_bus(url, node_id="B", node_ttl=5)
    await one.start()
    await two.start()

    async def ignore(notice: BreakNotice) -> None:
        return None

    one.register_node("A", acks_at_once(one))
    two.register_node("B", ignore)
    await asyncio.sleep(0.2)  # registrations land

    opens: list[float] = []
    closes: list[float] = []

    async def open_close(i: int) -> float:
        file = f"bench:{i % 100}"
        t0 = time.perf_counter()
        got = await one.open(req("A", f"o{i}", file))
        t1 = time.perf_counter()
        assert got.status == STATUS_SUCCESS
        await one.close(file, f"A/o{i}")
        closes.append(time.perf_counter() - t1)
        return t1 - t0

    await timed(200, open_close)  # warm up: connections, scripts, subscriptions
    closes.clear()
    opens = await timed(n, open_close)
    report("open (uncontended)", opens)
    report("close", closes)

    await one.open(req("A", "lk", "bench:lock"))
    unlocks: list[float] = []

    async def lock_unlock(i: int) -> float:
        rng = [LockRange((i % 64) * 10, 10, True)]
        t0 = time.perf_counter()
        status = await one.lock("bench:lock", "A/lk", rng, wait=False)
        t1 = time.perf_counter()
        assert status == STATUS_SUCCESS
        await one.unlock("bench:lock", "A/lk", rng)
        unlocks.append(time.perf_counter() - t1)
        return t1 - t0

    await timed(200, lock_unlock)
    unlocks.clear()
    report("lock (uncontended)", await timed(n, lock_unlock))
    report("unlock", unlocks)

    async def break_round_trip(i: int) -> float:
        file = f"bench:brk:{i}"
        held = await one.open(req("A", f"b{i}", file, OPLOCK_BATCH))
        assert held.oplock == OPLOCK_BATCH
        t0 = time.perf_counter()
        got = await two.open(req("B", f"b{i}", file, OPLOCK_BATCH))
        took = time.perf_counter() - t0
        assert (got.status, got.oplock) == (STATUS_SUCCESS, OPLOCK_II), got
        await one.close(file, f"A/b{i}")
        await two.close(file, f"B/b{i}")
        return took

    await timed(50, break_round_trip)
    report("cross-node break round trip", await timed(max(200, n // 5), break_round_trip))
    print(f"{'  Redis commands per round trip':<34} {await commands_per_break(url, two, one)}")
    # As in a cluster: the holder's node in a process of its own.
    report(
        "  the same, holder in its own process",
        await break_round_trips_across_processes(url, two, max(200, n // 5)),
    )

    async def spread(op: Callable[[int], Awaitable[float]], total: int) -> float:
        t0 = time.perf_counter()
        per = total // concurrency

        async def worker(w: int) -> None:
            for i in range(per):
                await op(w * per + i + 1_000_000)

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        return concurrency * per / (time.perf_counter() - t0)

    rate = await spread(open_close, n)
    print(f"{'open+close pairs, concurrent':<34} {rate:8.0f} pairs/s ({concurrency} tasks)")
    await one.stop()
    await two.stop()


async def break_round_trips_across_processes(url: str, opener: LockBus, n: int) -> list[float]:
    """Node A runs in a child process (``--holder``): it opens each file with a
    batch oplock, acknowledges the break at once, and closes when told."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--holder", "--url", url, "--iterations", str(n + 50),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    samples: list[float] = []
    for i in range(n + 50):
        file = (await child.stdout.readline()).decode().strip()
        assert file, "the holder process stopped"
        t0 = time.perf_counter()
        got = await opener.open(req("B", f"x{i}", file, OPLOCK_BATCH))
        took = time.perf_counter() - t0
        assert (got.status, got.oplock) == (STATUS_SUCCESS, OPLOCK_II), got
        await opener.close(file, f"B/x{i}")
        child.stdin.write(b"close\n")
        await child.stdin.drain()
        if i >= 50:  # the first ones warm up both processes
            samples.append(took)
    await child.wait()
    return samples


async def holder(url: str, n: int) -> None:
    """The child of break_round_trips_across_processes."""
    bus = make_bus(url, node_id="A2", node_ttl=5)
    bus.register_node("A2", acks_at_once(bus))
    await bus.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    for i in range(n):
        file = f"bench:xproc:{i}"
        held = await bus.open(req("A2", f"h{i}", file, OPLOCK_BATCH))
        assert held.oplock == OPLOCK_BATCH
        print(file, flush=True)
        await reader.readline()
        await bus.close(file, f"A2/h{i}")
    await bus.stop()


async def commands_per_break(url: str, opener: LockBus, holder: LockBus, n: int = 50) -> str:
    """Redis's own count of the commands one break round trip costs (averaged)."""
    stats = Redis.from_url(url.split("?")[0])

    async def calls() -> Counter[str]:
        info = await stats.info("commandstats")
        return Counter({k.removeprefix("cmdstat_"): v["calls"] for k, v in info.items()})

    total: Counter[str] = Counter()
    for i in range(n):
        file = f"bench:cnt:{i}"
        await holder.open(req("A", f"c{i}", file, OPLOCK_BATCH))
        before = await calls()
        await opener.open(req("B", f"c{i}", file, OPLOCK_BATCH))
        after = await calls()
        total += after - before
        total["info"] -= 1  # the count's own INFO
        await holder.close(file, f"A/c{i}")
        await opener.close(file, f"B/c{i}")
    await stats.aclose()
    return ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(total.items()) if v > 0)


def _runner() -> Callable[..., object]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--url", help="use this Redis instead of starting one")
    ap.add_argument("--holder", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.holder:
        _runner()(holder(args.url, args.iterations))
        return 0
    own = private_redis("bus-bench-") if args.url is None else nullcontext(args.url)
    with own as url:
        runner = _runner()
        print(f"python {sys.version.split()[0]}, {runner.__module__}, bus {url}")
        runner(bench(url, args.iterations, args.concurrency))
    return 0


if __name__ == "__main__":
    sys.exit(main())
