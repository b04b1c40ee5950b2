"""Each node's Prometheus metrics (``--metrics-listen``), scraped over HTTP and
read with prometheus-client's own parser, during and after a cross-node break.

Two node processes on one real redis-server: node 1 on 127.0.0.1, node 2 on
127.0.0.2, the same SMB port; each serves its metrics on its own address. A
client holds a file through node 1 with a Batch oplock and has written to it;
another opens it through node 2, so node 1 must break the oplock and wait for
the acknowledgement: the metrics are scraped from both nodes while the break
waits (in the holder's break handler, before it acknowledges) and after it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from clients.messages import BreakNotice, DurableRequest
from clients.smb2client import Open, SMB2Client
from gateway.protocol.constants import CreateDisposition, OplockLevel

from .conftest import PASSWORD, REPO, USER, GatewayNode, free_port, start_gateway, write_users
from .redis_fixtures import RedisProc, start_redis

HOSTS = ("127.0.0.1", "127.0.0.2")
OPEN_KINDS = ("plain", "durable", "persistent", "disconnected")


@dataclass
class MeteredNode:
    gateway: GatewayNode
    metrics_port: int

    @property
    def url(self) -> str:
        return f"http://{self.gateway.host}:{self.metrics_port}/metrics"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisProc]:
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def nodes(tmp_path: Path, redis: RedisProc) -> Iterator[list[MeteredNode]]:
    share = tmp_path / "share"
    share.mkdir()
    port = free_port()
    started: list[MeteredNode] = []
    try:
        for i, host in enumerate(HOSTS, 1):
            metrics_port = free_port(host)
            extra = [
                "--bus", f"redis://127.0.0.1:{redis.port}", "--node-id", f"n{i}",
                "--break-timeout", "10", "--metrics-listen", f"{host}:{metrics_port}",
            ]  # fmt: skip
            node = start_gateway(tmp_path / f"n{i}", host=host, port=port, share_dir=share,
                                 extra=extra)  # fmt: skip
            started.append(MeteredNode(node, metrics_port))
        yield started
    finally:
        for m in started:
            rc = m.gateway.stop()
            assert rc == 0, f"node exited with {rc}\n{m.gateway.log()[-4000:]}"
            assert "Traceback" not in m.gateway.log(), m.gateway.log()[-4000:]


def scrape(node: MeteredNode) -> list[Sample]:
    """Every sample of the node's page, through prometheus-client's parser."""
    with urllib.request.urlopen(node.url, timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The one sample named ``name`` whose labels include ``labels``."""
    found = [
        s.value for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]  # fmt: skip
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


def test_metrics_during_and_after_a_cross_node_break(nodes: list[MeteredNode]) -> None:
    n1, n2 = nodes
    port = n1.gateway.port
    name = f"metrics-{uuid.uuid4().hex}.dat"
    during: dict[str, list[Sample]] = {}

    async def body() -> tuple[list[Sample], list[Sample]]:
        loop = asyncio.get_running_loop()

        async def on_break(op: Open, notice: BreakNotice) -> None:
            # The opener on node 2 waits on this break: look at both nodes now.
            during["n1"] = await loop.run_in_executor(None, scrape, n1)
            during["n2"] = await loop.run_in_executor(None, scrape, n2)
            await op.acknowledge(notice)

        a = await SMB2Client.connect(HOSTS[0], port, user=USER, password=PASSWORD)
        ta = await a.tree_connect("share")
        held = await ta.create(
            name, disposition=CreateDisposition.OVERWRITE_IF, oplock=OplockLevel.BATCH,
            on_break=on_break,
        )  # fmt: skip
        assert held.oplock_level == OplockLevel.BATCH
        await held.write(0, b"written through node 1")
        kept = await ta.create(
            f"durable-{name}", disposition=CreateDisposition.OVERWRITE_IF,
            oplock=OplockLevel.BATCH,
            durable=DurableRequest(os.urandom(16), persistent=False),
        )  # fmt: skip
        assert kept.durable is not None and not kept.persistent
        before = await loop.run_in_executor(None, scrape, n1)

        b = await SMB2Client.connect(HOSTS[1], port, user=USER, password=PASSWORD)
        tb = await b.tree_connect("share")
        opener = await tb.create(name)  # breaks node 1's Batch oplock
        assert await opener.read(0, 7) == b"written"
        assert held.oplock_level in (OplockLevel.II, OplockLevel.NONE)
        after = (
            await loop.run_in_executor(None, scrape, n1),
            await loop.run_in_executor(None, scrape, n2),
        )
        assert value(before, "smbgw_breaks_sent_total", kind="oplock") == 0
        for c in (a, b):
            await c.close()
        return after

    after1, after2 = asyncio.run(asyncio.wait_for(body(), 60))
    d1, d2 = during["n1"], during["n2"]

    # While the break waits: node 1 sent it and waits for its acknowledgement.
    assert value(d1, "smbgw_breaks_sent_total", kind="oplock") == 1
    assert value(d1, "smbgw_breaks_awaiting_ack") == 1
    assert value(d1, "smbgw_break_latency_seconds_count", kind="oplock") == 0
    assert value(d2, "smbgw_breaks_sent_total", kind="oplock") == 0
    for samples in (d1, d2):
        assert value(samples, "smbgw_connections") == 1
        assert value(samples, "smbgw_sessions") == 1

    # After it: one break, acknowledged, its latency in the histogram.
    assert value(after1, "smbgw_breaks_sent_total", kind="oplock") == 1
    assert value(after1, "smbgw_breaks_sent_total", kind="lease") == 0
    assert value(after1, "smbgw_breaks_awaiting_ack") == 0
    assert value(after1, "smbgw_break_latency_seconds_count", kind="oplock") == 1
    latency = value(after1, "smbgw_break_latency_seconds_sum", kind="oplock")
    assert 0 < latency < 10
    assert value(after1, "smbgw_break_latency_seconds_bucket", kind="oplock", le="+Inf") == 1
    assert value(after2, "smbgw_breaks_sent_total", kind="oplock") == 0

    # The gauges are what the clients hold: on node 1 a plain and a durable
    # open, on node 2 one plain open; one connection and session each.
    assert value(after1, "smbgw_opens", kind="plain") == 1
    assert value(after1, "smbgw_opens", kind="durable") == 1
    assert value(after2, "smbgw_opens", kind="plain") == 1
    assert value(after2, "smbgw_opens", kind="durable") == 0
    for samples in (after1, after2):
        assert value(samples, "smbgw_opens", kind="persistent") == 0
        assert value(samples, "smbgw_opens", kind="disconnected") == 0
        assert value(samples, "smbgw_connections") == 1
        assert value(samples, "smbgw_sessions") == 1
        # Both nodes went to Redis for the break: their round trips are timed.
        assert value(samples, "smbgw_bus_round_trip_seconds_count") > 0
        assert value(samples, "smbgw_bus_round_trip_seconds_sum") > 0
        assert value(samples, "smbgw_bus_recovering") == 0
        assert value(samples, "smbgw_fenced_events_total") == 0

    # One lock space, one bus generation (none shown by a bus that keeps none).
    generations = [
        {s.labels["generation"] for s in samples if s.name == "smbgw_bus_generation_info"}
        for samples in (after1, after2)
    ]
    assert generations[0] == generations[1] and len(generations[0]) <= 1

    # The clients logged off and went: the gauges follow (once node 1 has seen it).
    deadline = time.monotonic() + 10
    while True:
        final = scrape(n1)
        held = [value(final, "smbgw_opens", kind=k) for k in OPEN_KINDS]
        if value(final, "smbgw_connections") == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert value(final, "smbgw_connections") == 0
    assert value(final, "smbgw_sessions") == 0
    assert held == [0, 0, 0, 0]


