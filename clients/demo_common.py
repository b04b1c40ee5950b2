"""What the ``smbgw demo`` commands share: a throwaway cluster, a fault part
way through the workload, progress, tables.

The demos are meant to be run by someone who has never configured the
gateway, so `demo_cluster` makes everything a cluster needs (a share
directory, a users file, a free port) in a temporary directory and removes
it again, whatever way the demo ends. Output goes through `rich`: progress
and status lines on stderr, so stdout holds only the result (a table, or
exactly one JSON object with ``--json``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from gateway.cluster import ClusterSpec, LocalCluster, node_address
from gateway.config import ConfigError
from gateway.users import hash_line

from .jet import JetReport
from .jet import Progress as JetProgress
from .smb2client import SmbError

USER, PASSWORD, SHARE = "test", "test", "share"

# Exit statuses of the demos, also listed in their --help.
OK, DAMAGE, SETUP_ERROR, INTERRUPTED = 0, 1, 2, 130


def free_cluster_port(nodes: int, attempts: int = 20) -> int:
    """A port free on every node address: node i listens on 127.0.0.(i+1)."""
    for _ in range(attempts):
        with socket.socket() as s:
            s.bind((node_address(0), 0))
            port = int(s.getsockname()[1])
        if all(_bindable(node_address(i), port) for i in range(1, nodes)):
            return port
    raise ConfigError(f"no port free on all of 127.0.0.1..{nodes} after {attempts} tries")


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class DemoCluster:
    cluster: LocalCluster
    workdir: Path
    share_dir: Path

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        return self.cluster.endpoints

    def node_log_tail(self, lines: int = 5) -> str:
        """The last lines of every node's log, to explain a failure."""
        out: list[str] = []
        for node in self.cluster.nodes:
            if node.log_path is not None and node.log_path.exists():
                tail = node.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
                out += [f"[{node.node_id}] {line}" for line in tail]
        return "\n".join(out)


@contextmanager
def demo_cluster(
    nodes: int,
    *,
    port: int | None = None,
    uncoordinated: bool = False,
    say: Callable[[str], None] | None = None,
    continuous_availability: bool = False,
    takeover: bool = False,
    node_args: Sequence[str] = (),
    bus: str | None = None,
) -> Iterator[DemoCluster]:
    """Start ``nodes`` gateway nodes over one fresh share; stop them and clean up on exit.

    ``continuous_availability``, ``takeover`` and ``node_args`` go to every
    node (`smbgw serve --ca --takeover ...`), for the failover demo. ``bus``:
    a Redis the caller started (and may break), instead of a private one."""
    workdir = Path(tempfile.mkdtemp(prefix="smbgw-demo-"))
    try:
        share_dir = workdir / SHARE
        share_dir.mkdir()
        users = workdir / "users"
        users.write_text(hash_line(USER, PASSWORD) + "\n")  # as `smbgw passwd` stores it
        users.chmod(0o600)
        if port is None:
            port = free_cluster_port(nodes)
        else:
            # LocalCluster takes anything that accepts a connection for a node
            # that is up, so a foreign listener on the port would pass for one.
            busy = [node_address(i) for i in range(nodes) if not _bindable(node_address(i), port)]
            if busy:
                raise ConfigError(f"--port {port}: in use on {', '.join(busy)}")
        spec = ClusterSpec(
            nodes=nodes,
            port=port,
            shares=[f"{SHARE}={share_dir}"],
            users=str(users),
            bus=bus,
            uncoordinated=uncoordinated,
            continuous_availability=continuous_availability,
            takeover=takeover,
            # Node logs go to files: their lines would tear the progress bar apart.
            node_args=["--log-level", "WARNING", *node_args],
            log_dir=workdir / "logs",
        )
        cluster = LocalCluster(spec)
        cluster.start(progress=(lambda m: say(f"started {m}")) if say else None)
        try:
            yield DemoCluster(cluster, workdir, share_dir)
        finally:
            if say:
                say("stopping the cluster")
            cluster.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C, so ``finally`` blocks stop the nodes either way;
    SIGHUP too (a closed terminal), since the nodes only reload on it."""

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_term) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def quiet_client_warnings() -> Iterator[None]:
    """The clients log refused break acks as warnings; in a demo they only add noise."""
    logger = logging.getLogger("clients")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class Ui:
    """Status lines and progress on stderr, or nothing at all (``--json``)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.err = Console(stderr=True, highlight=False)
        self.out = Console(highlight=False)

    def say(self, message: str) -> None:
        if self.enabled:
            self.err.print(f"[dim]{escape(message)}[/dim]")

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int, int], None]]:
        """A callback ``(done, total)`` that moves a bar; a no-op when disabled."""
        if not self.enabled:
            yield lambda _done, _total: None
            return
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=self.err,
            transient=False,
        )
        task = bar.add_task(description, total=total)
        with bar:
            yield lambda done, total: bar.update(task, completed=done, total=total)


def figures_table(title: str, rows: Sequence[tuple[str, str]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    return table


# -- a fault part way through the workload (demo failover, demo redis-loss) ---------------


def fault_point(rng: random.Random, updates: int) -> int:
    """Committed updates before the fault: between a quarter and half of them,
    so there is work done before it and work to do after."""
    return rng.randint(max(1, updates // 4), max(1, updates // 2))


class Trigger:
    """Calls ``fire()`` once ``after`` updates are committed and every client
    has the database open (before that, a client would have nothing at stake).

    Its ``on_open`` and ``on_commit`` are the workload's callbacks; they run on
    the clients' event loop, so ``fire`` must not block it."""

    def __init__(self, after: int, clients: int, fire: Callable[[], None]) -> None:
        self.after = after
        self.clients = clients
        self.fire = fire
        self.opened = 0
        self.committed = 0
        self.fired_after: int | None = None  # committed updates when it fired

    def on_open(self, _client: int) -> None:
        self.opened += 1
        self._maybe_fire()

    def on_commit(self, done: int) -> None:
        self.committed = done
        self._maybe_fire()

    def _maybe_fire(self) -> None:
        if self.fired_after is None and self.opened >= self.clients:
            if self.committed >= self.after:
                self.fired_after = self.committed
                self.fire()


def both(first: Callable[[int], None], bar: JetProgress) -> JetProgress:
    """A progress callback feeding ``first`` the committed count and moving ``bar``."""

    def progress(done: int, total: int) -> None:
        first(done)
        bar(done, total)

    return progress


async def workload_result(
    task: asyncio.Future[JetReport], finished: bool, cluster: DemoCluster, timeout: float
) -> JetReport:
    """The workload's report, or a `ConfigError` saying why there is none
    (with the nodes' last log lines)."""
    if not finished:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ConfigError(
            f"the workload did not finish in {timeout:g} s; node logs:\n" + cluster.node_log_tail()
        )
    try:
        return task.result()
    except (OSError, SmbError) as e:  # TimeoutError and a ReconnectFailed are OSErrors
        raise ConfigError(
            f"the workload failed: {str(e) or type(e).__name__}; node logs:\n"
            + cluster.node_log_tail()
        ) from None
