"""What keeping a durable handle's LockSequence array on the bus costs a LOCK.

    .venv/bin/python -m bench.lock_sequence_cost [--iterations 1000]

MS-SMB2 3.3.5.14 wants the array to survive a failover of a persistent
handle, and a dead node hands nothing over: the bus copy must be current
after each LOCK. Three ways of LOCK+UNLOCK on one durable open over a
redis-server started here, p50 and p90 of the pair:

- ``plain``: no LockSequence (a handle that needs none);
- ``in-transaction``: the sequence written by the lock's own transaction (what
  the gateway does, ``oplock_bus.disconnected.with_lock_sequence``);
- ``separate write``: a second transaction per request, as a separate bus
  call after each LOCK would cost.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from collections.abc import Awaitable, Callable

from bench.bus_redis import private_redis, req
from oplock_bus import make_bus
from oplock_bus.api import LockRange
from oplock_bus.coordinator import Coordinator
from oplock_bus.disconnected import with_lock_sequence

FILE, OPEN = "bench:seq", "A/seq"


async def measure(url: str, n: int) -> None:
    bus = make_bus(url, node_id="A", node_ttl=5)
    assert isinstance(bus, Coordinator)
    await bus.start()

    async def no_breaks(_notice: object) -> None:
        return None

    bus.register_node("A", no_breaks)
    await asyncio.sleep(0.2)
    await bus.open(dataclasses.replace(req("A", "seq", FILE), durable_ms=60_000, durable_key="seq"))
    rng = [LockRange(0, 10, False)]

    async def plain(i: int) -> None:
        await bus.lock(FILE, OPEN, rng, wait=False)
        await bus.unlock(FILE, OPEN, rng)

    async def in_transaction(i: int) -> None:
        await bus.lock(FILE, OPEN, rng, wait=False, sequence=(1, i & 0xF))
        await bus.unlock(FILE, OPEN, rng, sequence=(2, i & 0xF))

    async def record(index: int, number: int, status: int) -> None:
        seq = (index, number)
        await bus._apply(FILE, lambda st: (with_lock_sequence(st, OPEN, seq, status), None))

    async def separate(i: int) -> None:
        await record(1, i & 0xF, await bus.lock(FILE, OPEN, rng, wait=False))
        await record(2, i & 0xF, await bus.unlock(FILE, OPEN, rng))

    ways: list[tuple[str, Callable[[int], Awaitable[None]]]] = [
        ("plain", plain), ("in-transaction", in_transaction), ("separate write", separate),
    ]  # fmt: skip
    for name, way in ways:
        for i in range(100):
            await way(i)
        samples = []
        for i in range(n):
            t0 = time.perf_counter()
            await way(i)
            samples.append((time.perf_counter() - t0) * 1e3)
        samples.sort()
        p50, p90 = samples[n // 2], samples[int(n * 0.9)]
        print(f"{name:<16} LOCK+UNLOCK p50 {p50:.3f} ms  p90 {p90:.3f} ms")
    await bus.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=1000)
    args = ap.parse_args()
    with private_redis("lockseq-bench-") as url:
        asyncio.run(measure(url, args.iterations))
    return 0


if __name__ == "__main__":
    sys.exit(main())
