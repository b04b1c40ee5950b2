"""`smbgw cluster up`: starts what it says, prints how to connect, stops it all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .conftest import PASSWORD, REPO, USER, free_port, need, write_users


def _cluster_cmd(tmp_path: Path, *extra: str) -> list[str]:
    share = tmp_path / "share"
    share.mkdir(exist_ok=True)
    users = write_users(tmp_path / "users")
    return [
        sys.executable, "-m", "gateway.cli", "cluster", "up", "--share", f"share={share}",
        "--users", str(users), *extra,
    ]  # fmt: skip


def _node_pids(port: int) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-f", f"serve --listen 127.0.0.[0-9]+:{port} "], capture_output=True, text=True
    )
    return [int(p) for p in out.stdout.split()]


def test_missing_redis_server_is_a_one_line_error_with_the_install_command(
    tmp_path: Path,
) -> None:
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))
    port = str(free_port())
    proc = subprocess.run(
        _cluster_cmd(tmp_path, "--nodes", "2", "--port", port),
        capture_output=True, text=True, timeout=30, env=env, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "redis-server not found" in lines[-1] and "apt-get install redis-server" in lines[-1]
    assert not _node_pids(int(port))


def test_bad_options_are_refused(tmp_path: Path) -> None:
    for extra, words in (
        (["--nodes", "0"], "--nodes"),
        (["--share", "x=/nonexistent/dir"], "not a directory"),
        (["--uncoordinated", "--bus", "redis://127.0.0.1:1"], "--uncoordinated"),
    ):
        proc = subprocess.run(
            _cluster_cmd(tmp_path, *extra), capture_output=True, text=True, timeout=30, cwd=REPO
        )
        assert proc.returncode == 2, (extra, proc.stderr)
        assert words in proc.stderr, (extra, proc.stderr)


def _up(tmp_path: Path, nodes: int, *extra: str) -> tuple[subprocess.Popen[str], int, str]:
    port = free_port()
    proc = subprocess.Popen(
        _cluster_cmd(tmp_path, "--nodes", str(nodes), "--port", str(port), *extra),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    assert proc.stdout is not None
    banner = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        banner.append(line)
        if "Ctrl-C" in line:
            return proc, port, "".join(banner)
    proc.kill()
    assert proc.stderr is not None
    raise AssertionError(f"cluster did not come up: {''.join(banner)} {proc.stderr.read()}")


def _smbclient(host: str, port: int, home: Path, commands: str) -> str:
    out = subprocess.run(
        [need("smbclient"), f"//{host}/share", "-p", str(port), "-U", f"{USER}%{PASSWORD}",
         "-c", commands],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, HOME=str(home)),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _stop(proc: subprocess.Popen[str], port: int) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert not _node_pids(port), "a node outlived the cluster"


def test_cluster_up_prints_how_to_connect_and_stops_everything(tmp_path: Path) -> None:
    proc, port, banner = _up(tmp_path, 3)
    try:
        for i in (1, 2, 3):
            assert f"node{i}: smbclient //127.0.0.{i}/share -p {port} -U {USER}" in banner
        assert "bus: redis://127.0.0.1:" in banner
        assert len(_node_pids(port)) == 3
        for i in (1, 2, 3):
            (tmp_path / f"n{i}.txt").write_text(f"from node {i}\n")
            _smbclient(f"127.0.0.{i}", port, tmp_path, f"put {tmp_path / f'n{i}.txt'} n{i}.txt")
        for i in (1, 2, 3):
            got = tmp_path / f"got{i}.txt"
            other = i % 3 + 1
            _smbclient(f"127.0.0.{i}", port, tmp_path, f"get n{other}.txt {got}")
            assert got.read_text() == f"from node {other}\n"
    finally:
        _stop(proc, port)
    redis_port = int(banner.split("bus: redis://127.0.0.1:")[1].split("/")[0])
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", redis_port)) != 0, "Redis outlived the cluster"


def test_a_dead_node_stops_the_cluster_with_an_error(tmp_path: Path) -> None:
    proc, port, _ = _up(tmp_path, 2, "--uncoordinated")
    pids = _node_pids(port)
    os.kill(pids[0], signal.SIGKILL)
    assert proc.wait(timeout=30) == 1
    assert proc.stderr is not None and "stopped unexpectedly" in proc.stderr.read()
    assert not _node_pids(port)


def test_a_port_taken_on_a_node_address_is_refused(tmp_path: Path) -> None:
    port = free_port("127.0.0.2")
    with socket.socket() as busy:
        busy.bind(("127.0.0.2", port))
        busy.listen()
        proc = subprocess.run(
            _cluster_cmd(tmp_path, "--nodes", "2", "--port", str(port), "--uncoordinated"),
            capture_output=True, text=True, timeout=30, cwd=REPO,
        )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"cannot listen on 127.0.0.2:{port}" in proc.stderr
    assert not _node_pids(port)


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (every thread's children, from /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs: a zombie (dead, waiting for a reaper that,
    in a container, may never come) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_children_die_with_a_cluster_killed_by_sigkill(tmp_path: Path) -> None:
    """SIGKILL runs no cleanup in `cluster up`: its nodes and its redis-server
    go all the same (PR_SET_PDEATHSIG, gateway/children.py)."""
    proc, port, banner = _up(tmp_path, 2)
    children = _children(proc.pid)
    nodes = [p for p in children if "gateway.cli serve" in _cmdline(p)]
    redis = [p for p in children if "redis-server" in _cmdline(p)]
    assert len(nodes) == 2 and len(redis) == 1, [_cmdline(p) for p in children]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(_running(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [f"{p}: {_cmdline(p)}" for p in children if _running(p)]
    for pid in [p for p in children if _running(p)]:  # do not leave them to the next test
        os.kill(pid, signal.SIGKILL)
    assert not left, f"outlived the cluster: {left}"
    redis_port = int(banner.split("bus: redis://127.0.0.1:")[1].split("/")[0])
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", redis_port)) != 0, "Redis outlived the cluster"
