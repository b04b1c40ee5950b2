"""`smbgw demo redis-loss` (issue 13): the coordinated Jet workload through a
Redis restart and a Sentinel failover loses nothing and drops no client.

Each run starts its own Redis (a redis-server killed with SIGKILL and started
again empty; or a master, a replica and three Sentinels, the master killed
and the replica wiped before its promotion) and a 2-node cluster on it. The
clients hold no durable handle and do not reconnect, so a dropped connection
would end the run; the report must show none, and a pause.

Every process runs on loopback and is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import shutil

import pytest

from clients.demo_common import demo_cluster
from clients.demo_redis_loss import RedisLossOptions, losable_redis, run_redis_loss_workload

from .test_demo import one_json_object, smbgw

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["restart", "sentinel"])
def test_the_workload_goes_through_the_loss_with_nothing_lost_and_nobody_dropped(
    how: str,
) -> None:
    opts = RedisLossOptions(how=how, clients=4, updates=300, seed=3, timeout=60)
    with losable_redis(how) as redis, demo_cluster(2, bus=redis.url) as cluster:
        report = asyncio.run(run_redis_loss_workload(cluster, redis, opts))
        logs = "".join(
            n.log_path.read_text(errors="replace")
            for n in cluster.cluster.nodes
            if n.log_path is not None
        )
    jet, figures = report.jet, report.as_dict()
    assert jet.committed == opts.updates, figures
    assert jet.lost == 0 and jet.corrupt_pages == 0, figures
    assert report.dropped == 0 and not report.damaged, figures
    # Redis was lost part way, with work done before and after.
    assert report.loss is not None and report.lost_after is not None, figures
    assert 0 < report.lost_after < opts.updates, figures
    assert "bus recovered under generation" in logs, logs[-3000:]
    assert "dropping every client connection" not in logs
    # The pause: at least until Redis was back, and well within the nodes'
    # fencing window (0.6 of the default node_ttl of 5 s) plus a recovery.
    assert report.loss.seconds <= report.seconds_paused < report.loss.seconds + 3, figures
    assert len(figures["paused"]) == opts.clients  # type: ignore[arg-type]


@pytest.mark.timeout(90)
def test_the_command_prints_one_json_object_and_exits_0() -> None:
    proc = smbgw(
        "demo", "redis-loss", "--json", "--how", "restart", "--updates", "200",
        "--clients", "2", "--seed", "5", "--timeout", "60",
        timeout=90,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    figures = one_json_object(proc.stdout)
    assert figures["committed"] == 200 and figures["lost"] == 0, figures
    assert figures["corrupt_pages"] == 0 and figures["dropped"] == 0, figures
    assert figures["how"] == "restart" and isinstance(figures["redis_lost_after"], int)
    paused = figures["seconds_paused"]
    assert isinstance(paused, float) and paused > 0, figures


def test_help_and_bad_options() -> None:
    out = smbgw("demo", "redis-loss", "--help", timeout=30).stdout
    for option in ("--how", "--clients", "--updates", "--seed", "--json", "exit status"):
        assert option in out
    proc = smbgw("demo", "redis-loss", "--how", "cluster", timeout=30)
    assert proc.returncode == 2 and "invalid choice: 'cluster'" in proc.stderr, proc.stderr
    assert proc.stdout == ""
