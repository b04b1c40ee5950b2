"""smbtorture with its connections spread over two nodes of one cluster.

`bench.samba.run_torture` hands smbtorture a list of UNC paths
(``--unclist``); each new connection takes the next, so in the two-connection
tests the conflicting opens, locks and breaks cross from node 1 to node 2.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.cluster import LocalCluster

from .conftest import local_spec
from .test_torture import NODE_ARGS, check_results, run_suite

KNOWN = tomllib.loads(
    (Path(__file__).parent / "torture" / "known_failures_multinode.toml").read_text()
)
SUITES = list(KNOWN["floors"])


@pytest.mark.torture
@pytest.mark.parametrize("suite", SUITES)
def test_suite_over_two_nodes(suite: str, tmp_path: Path) -> None:
    spec = local_spec(tmp_path, node_args=list(NODE_ARGS))
    cluster = LocalCluster(spec)
    cluster.start()
    outdir = tmp_path / "out"
    try:
        hosts = [host for host, _ in cluster.endpoints]
        results = run_suite(hosts, spec.port, suite, outdir)
    finally:
        cluster.stop()
    logs = "".join(n.log_path.read_text(errors="replace") for n in cluster.nodes if n.log_path)
    check_results(KNOWN, suite, results, logs)
    assert all(n.proc.returncode == 0 for n in cluster.nodes), logs[-3000:]
    assert "Traceback" not in logs, logs[-5000:]