def test_only_get_of_the_metrics_page_is_answered(nodes: list[MeteredNode]) -> None:
    n1 = nodes[0]
    base = f"http://{n1.gateway.host}:{n1.metrics_port}"
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{base}/other", timeout=10)
    assert missing.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as posted:
        urllib.request.urlopen(urllib.request.Request(f"{base}/metrics", data=b"x"), timeout=10)
    assert posted.value.code == 405


def _serve(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    share = tmp_path / "share"
    share.mkdir(exist_ok=True)
    users = write_users(tmp_path / "users")
    cmd = [
        sys.executable, "-m", "gateway.cli", "serve", "--listen", f"127.0.0.1:{free_port()}",
        "--share", f"share={share}", "--users", str(users), *extra,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=REPO)


@pytest.mark.parametrize("bad", ["127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000"])
def test_a_bad_metrics_address_is_one_line_and_exit_2(tmp_path: Path, bad: str) -> None:
    result = _serve(tmp_path, "--metrics-listen", bad)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "--metrics-listen" in result.stderr, result.stderr


def test_a_metrics_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _serve(tmp_path, "--metrics-listen", f"127.0.0.1:{port}")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"--metrics-listen 127.0.0.1:{port}" in result.stderr
    assert "port in use" in result.stderr


def test_metrics_listen_in_toml(tmp_path: Path) -> None:
    """The TOML key starts the endpoint as the flag does."""
    share = tmp_path / "share"
    share.mkdir()
    metrics_port = free_port()
    conf = tmp_path / "node.toml"
    conf.write_text(f'metrics_listen = "127.0.0.1:{metrics_port}"\n')
    node = start_gateway(tmp_path / "gw", share_dir=share, extra=["--config", str(conf)])
    try:
        samples = scrape(MeteredNode(node, metrics_port))
        assert value(samples, "smbgw_connections") == 0
        # The in-process bus has no Redis round trips and no recoveries to show.
        assert value(samples, "smbgw_bus_round_trip_seconds_count") == 0
        assert value(samples, "smbgw_bus_recoveries_total") == 0
    finally:
        assert node.stop() == 0
    bad = tmp_path / "bad.toml"
    bad.write_text("metrics_listen = 9100\n")
    result = _serve(tmp_path, "--config", str(bad))
    assert result.returncode == 2 and "metrics_listen" in result.stderr, result.stderr


def test_the_break_clock_times_what_needs_an_ack_and_forgets_the_unanswered() -> None:
    """What the SMB layer records for the latency histogram, with a fake clock."""
    from gateway.smb.breakclock import MAX_AGE, BreakClock

    now = [100.0]
    clock = BreakClock(clock=lambda: now[0])
    seen: list[tuple[str, float]] = []
    clock.on_ack = lambda kind, seconds: seen.append((kind, seconds))
    guid, key = b"g" * 16, b"k" * 16
    clock.sent_lease(guid, key, ack_required=True)
    clock.sent_oplock("o1", ack_required=False)  # II to none: counted, not timed
    assert clock.sent == {"oplock": 1, "lease": 1} and clock.awaiting_ack == 1
    now[0] += 0.25
    clock.acked_lease(guid, key)
    clock.acked_oplock("o1")  # nothing was timed for it
    assert seen == [("lease", 0.25)] and clock.awaiting_ack == 0
    clock.sent_oplock("o2", ack_required=True)
    now[0] += MAX_AGE + 1  # its client never answered
    assert clock.awaiting_ack == 0
    clock.acked_oplock("o2")
    assert seen == [("lease", 0.25)]
