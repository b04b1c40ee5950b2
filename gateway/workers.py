"""A node of several processes: ``smbgw serve --workers N``.

One Python process serves on one core. With ``--workers N`` the process the
operator started (the parent) serves no client: it starts N workers, each a
``smbgw serve`` of the same configuration that listens on the node's address
with ``SO_REUSEPORT`` (the kernel spreads new connections over them by a hash
of the 4-tuple), and each its own node on the bus, ``<node id>-w<i>``. So
every rule that holds between nodes (share modes, oplocks and leases, locks,
durable handles, a PreviousSessionId that replaces a session elsewhere) holds
between workers, with nothing added: the bus cannot tell them from nodes.
Without ``--bus`` the parent starts a private redis-server for them
(``localredis.py``), as ``smbgw cluster up`` does; one worker keeps the
in-process bus and no parent.

What is the node's, not a worker's:

- the log: workers write plain ``LEVEL logger: message`` lines to a pipe and
  the parent logs them through its own handler (stderr, the journal or the
  rotated ``--log-file``), the logger name tagged with the worker (``[w2]``):
  one process writes the file, so rotation loses nothing;
- the metrics: worker i serves its own page on ``--metrics-listen``'s port
  plus i-1 (a scrape config lists N targets); the parent serves none;
- the admin socket: each worker answers ``smbgw status`` on its own
  ``<runtime dir>/<worker id>.sock``, and since they share a Redis bus any of
  them shows the whole node (``--node ID`` asks one);
- ``--takeover`` is refused with more than one worker for now: an address
  moves between nodes, and N processes would each try to move it.

The kernel spreads connections, but a client's connections must meet its
sessions: each worker passes a new connection to the one its ClientGuid
belongs to (``connpass.py``).

A worker that dies is a node death for the bus: its heartbeat lapses and the
failover rules release (or keep disconnected, for durable handles) what it
held. The parent logs one line and starts another in its slot under a new id
(``-w<i>.<life>``): the dead id stays in use until its heartbeat lapses.
SIGINT and SIGTERM stop every worker (they close their opens) and then the
private redis-server; SIGHUP is passed on (each worker reloads). Workers
also get SIGTERM if the parent itself is killed (``children.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO

from .children import die_with_parent
from .cluster import LISTENING, check_free, stopped_on_failure
from .config import Config, ConfigError, worker_node_id
from .localredis import LocalRedis
from .status import runtime_dir, socket_path

log = logging.getLogger("smbgw.workers")

WORKER_FORMAT = "%(levelname)s %(name)s: %(message)s"  # parsed back by _relay
_LEVELS = {name: logging.getLevelName(name) for name in ("DEBUG", "INFO", "WARNING", "ERROR")}
_LEVELS["CRITICAL"] = logging.CRITICAL
START_TIMEOUT = 60.0  # seconds for a worker to listen (it may wait for the bus first)
STOP_TIMEOUT = 15.0  # seconds for the workers to close their opens before SIGKILL
# A worker that dies sooner than this after its start is started again only
# after a pause, so that a worker that cannot start does not spin the parent.
_SHORT_LIFE = 5.0


def setup_worker_logging(cfg: Config) -> None:
    """A worker's log: plain lines on stderr, which the parent relays."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(WORKER_FORMAT))
    root.addHandler(handler)
    root.setLevel(getattr(logging, cfg.log_level, logging.INFO))


@dataclass
class Worker:
    index: int  # its slot, 1-based
    life: int  # 0, then one more each time the slot's worker is started again
    node_id: str
    proc: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    listening: threading.Event = field(default_factory=threading.Event)
    relay: threading.Thread | None = None


