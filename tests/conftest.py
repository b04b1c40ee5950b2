"""Fixtures that start real things: gateway processes on loopback, real clients."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.cluster import ClusterSpec, LocalCluster

REPO = Path(__file__).resolve().parent.parent
USER, PASSWORD = "test", "test"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {host}:{port} after {timeout}s")


@dataclass
class GatewayNode:
    host: str
    port: int
    share_dir: Path
    users_file: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    share: str = "share"
    extra: list[str] = field(default_factory=list)

    @property
    def unc(self) -> str:
        return f"//{self.host}/{self.share}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def write_users(path: Path) -> Path:
    path.write_text(f"# test users\n{USER}:{PASSWORD}\n")
    return path


def start_gateway(
    workdir: Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    extra: list[str] | None = None,
    share_dir: Path | None = None,
    flags: bool = True,
) -> GatewayNode:
    """Start a node; with ``flags=False`` only ``extra`` configures it (e.g. --config)."""
    workdir.mkdir(parents=True, exist_ok=True)
    share_dir = share_dir or workdir / "share"
    share_dir.mkdir(exist_ok=True)
    users = write_users(workdir / "users")
    port = port or free_port(host)
    log_path = workdir / f"gateway-{host}-{port}.log"
    base = ["--listen", f"{host}:{port}", "--share", f"share={share_dir}", "--users", str(users)]
    cmd = [sys.executable, "-m", "gateway.cli", "serve", *(base if flags else []), *(extra or [])]
    logf = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=REPO)
    logf.close()
    try:
        wait_for_port(host, port, proc, timeout=20)
    except RuntimeError as e:
        proc.kill()
        raise RuntimeError(f"{e}\n{log_path.read_text(errors='replace')}") from None
    return GatewayNode(host, port, share_dir, users, log_path, proc, extra=extra or [])


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayNode]:
    node = start_gateway(tmp_path / "gw")
    yield node
    rc = node.stop()
    assert rc == 0, f"gateway exited with {rc}\n{node.log()[-4000:]}"
    assert "Traceback" not in node.log(), node.log()[-4000:]


@pytest.fixture(scope="module")
def module_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayNode]:
    node = start_gateway(tmp_path_factory.mktemp("gw"))
    yield node
    rc = node.stop()
    assert rc == 0, f"gateway exited with {rc}\n{node.log()[-4000:]}"
    assert "Traceback" not in node.log(), node.log()[-4000:]


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is not installed; scripts/install.sh installs it")
    return path


def smbclient(
    node: GatewayNode, commands: str, *extra: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run Debian's smbclient against a node with ``-c commands``."""
    cmd = [
        need("smbclient"), node.unc, "-p", str(node.port), "-U", f"{USER}%{PASSWORD}",
        *extra, "-c", commands,
    ]  # fmt: skip
    env = dict(os.environ, HOME=str(node.share_dir.parent))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def local_spec(
    tmp: Path,
    *,
    nodes: int = 2,
    node_args: list[str] | None = None,
    ca: bool = False,
    takeover: bool = False,
) -> ClusterSpec:
    """A LocalCluster of ``nodes`` on a fresh port, sharing ``tmp/share`` to the
    test user, its logs in ``tmp/logs``."""
    share = tmp / "share"
    share.mkdir(exist_ok=True)
    return ClusterSpec(
        nodes=nodes,
        port=free_port(),
        shares=[f"share={share}"],
        users=str(write_users(tmp / "users")),
        node_args=node_args or [],
        continuous_availability=ca,
        takeover=takeover,
        log_dir=tmp / "logs",
    )


@contextmanager
def signalled_cluster(spec: ClusterSpec) -> Iterator[LocalCluster]:
    """A running LocalCluster whose nodes a test may stop (SIGSTOP) or kill: a
    stopped node is resumed before the cluster stops, whatever the test did,
    and no node may have logged a traceback."""
    c = LocalCluster(spec)
    c.start()
    try:
        yield c
    finally:
        for node in c.nodes:
            if node.proc.poll() is None:
                os.kill(node.proc.pid, signal.SIGCONT)
        c.stop()
    for node in c.nodes:
        assert node.log_path is not None
        assert "Traceback" not in node.log_path.read_text(), node.log_path
