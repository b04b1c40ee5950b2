"""The servers the benchmarks compare, each as a context manager yielding its endpoints.

* ``gateway(work, nodes)``: a gateway cluster (``gateway.cluster.LocalCluster``,
  its own Redis when ``nodes`` > 1 is coordinated), share at
  ``gateway_share(work, nodes)``;
* ``smbd(work)``: one Samba smbd (``bench.samba.Smbd``), share at
  ``smbd_share(work)``;
* ``ctdb(work)``: a 2-node clustered Samba (``bench.samba.CtdbCluster``).

All need root: smbd switches to the test user, ctdb adds loopback aliases.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.samba import CtdbCluster, Smbd
from clients.demo_common import free_cluster_port
from gateway.cluster import ClusterSpec, LocalCluster

Endpoint = tuple[str, int]


def work_dir(prefix: str) -> Path:
    """A fresh directory for one benchmark's servers."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    work.chmod(0o755)  # smbd serves its share as user test, who must reach it
    return work


def gateway_share(work: Path, nodes: int) -> Path:
    return work / f"gw{nodes}" / "share"


def smbd_share(work: Path) -> Path:
    return work / "smbd" / "share"


@contextmanager
def gateway(work: Path, nodes: int) -> Iterator[list[Endpoint]]:
    share = gateway_share(work, nodes)
    share.mkdir(parents=True, exist_ok=True)
    users = work / f"gw{nodes}" / "users"
    users.write_text("test:test\n")
    spec = ClusterSpec(
        nodes=nodes,
        port=free_cluster_port(nodes),
        shares=[f"share={share}"],
        users=str(users),
        node_args=["--log-level", "WARNING"],
        log_dir=work / f"gw{nodes}" / "logs",
    )
    with LocalCluster(spec) as cluster:
        yield cluster.endpoints


@contextmanager
def smbd(work: Path) -> Iterator[list[Endpoint]]:
    with Smbd(work / "smbd", free_cluster_port(1)).start() as server:
        yield server.endpoints


@contextmanager
def ctdb(work: Path) -> Iterator[list[Endpoint]]:
    with CtdbCluster(work / "ctdb", 2, free_cluster_port(2)).start() as cluster:
        yield cluster.endpoints
