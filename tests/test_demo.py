"""`smbgw demo access` and `smbgw demo break`: the issue's done-means, as run by a user.

* uncoordinated nodes (one in-process bus each, one directory) lose updates,
  in every one of 5 seeded runs of the real command;
* a coordinated 2-node cluster loses none and corrupts no page in 20 seeded
  runs of 4 clients (one cluster, the library called per seed, to stay
  fast) and in a run of the real command;
* the break demo: B reads A's unflushed writes, and the break reaches A
  before B's CREATE completes;
* options are checked, and Ctrl-C or SIGTERM stop every process and remove
  the temporary share.

Every process runs on loopback and is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.demo_access import AccessOptions, run_workload
from clients.demo_common import DemoCluster, demo_cluster

from .conftest import REPO

UPDATES = 1000  # the command's default: the tests run what a user runs

needs_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)


def smbgw(
    *args: str, timeout: float = 90, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


def one_json_object(stdout: str) -> dict[str, object]:
    lines = stdout.strip().splitlines()
    assert len(lines) == 1, stdout
    value = json.loads(lines[0])
    assert isinstance(value, dict)
    return value


# -- options ------------------------------------------------------------------------------


def test_help_names_the_options_and_the_exit_status() -> None:
    out = smbgw("demo", "access", "--help").stdout
    for option in ("--nodes", "--clients", "--updates", "--seed", "--uncoordinated", "--json"):
        assert option in out
    assert "exit status" in out and "0    no committed update lost" in out and "1    damage" in out
    out = smbgw("demo", "break", "--help").stdout
    assert "--json" in out and "exit status" in out and "timeline" in out
    assert "access" in smbgw("demo", "--help").stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["demo"], "required: {access,break,failover,redis-loss}"),
        (["demo", "access", "--nodes", "0"], "--nodes: nodes must be between 1 and 16, not 0"),
        (["demo", "access", "--nodes", "two"], "'two' is not a whole number"),
        (["demo", "access", "--clients", "0"], "clients must be between 1 and 64, not 0"),
        (["demo", "access", "--updates", "-5"], "updates must be at least 1"),
        (["demo", "access", "--port", "70000"], "a port must be between 1 and 65535"),
        (["demo", "access", "--timeout", "0"], "more than 0 seconds"),
        (["demo", "access", "--bogus"], "unrecognized arguments: --bogus"),
        (["demo", "break", "--nodes", "3"], "unrecognized arguments: --nodes"),
    ],
)
def test_bad_options_are_refused(args: list[str], words: str) -> None:
    proc = smbgw(*args, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr, proc.stderr
    assert proc.stdout == ""


def test_missing_redis_server_is_a_one_line_error(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(Path(sys.executable).parent), TMPDIR=str(tmp_path))
    proc = smbgw("demo", "access", "--json", timeout=30, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("smbgw: redis-server not found")
    assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == []  # the temporary share is gone too


def test_port_in_use_is_a_one_line_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))  # node 2's address: node 1's alone would not catch it
        s.listen()
        port = s.getsockname()[1]
        proc = smbgw("demo", "break", "--port", str(port), timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"smbgw: --port {port}: in use on 127.0.0.2"


# -- demo access ---------------------------------------------------------------------------


@pytest.mark.timeout(150)
@pytest.mark.parametrize("seed", range(1, 6))
def test_uncoordinated_nodes_lose_updates(seed: int) -> None:
    proc = smbgw("demo", "access", "--uncoordinated", "--json", "--seed", str(seed))
    figures = one_json_object(proc.stdout)
    assert set(figures) == {"committed", "lost", "corrupt_pages", "seconds", "breaks"}
    assert figures["committed"] == UPDATES
    assert isinstance(figures["lost"], int) and figures["lost"] > 0, figures
    assert proc.returncode == 1, proc.stderr  # damage
    assert "updates" not in proc.stderr  # --json: no progress bar


@pytest.fixture(scope="module")
def coordinated() -> Iterator[DemoCluster]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    with demo_cluster(2) as cluster:
        yield cluster


@needs_redis
@pytest.mark.timeout(240)
def test_coordinated_cluster_loses_nothing_in_20_seeded_runs(coordinated: DemoCluster) -> None:
    breaks = []
    for seed in range(1, 21):
        opts = AccessOptions(nodes=2, clients=4, updates=UPDATES, seed=seed, timeout=60)
        report = asyncio.run(run_workload(coordinated, opts))
        assert report.committed == UPDATES, (seed, report.details())
        assert report.lost == 0 and report.corrupt_pages == 0, (seed, report.details())
        breaks.append(report.breaks)
        assert not coordinated.cluster.dead_nodes(), seed
    # The clients did cache and were broken across nodes, or the run proves nothing.
    assert min(breaks) >= 1, breaks


@needs_redis
@pytest.mark.timeout(120)
def test_coordinated_command_loses_nothing() -> None:
    proc = smbgw("demo", "access", "--json", "--seed", "42")
    figures = one_json_object(proc.stdout)
    assert figures["committed"] == UPDATES and figures["lost"] == 0, figures
    assert figures["corrupt_pages"] == 0 and isinstance(figures["breaks"], int), figures
    assert isinstance(figures["seconds"], float) and figures["seconds"] > 0
    assert proc.returncode == 0, proc.stderr


@needs_redis
@pytest.mark.timeout(120)
def test_table_and_progress_without_json() -> None:
    proc = smbgw("demo", "access", "--nodes", "2", "--clients", "3", "--updates", "200")
    assert proc.returncode == 0, proc.stderr
    for row in (
        "updates committed",
        "updates lost",
        "pages with a bad checksum",
        "elapsed time",
        "breaks sent",
    ):
        assert row in proc.stdout, proc.stdout
    assert "200/200" in proc.stderr  # the progress bar, on stderr
    assert "OK" in proc.stdout


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@needs_redis
@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_interrupt_stops_everything(tmp_path: Path, how: signal.Signals) -> None:
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "demo", "access", "--updates", "10000000"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
        # As from a terminal: a suite started in the background of a script
        # inherits SIGINT ignored, and the demo would too.
        preexec_fn=_sigint_default,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        # The share dir exists from the start, node 2's log once the last node runs.
        pattern = "smbgw-demo-*/logs/node2.log"
        while time.monotonic() < deadline and not list(tmp_path.glob(pattern)):
            time.sleep(0.1)
        time.sleep(1.5)  # into the workload
        if how in (signal.SIGINT, signal.SIGHUP):
            # What Ctrl-C (or a closed terminal) does: the whole foreground
            # group; the nodes only reload on SIGHUP, the demo must stop them.
            os.killpg(proc.pid, how)
        else:
            proc.send_signal(how)  # only the demo: it must stop its children itself
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    time.sleep(0.3)
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # no node, no redis-server left in its process group
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("smbgw-demo-")] == []


# -- demo break ----------------------------------------------------------------------------


def _times(result: dict[str, object]) -> dict[str, float]:
    events = result["events"]
    assert isinstance(events, list)
    first: dict[str, float] = {}
    for e in events:
        first.setdefault(e["event"], e["ms"])
    return first


@needs_redis
@pytest.mark.timeout(60)
@pytest.mark.parametrize("extra", [[], ["--lease"]], ids=["batch-oplock", "rwh-lease"])
def test_break_reaches_a_before_b_and_b_reads_a_unflushed_writes(extra: list[str]) -> None:
    proc = smbgw("demo", "break", "--json", *extra, timeout=60)
    result = one_json_object(proc.stdout)
    assert proc.returncode == 0, (proc.stderr, result)
    assert result["bytes_on_disk_before_b"] == 0  # A's writes were only in its cache
    assert result["data_matches"] is True and result["b_lock_refused"] is True
    assert result["break_before_create_completed"] is True
    t = _times(result)
    assert (
        t["b_create_sent"]
        <= t["break_received"]
        <= t["a_flushed"]
        <= t["a_locks_pushed"]
        <= t["b_create_completed"]
        <= t["b_read"]
    ), t
    assert "a_acked" in t
    assert proc.stderr == ""  # --json: nothing else


@pytest.mark.timeout(60)
def test_break_demo_fails_without_coordination() -> None:
    proc = smbgw("demo", "break", "--json", "--uncoordinated", timeout=60)
    result = one_json_object(proc.stdout)
    assert proc.returncode == 1
    assert result["data_matches"] is False and result["ok"] is False
    assert "break_received" not in _times(result)


@needs_redis
@pytest.mark.timeout(60)
def test_break_timeline_as_a_table() -> None:
    proc = smbgw("demo", "break", timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    order = [
        "B's CREATE sent",
        "break received by A",
        "A flushed",
        "A acknowledged",
        "B's CREATE completed",
        "B read the file",
    ]
    at = [next(i for i, line in enumerate(lines) if what in line) for what in order]
    # A's acknowledgement's response may reach A after B's CREATE response: only
    # the server's order is fixed, so the acknowledgement is only checked to be there.
    del at[3]
    assert at == sorted(at), proc.stdout
    assert "equal to A's writes" in proc.stdout and "NOT equal" not in proc.stdout
    assert "yes  the break reached A before B's CREATE completed" in proc.stdout
    assert "yes  B read exactly A's unflushed writes" in proc.stdout
