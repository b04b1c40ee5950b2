"""A local cluster in the foreground: one Redis, N gateway nodes, one volume.

Node i listens on 127.0.0.i (every 127/8 address is local on Linux, so no
alias is needed) on one shared port, the way a real cluster gives every
node its own address and the same port 445. ``smbgw cluster up`` and the
demos and tests use ``LocalCluster``; everything it starts it stops.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from oplock_bus.redis_url import redact, split_password

from .children import die_with_parent
from .config import BUS_PASSWORD_ENV, DEFAULT_WORKERS, MAX_WORKERS, ConfigError, parse_share
from .localredis import LocalRedis, RedisError

MAX_NODES = 16
LISTENING = " listening on "  # in the line a node logs once it serves


def node_address(index: int) -> str:
    """The loopback address of node ``index`` (0-based)."""
    return f"127.0.0.{index + 1}"


@dataclass
class ClusterSpec:
    nodes: int
    port: int
    shares: list[str]
    users: str
    bus: str | None = None  # None: start a private redis-server
    uncoordinated: bool = False  # every node on its own in-process bus (the naive setup)
    continuous_availability: bool = False  # every share CA (`smbgw serve --ca`)
    takeover: bool = False  # a live node serves a dead node's address (`serve --takeover`)
    workers: int = DEFAULT_WORKERS  # processes per node (`serve --workers`)
    node_args: list[str] = field(default_factory=list)  # passed to every `smbgw serve`
    log_dir: Path | None = None  # None: node output goes to our stderr, prefixed

    def check(self) -> None:
        if not 1 <= self.nodes <= MAX_NODES:
            raise ConfigError(f"--nodes {self.nodes}: between 1 and {MAX_NODES}")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port}: not a TCP port")
        if not self.shares:
            raise ConfigError("at least one --share NAME=PATH is needed")
        for share in self.shares:
            cfg = parse_share(share)
            if not os.path.isdir(cfg.path):
                raise ConfigError(f"share {cfg.name}: {cfg.path} is not a directory")
        if not os.access(self.users, os.R_OK):
            raise ConfigError(f"users file {self.users} is not readable")
        if self.uncoordinated and self.bus:
            raise ConfigError("--uncoordinated runs without a shared bus; drop --bus")
        if self.uncoordinated and self.takeover:
            raise ConfigError("--takeover needs the shared bus; drop --uncoordinated")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"--workers {self.workers}: between 1 and {MAX_WORKERS}")
        if self.workers > 1 and self.takeover:
            raise ConfigError("--takeover with --workers above 1 is not supported yet")


@dataclass
class NodeProcess:
    node_id: str
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path | None

    @property
    def endpoint(self) -> tuple[str, int]:
        return (self.host, self.port)


class LocalCluster:
    def __init__(self, spec: ClusterSpec) -> None:
        spec.check()
        self.spec = spec
        self.redis: LocalRedis | None = None
        self.nodes: list[NodeProcess] = []
        self.bus_url: str | None = spec.bus
        self._pumps: list[threading.Thread] = []

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        return [n.endpoint for n in self.nodes]

    def start(self, timeout: float = 20.0, progress: Callable[[str], None] | None = None) -> None:
        say = progress or (lambda _m: None)
        with stopped_on_failure(self.stop):
            if not self.spec.uncoordinated and self.bus_url is None:
                self.redis = LocalRedis().start()
                self.bus_url = self.redis.url
                say(f"redis-server on {self.redis.host}:{self.redis.port}")
            for i in range(self.spec.nodes):
                check_free(node_address(i), self.spec.port)
            for i in range(self.spec.nodes):
                self.nodes.append(self._start_node(i))
            for node in self.nodes:
                self._wait_listening(node, timeout)
                say(f"node {node.node_id} on {node.host}:{node.port}")

    def _start_node(self, index: int) -> NodeProcess:
        host = node_address(index)
        node_id = f"node{index + 1}"
        cmd = [
            sys.executable, "-m", "gateway.cli", "serve",
            "--listen", f"{host}:{self.spec.port}", "--users", self.spec.users,
            "--node-id", node_id,
        ]  # fmt: skip
        for share in self.spec.shares:
            cmd += ["--share", share]
        if self.spec.continuous_availability:
            cmd.append("--ca")
        if self.spec.takeover:
            cmd.append("--takeover")
        cmd += ["--workers", str(self.spec.workers)]
        env = None
        if self.bus_url and not self.spec.uncoordinated:
            # A password in the URL goes to the node in its environment, so
            # that no process list shows it.
            url, password = split_password(self.bus_url)
            cmd += ["--bus", url]
            if password is not None:
                env = dict(os.environ, **{BUS_PASSWORD_ENV: password})
        cmd += self.spec.node_args
        log_path: Path | None = None
        out: int | IO[bytes]
        if self.spec.log_dir is not None:
            self.spec.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.spec.log_dir / f"{node_id}.log"
            # Appended to: a restarted node keeps its earlier life's log.
            out = open(log_path, "ab")  # noqa: SIM115 - the child owns it from here
        else:
            out = subprocess.PIPE
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            # SIGTERM (a clean stop) when we die, even by SIGKILL (children.py).
            preexec_fn=die_with_parent(),
        )  # fmt: skip
        if not isinstance(out, int):
            out.close()
        elif proc.stdout is not None:
            pump = threading.Thread(target=_prefix, args=(proc.stdout, node_id), daemon=True)
            pump.start()
            self._pumps.append(pump)
        return NodeProcess(node_id, host, self.spec.port, proc, log_path)

    def _wait_listening(self, node: NodeProcess, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.proc.poll() is not None:
                why = _tail(node.log_path) if node.log_path else "see its output above"
                raise ConfigError(
                    f"node {node.node_id} exited with status {node.proc.returncode}: {why}"
                )
            try:
                with socket.create_connection(node.endpoint, timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise ConfigError(f"node {node.node_id} not listening on {node.host}:{node.port}")

    def restart(self, index: int, timeout: float = 20.0) -> NodeProcess:
        """Start node ``index`` again (after a kill) and wait until it listens,
        as its log says: with takeover another node may still be answering on
        its address, so a connection proves nothing. Needs ``log_dir``."""
        old = self.nodes[index]
        if old.proc.poll() is None or old.log_path is None:
            raise RuntimeError(f"node {old.node_id} is running, or has no log to watch")
        seen = _listening_lines(old.log_path)
        node = self.nodes[index] = self._start_node(index)
        deadline = time.monotonic() + timeout
        while _listening_lines(old.log_path) == seen:
            if node.proc.poll() is not None or time.monotonic() > deadline:
                raise ConfigError(f"node {node.node_id} did not come back: {_tail(old.log_path)}")
            time.sleep(0.05)
        return node

    def dead_nodes(self) -> list[NodeProcess]:
        return [n for n in self.nodes if n.proc.poll() is not None]

    def stop(self) -> None:
        """SIGTERM every node (they close their opens), then stop Redis."""
        for node in self.nodes:
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            try:
                node.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
        for pump in self._pumps:
            pump.join(timeout=2)
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def stopped_on_failure(stop: Callable[[], None]) -> Iterator[None]:
    """Run ``stop`` if the block fails: what it started must not outlive it;
    a redis-server that would not start is the operator's one line."""
    try:
        yield
    except RedisError as e:
        stop()
        raise ConfigError(str(e)) from None
    except BaseException:
        stop()
        raise


