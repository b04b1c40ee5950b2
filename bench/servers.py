"""The servers the benchmarks compare, each as a context manager yielding its endpoints.

* ``gateway(work, nodes)``: a gateway cluster (``gateway.cluster.LocalCluster``,
  its own Redis when ``nodes`` > 1 is coordinated), share at
  ``gateway_share(work, nodes)``;
* ``smbd(work)``: one Samba smbd (``../shared/torture/start-smbd.sh``), share
  at ``smbd_share(work)``;
* ``ctdb(work)``: a 2-node clustered Samba (``start-ctdb-cluster.sh``).

All need root: smbd switches to the test user, ctdb adds loopback aliases.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clients.demo_common import free_cluster_port
from gateway.cluster import ClusterSpec, LocalCluster

REPO = Path(__file__).resolve().parent.parent
TORTURE = REPO.parent / "shared" / "torture"
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


def _run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 180) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")


def _smbd_env() -> dict[str, str]:
    """start-smbd.sh's default VFS modules are not installed everywhere; the workload needs none."""
    env = dict(os.environ)
    out = subprocess.run(["smbd", "-b"], capture_output=True, text=True).stdout
    modules = next(
        (Path(line.split(":", 1)[1].strip()) for line in out.splitlines() if "MODULESDIR:" in line),
        None,
    )
    if modules is None or not (modules / "vfs" / "streams_xattr.so").exists():
        env["SMBD_VFS_OBJECTS"] = " "
    return env


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
    port = free_cluster_port(1)
    d = work / "smbd"
    _run(["bash", str(TORTURE / "start-smbd.sh"), str(d), str(port)], env=_smbd_env())
    try:
        yield [("127.0.0.1", port)]
    finally:
        subprocess.run(["bash", str(TORTURE / "stop-smbd.sh"), str(d)], capture_output=True)


@contextmanager
def ctdb(work: Path) -> Iterator[list[Endpoint]]:
    if shutil.which("ctdbd") is None:
        _run(["apt-get", "install", "-y", "-q", "ctdb"], timeout=600)
    port = free_cluster_port(2)
    d = work / "ctdb"
    _run(["bash", str(TORTURE / "start-ctdb-cluster.sh"), str(d), "2", str(port)])
    try:
        yield [("127.0.0.1", port), ("127.0.0.2", port)]
    finally:
        subprocess.run(["bash", str(TORTURE / "stop-ctdb-cluster.sh"), str(d)], capture_output=True)
