"""The Redis bus across processes and failures, on real redis-server processes.

Several bus instances on one Redis are several nodes; a node in a separate
process is killed with SIGKILL; Redis itself is stopped and restarted; a
TLS server with a password is reached over ``rediss://``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from redis.asyncio import Redis

from oplock_bus import make_bus
from oplock_bus.api import (
    OPLOCK_BATCH,
    OPLOCK_II,
    STATUS_SUCCESS,
    BusUnavailable,
    LockRange,
    OpenResult,
)
from oplock_bus.redis_bus import RedisBus
from tests.conftest import REPO
from tests.conftest_bus import SHARE_ALL, Client, run, settle
from tests.redis_fixtures import (
    HOST,
    RedisProc,
    free_port,
    isolated,
    make_tls_files,
    private_redis,  # noqa: F401 - a fixture
    shared_url,
    start_redis,
)


async def _bus(url: str, *, ttl: float = 5.0, break_timeout: float = 35.0) -> RedisBus:
    bus = make_bus(url, node_id="t", node_ttl=ttl, break_timeout=break_timeout)
    assert isinstance(bus, RedisBus)
    await bus.start()
    return bus


async def _open_once_back(client: Client, name: str) -> OpenResult:
    """Open as soon as the bus answers again (10 s at most)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return await client.open(name)
        except BusUnavailable:
            assert time.monotonic() < deadline, "the bus did not come back"
            await asyncio.sleep(0.1)


def test_break_crosses_from_one_bus_instance_to_another() -> None:
    async def body() -> None:
        url = isolated(shared_url("redis"))
        one, two = await _bus(url), await _bus(url)
        a, b = Client(one, "A"), Client(two, "B")
        assert (await a.open("h", oplock=OPLOCK_BATCH)).oplock == OPLOCK_BATCH
        got = await b.open("h", oplock=OPLOCK_BATCH)
        # A's node got the break over Redis, its client acked, B resumed.
        assert (got.status, got.oplock) == (STATUS_SUCCESS, OPLOCK_II)
        assert [(n.open_id, n.new_level) for n in a.notices] == [("A/h", OPLOCK_II)]
        # The ack's commit wakes B and answers A at once: either may come first.
        await settle()
        assert a.acks == [STATUS_SUCCESS]
        await one.stop()
        await two.stop()

    run(body())


def test_blocking_lock_is_woken_from_another_bus_instance() -> None:
    async def body() -> None:
        url = isolated(shared_url("redis"))
        one, two = await _bus(url), await _bus(url)
        a, b = Client(one, "A"), Client(two, "B")
        await a.open("h", share=SHARE_ALL)
        await b.open("h", share=SHARE_ALL)
        rng = [LockRange(0, 10, True)]
        assert await one.lock("vol:1", a.oid("h"), rng, wait=False) == STATUS_SUCCESS
        waiting = asyncio.create_task(two.lock("vol:1", b.oid("h"), rng, wait=True))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        t0 = time.monotonic()
        assert await one.unlock("vol:1", a.oid("h"), rng) == STATUS_SUCCESS
        assert await asyncio.wait_for(waiting, 2) == STATUS_SUCCESS
        assert time.monotonic() - t0 < 0.5  # woken by its channel, not the 5 s poll
        await one.stop()
        await two.stop()

    run(body())