class WorkerPool:
    """The parent: starts, watches and stops a node's workers."""

    def __init__(self, cfg: Config, argv: list[str]) -> None:
        self.cfg = cfg
        self.argv = argv  # serve's command line, given again to every worker
        self.bus_url = cfg.bus_url
        self.redis: LocalRedis | None = None
        self.workers: list[Worker] = []
        self._stop = threading.Event()

    # -- starting ---------------------------------------------------------------------------

    def start(self) -> None:
        # A worker would share the port with any process that set SO_REUSEPORT
        # as our user did: better to find out here, in one line.
        check_free(self.cfg.listen_host, self.cfg.listen_port)
        with stopped_on_failure(self.stop):
            if self.bus_url is None:
                self.redis = LocalRedis().start()
                self.bus_url = self.redis.url
                log.info("private redis-server for the workers on %s:%d",
                         self.redis.host, self.redis.port)  # fmt: skip
            for index in range(1, self.cfg.workers + 1):
                self.workers.append(self._spawn(index, 0))
            for worker in self.workers:
                self._wait_listening(worker)

    def _command(self, index: int, node_id: str) -> list[str]:
        cfg = self.cfg
        cmd = [sys.executable, "-m", "gateway.cli", *self.argv]
        # Flags given last win over the same flags before them and over TOML.
        cmd += ["--node-id", node_id, "--worker-of", cfg.node_id, "--worker-index", str(index)]
        if self.redis is not None:
            cmd += ["--bus", self.bus_url or ""]
        if cfg.metrics_listen is not None:
            host, port = cfg.metrics_listen
            host = f"[{host}]" if ":" in host else host
            cmd += ["--metrics-listen", f"{host}:{port + index - 1}"]
        return cmd

    def _spawn(self, index: int, life: int) -> Worker:
        node_id = worker_node_id(self.cfg.node_id, index, life)
        proc = subprocess.Popen(
            self._command(index, node_id), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # SIGTERM (a clean stop) when the parent dies, even by SIGKILL.
            preexec_fn=die_with_parent(),
        )  # fmt: skip
        worker = Worker(index, life, node_id, proc)
        assert proc.stdout is not None
        worker.relay = threading.Thread(
            target=_relay, args=(proc.stdout, worker), name=f"relay-w{index}", daemon=True
        )
        worker.relay.start()
        return worker

    def _wait_listening(self, worker: Worker) -> None:
        # A worker waits for an unreachable bus up to bus_wait before it gives up.
        deadline = time.monotonic() + START_TIMEOUT + self.cfg.bus_wait
        while not worker.listening.wait(0.05):
            if worker.proc.poll() is not None:
                if worker.relay is not None:
                    worker.relay.join(2)  # its last words first
                raise ConfigError(
                    f"worker {worker.node_id} exited with status {worker.proc.returncode} "
                    "before serving (its log above says why)"
                )
            if self._stop.is_set():  # SIGINT or SIGTERM while starting: stop quietly
                return
            if time.monotonic() > deadline:
                raise ConfigError(f"worker {worker.node_id} did not start to listen")

    # -- running ----------------------------------------------------------------------------

    def run(self) -> int:
        """Until SIGINT or SIGTERM: start every worker, replace those that die."""
        previous = {
            signal.SIGINT: signal.signal(signal.SIGINT, self._on_stop),
            signal.SIGTERM: signal.signal(signal.SIGTERM, self._on_stop),
            signal.SIGHUP: signal.signal(signal.SIGHUP, self._on_hup),
        }
        try:
            self.start()
            log.info(
                "node %s listening on %s:%d with %d workers (%s; bus: %s)",
                self.cfg.node_id, self.cfg.listen_host, self.cfg.listen_port,
                len(self.workers), ", ".join(f"{w.node_id} pid {w.proc.pid}" for w in self.workers),
                "private redis-server" if self.redis is not None else "shared",
            )  # fmt: skip
            while not self._stop.wait(0.2):
                for slot, worker in enumerate(self.workers):
                    if worker.proc.poll() is not None and not self._stop.is_set():
                        self.workers[slot] = self._replace(worker)
            log.info("stopping node %s (%d workers)", self.cfg.node_id, len(self.workers))
            return 0
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _replace(self, dead: Worker) -> Worker:
        lived = time.monotonic() - dead.started
        log.error(
            "worker %s (pid %d) exited with status %s after %.0f s: its clients must "
            "reconnect; starting %s in its place",
            dead.node_id, dead.proc.pid, _how(dead.proc.returncode), lived,
            worker_node_id(self.cfg.node_id, dead.index, dead.life + 1),
        )  # fmt: skip
        self._forget_socket(dead.node_id)
        if lived < _SHORT_LIFE:
            self._stop.wait(_SHORT_LIFE - lived)
        return self._spawn(dead.index, dead.life + 1)

    def _forget_socket(self, node_id: str) -> None:
        """A killed worker leaves its admin socket behind: nobody answers there."""
        with contextlib.suppress(OSError, ConfigError):
            os.unlink(socket_path(runtime_dir(self.cfg.runtime_dir)[0], node_id))

    def _on_stop(self, _sig: int, _frame: object) -> None:
        self._stop.set()

    def _on_hup(self, _sig: int, _frame: object) -> None:
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGHUP)

    # -- stopping ---------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM every worker, SIGKILL those still there after STOP_TIMEOUT,
        then stop the private redis-server."""
        self._stop.set()
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for worker in self.workers:
            try:
                worker.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %s did not stop in %.0f s: killed", worker.node_id,
                          STOP_TIMEOUT)  # fmt: skip
                worker.proc.kill()
                worker.proc.wait()
            if worker.relay is not None:
                worker.relay.join(2)
        self.workers = []
        if self.redis is not None:
            self.redis.stop()
            self.redis = None


def _how(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        return signal.Signals(-returncode).name
    return str(returncode)


def _relay(stream: IO[bytes], worker: Worker) -> None:
    """Log a worker's lines through the parent's handlers, with their level."""
    tag = f"w{worker.index}" + (f".{worker.life}" if worker.life else "")
    level, name = logging.INFO, "smbgw"
    root = logging.getLogger()
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip("\n")
        head, sep, message = line.partition(": ")
        words = head.split(" ")
        if sep and len(words) == 2 and words[0] in _LEVELS:
            level, name = _LEVELS[words[0]], words[1]
        else:
            message = line  # a traceback's next line, or a line not from logging
            if line.startswith("Traceback "):  # uncaught: the worker is dying
                level, name = logging.ERROR, "smbgw"
        if LISTENING in message:
            worker.listening.set()
        record = logging.makeLogRecord(
            {"name": f"{name}[{tag}]", "levelno": level, "levelname": logging.getLevelName(level),
             "msg": message, "args": None}
        )  # fmt: skip
        if record.levelno >= root.getEffectiveLevel():
            root.handle(record)
    stream.close()