def check_free(host: str, port: int) -> None:
    # Otherwise another program listening there would pass for the node.
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def _listening_lines(path: Path) -> int:
    return path.read_text(errors="replace").count(LISTENING)


def _prefix(stream: IO[bytes], name: str) -> None:
    for line in iter(stream.readline, b""):
        sys.stderr.write(f"[{name}] {line.decode(errors='replace')}")
    stream.close()


def _tail(path: Path | None) -> str:
    if path is None or not path.exists():
        return ""
    lines = path.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


def connect_help(cluster: LocalCluster, user: str = "USER") -> str:
    share = parse_share(cluster.spec.shares[0]).name
    port = cluster.spec.port
    port_opt = "" if port == 445 else f" -p {port}"
    ca = " (continuously available)" if cluster.spec.continuous_availability else ""
    lines = [f"cluster of {len(cluster.nodes)} node(s) serving share '{share}'{ca}:"]
    for node in cluster.nodes:
        lines.append(f"  {node.node_id}: smbclient //{node.host}/{share}{port_opt} -U {user}")
    if cluster.spec.takeover:
        lines.append("takeover: another node answers on a dead node's address until it is back")
    if cluster.bus_url:
        bus = redact(cluster.bus_url)
        lines.append(f"bus: {bus}  (smbgw status --bus {bus})")
    else:
        lines.append("bus: none (--uncoordinated: every node decides alone)")
    lines.append("Ctrl-C stops the cluster.")
    return "\n".join(lines)


def run_foreground(spec: ClusterSpec) -> int:
    """``smbgw cluster up``: start, print how to connect, stop on a signal."""
    cluster = LocalCluster(spec)
    stop = threading.Event()

    def on_signal(_sig: int, _frame: object) -> None:
        stop.set()

    # SIGHUP too: a closed terminal sends it to the whole group, and the nodes
    # themselves only reload on it; the cluster must not outlive its terminal.
    stopping = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, on_signal) for s in stopping}
    try:
        cluster.start(progress=lambda m: print(f"started {m}", file=sys.stderr))
        print(connect_help(cluster, _first_user(spec.users)), flush=True)
        status = 0
        while not stop.wait(0.5):
            dead = cluster.dead_nodes()
            if dead:
                names = ", ".join(f"{n.node_id} (status {n.proc.returncode})" for n in dead)
                print(f"smbgw: node stopped unexpectedly: {names}; stopping", file=sys.stderr)
                status = 1
                break
        return status
    finally:
        print("stopping the cluster", file=sys.stderr)
        cluster.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _first_user(users_file: str) -> str:
    try:
        for line in Path(users_file).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and ":" in line:
                return line.split(":", 1)[0]
    except OSError:
        pass
    return "USER"