def test_killed_node_releases_its_oplock_and_lock_within_ttl() -> None:
    ttl = 2.0
    url = isolated(shared_url("redis"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.bus_node_proc", url, "doomed", str(ttl)],
        stdout=subprocess.PIPE, cwd=REPO, env=env, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"

        async def body() -> float:
            bus = await _bus(url, ttl=ttl)  # the default 35 s break timeout
            me = Client(bus, "survivor")
            assert (await me.open("l", "vol:lock", share=SHARE_ALL)).status == STATUS_SUCCESS
            rng = [LockRange(50, 10, True)]
            locking = asyncio.create_task(bus.lock("vol:lock", me.oid("l"), rng, wait=True))
            opening = asyncio.create_task(me.open("o", "vol:oplock", oplock=OPLOCK_BATCH))
            await asyncio.sleep(0.5)
            assert not locking.done() and not opening.done()
            os.kill(proc.pid, signal.SIGKILL)
            killed = time.monotonic()
            assert await asyncio.wait_for(locking, ttl + 3) == STATUS_SUCCESS
            got = await asyncio.wait_for(opening, ttl + 3)
            took = time.monotonic() - killed
            assert (got.status, got.oplock) == (STATUS_SUCCESS, OPLOCK_BATCH)
            snap = await bus.snapshot()
            left = [k for d in snap["files"].values() for k in d["opens"]]
            assert not [k for k in left if k.startswith("doomed/")], left
            await bus.stop()
            return took

        took = run(body(), 20)
        assert took <= ttl + 1.0, f"released {took:.2f}s after the kill (TTL {ttl}s)"
    finally:
        proc.kill()
        proc.wait()


def test_lapsed_registration_comes_back_under_a_new_epoch() -> None:
    async def body() -> None:
        url = isolated(shared_url("redis"))
        bus = await _bus(url, ttl=1.0)
        fenced: list[str] = []

        async def on_fence(node: str) -> None:
            fenced.append(node)

        bus.fence_handler = on_fence
        a = Client(bus, "A")
        assert (await a.open("old", oplock=OPLOCK_BATCH)).oplock == OPLOCK_BATCH
        old_epoch = bus.liveness.nodes["A"].epoch
        # As if this node had been cut off longer than its TTL.
        await bus.redis_store.client.delete(bus.liveness.hb_key("A"))
        deadline = time.monotonic() + 3
        while bus.liveness.nodes["A"].epoch == old_epoch or not fenced:
            assert time.monotonic() < deadline, "no re-registration"
            await asyncio.sleep(0.05)
        assert fenced == ["A"]
        await bus.liveness.nodes["A"].ready.wait()
        # The open granted under the old epoch is gone; new ones work.
        snap = await bus.snapshot()
        assert "A/old" not in snap["files"].get("vol:1", {}).get("opens", {})
        got = await a.open("new", oplock=OPLOCK_BATCH)
        assert (got.status, got.oplock) == (STATUS_SUCCESS, OPLOCK_BATCH)
        entry = (await bus.snapshot())["files"]["vol:1"]["opens"]["A/new"]
        assert entry["epoch"] == bus.liveness.nodes["A"].epoch > old_epoch
        await bus.stop()

    run(body())


def test_a_hung_redis_fails_commands_in_the_timeout_then_recovers(
    private_redis: RedisProc,  # noqa: F811
) -> None:
    """Redis stops answering (SIGSTOP) with the connection open: the opens
    wait while the node may still act (0.6 of its TTL, as for a restart),
    then fail, not never; once Redis answers again the bus works without a
    restart."""

    async def body() -> None:
        url = f"redis://{HOST}:{private_redis.port}?timeout=1"
        bus = await _bus(url, ttl=3.0)
        a = Client(bus, "A")
        assert (await a.open("before")).status == STATUS_SUCCESS
        assert private_redis.proc is not None
        os.kill(private_redis.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            results = await asyncio.gather(
                a.open("during1"), a.open("during2"), return_exceptions=True
            )
            took = time.monotonic() - t0
        finally:
            os.kill(private_redis.proc.pid, signal.SIGCONT)
        assert all(isinstance(r, BusUnavailable) for r in results), results
        assert 0.9 <= took < 3.0 * 0.6 + 1.5, took
        assert (await _open_once_back(a, "after")).status == STATUS_SUCCESS
        await bus.stop()

    run(body(), 30)


def test_redis_down_refuses_opens_then_recovers(private_redis: RedisProc) -> None:  # noqa: F811
    async def body() -> None:
        url = f"redis://{HOST}:{private_redis.port}?timeout=1"
        bus = await _bus(url, ttl=2.0)
        a = Client(bus, "A")
        assert (await a.open("before")).status == STATUS_SUCCESS
        private_redis.stop()
        t0 = time.monotonic()
        with pytest.raises(BusUnavailable):
            await a.open("during")
        assert time.monotonic() - t0 < 2.5
        # Still refused a little later (the heartbeat notices too), and fast.
        await asyncio.sleep(1.5)
        t0 = time.monotonic()
        with pytest.raises(BusUnavailable):
            await a.open("still")
        assert time.monotonic() - t0 < 2.5
        restarted = RedisProc(private_redis.port, private_redis.workdir, private_redis.args)
        private_redis.proc = restarted.start().proc
        assert (await _open_once_back(a, "after")).status == STATUS_SUCCESS
        # The restarted Redis is empty: the node registered afresh.
        assert bus.liveness.nodes["A"].ready.is_set()
        await bus.stop()

    run(body(), 30)


def test_tls_with_password(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    port = free_port()
    try:
        server = start_redis(
            tmp_path / "redis",
            "--port", "0", "--tls-port", str(port),
            "--tls-cert-file", str(tls.cert), "--tls-key-file", str(tls.key),
            "--tls-ca-cert-file", str(tls.ca), "--tls-auth-clients", "no",
            "--requirepass", "s3cret",
            port=port,
        )  # fmt: skip
    except RuntimeError as e:
        if "TLS" in str(e) and "not" in str(e):
            pytest.skip(f"redis-server was built without TLS: {e}")
        raise

    async def body() -> None:
        base = f"rediss://:s3cret@{HOST}:{port}/0?ssl_ca_certs={tls.ca}"
        bus = await _bus(isolated(base))
        a, b = Client(bus, "A"), Client(bus, "B")
        assert (await a.open("h", oplock=OPLOCK_BATCH)).oplock == OPLOCK_BATCH
        assert (await b.open("h", oplock=OPLOCK_BATCH)).oplock == OPLOCK_II
        await bus.stop()
        wrong = make_bus(f"rediss://:wrong@{HOST}:{port}/0?ssl_ca_certs={tls.ca}")
        with pytest.raises(Exception, match="(?i)pass|auth"):
            await wrong.start()
        await wrong.stop()

    try:
        run(body())
    finally:
        server.stop()


def test_status_json_shows_nodes_opens_locks_and_breaks() -> None:
    url = isolated(shared_url("redis"))

    def status(*extra: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "gateway.cli", "status", "--bus", url, *extra]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=30)

    async def body() -> None:
        bus = await _bus(url, break_timeout=30)
        a, b = Client(bus, "A", policy="ignore"), Client(bus, "B")
        assert (await a.open("h", share=SHARE_ALL, oplock=OPLOCK_BATCH)).status == STATUS_SUCCESS
        assert await bus.lock("vol:1", a.oid("h"), [LockRange(0, 8, True)], wait=False) == 0
        waiting = asyncio.create_task(b.open("h", share=SHARE_ALL))  # waits on A's break
        await asyncio.sleep(0.2)
        out = await asyncio.to_thread(status, "--json")
        assert out.returncode == 0, out.stderr
        st = json.loads(out.stdout)
        assert {n["id"] for n in st["nodes"]} == {"A", "B"}
        node_a = next(n for n in st["nodes"] if n["id"] == "A")
        assert node_a["alive"] and node_a["epoch"] > 0 and node_a["heartbeat"] > 0
        doc = st["files"]["vol:1"]
        assert doc["opens"]["A/h"]["oplock"] == OPLOCK_BATCH
        assert doc["locks"] == [{"open_id": "A/h", "offset": 0, "length": 8, "exclusive": True}]
        assert doc["pending"]["B/h"]["node_id"] == "B"  # the open waiting on the break
        (brk,) = st["pending_breaks"]
        assert (brk["open_id"], brk["from"], brk["to"]) == ("A/h", "batch", "II")
        text = await asyncio.to_thread(status)
        assert "A/h" in text.stdout and "pending breaks (1)" in text.stdout
        assert "waiting open B/h node B" in text.stdout
        waiting.cancel()
        await bus.stop()

    run(body(), 30)
    down = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "status", "--bus", f"redis://{HOST}:{free_port()}"],
        capture_output=True, text=True, cwd=REPO, timeout=30,
    )  # fmt: skip
    assert down.returncode == 2 and len(down.stderr.strip().splitlines()) == 1, down.stderr


def test_a_break_round_trip_reads_only_what_it_must(private_redis: RedisProc) -> None:  # noqa: F811
    """The notice carries the value the opener wrote, so the holder's ack
    reads nothing first; the ack grants the waiting open in its own CAS and
    its wake-up carries that value, so the opener only looks at it. No CAS
    fails (Redis's own counts)."""

    async def body() -> None:
        url = f"redis://{HOST}:{private_redis.port}"
        one, two = await _bus(url), await _bus(url)
        a, b = Client(one, "A"), Client(two, "B")
        stats = Redis(host=HOST, port=private_redis.port)

        async def calls() -> Counter[str]:
            info = await stats.info("commandstats")
            return Counter({k.removeprefix("cmdstat_"): v["calls"] for k, v in info.items()})

        costs = []
        for i in range(5):  # the least of five: a heartbeat may fall in one
            file = f"vol:{100 + i}"  # one B's node has not seen yet
            assert (await a.open("h", file, oplock=OPLOCK_BATCH)).oplock == OPLOCK_BATCH
            before = await calls()
            got = await b.open("h", file, oplock=OPLOCK_BATCH)
            assert (got.status, got.oplock) == (STATUS_SUCCESS, OPLOCK_II)
            spent = await calls() - before
            # Every CAS script runs three GETs inside (the bus generation, the
            # key's turn, the key); the rest are reads of their own.
            costs.append((spent["evalsha"], spent["get"] - 3 * spent["evalsha"]))
            await one.close(file, a.oid("h"))
            await two.close(file, b.oid("h"))
        # B's open (waiting in the record), A's ack (granting it): two CAS,
        # none failing. B reads the file it has not seen, and may read once
        # more after subscribing (see Coordinator._open); nothing else is read.
        cas, reads = min(costs)
        assert cas == 2 and reads <= 2, costs
        await stats.aclose()
        await one.stop()
        await two.stop()

    run(body())

