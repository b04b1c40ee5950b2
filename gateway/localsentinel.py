"""Redis under Sentinel on loopback: a master, a replica and three Sentinels.

What a Sentinel failover does to the bus (``oplock_bus/recovery.py``) is
shown by ``smbgw demo redis-loss --how sentinel``, timed by
``bench/bus_recovery.py`` and tested by ``tests/test_bus_recovery.py``; each
starts one of these. As for ``localredis.py`` (the private redis-server of
``cluster up``): nothing is persisted, so a server started again is empty,
and every process is a child that goes when we go (``children.py``).

`LocalSentinel.fail_over` brings the worst case a failover can: the
replica is restarted empty before it is promoted, as on a machine wiped
between the master's death and the switch, so the new master has lost the
whole lock space and not merely its last writes.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from .children import die_with_parent
from .localredis import INSTALL_HINT, RedisError, free_port

HOST = "127.0.0.1"
SERVICE = "smbgw"  # the monitored master's name, as in the bus URL
QUORUM = 2
# Short, so that a switch fits in the nodes' fencing window (0.6 of
# node_ttl, 3 s by default): about 2.3 s from the master's death to the
# switch on this machine. Sentinel's own default (30 s) would fence them.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 4000


class RedisServer:
    """One redis-server (a Sentinel too: ``args`` say which) on a fixed port.

    ``start`` again after ``kill`` restarts it on the same port with the same
    arguments, and empty: a crashed server without persistence."""

    def __init__(self, workdir: Path, args: Sequence[str], port: int) -> None:
        self.workdir = workdir
        self.args = list(args)
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.workdir / f"redis-{self.port}.log"

    def start(self, timeout: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisError(f"redis-server not found; {INSTALL_HINT}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        # A replica keeps what its master sent it in dump.rdb, even with
        # `save ""`, and would load it at its next start.
        (self.workdir / "dump.rdb").unlink(missing_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [binary, *self.args], stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, cwd=self.workdir, preexec_fn=die_with_parent(),
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-500:].strip()
                self.stop()
                raise RedisError(f"redis-server on {HOST}:{self.port} did not start: {tail}")
            time.sleep(0.02)
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(HOST, self.port, socket_timeout=2.0, decode_responses=True)

    def ping(self) -> bool:
        try:
            with self.client() as c:
                return bool(c.ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last words to the replicas or the Sentinels."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _data_args(port: int, workdir: Path) -> list[str]:
    return [
        "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no",
        "--dir", str(workdir), "--protected-mode", "no",
    ]  # fmt: skip


class LocalSentinel:
    """A master, a replica and three Sentinels (quorum 2) on loopback ports.

    ``workdir`` holds their directories and logs; without one a temporary
    directory is made and removed by `stop`."""

    def __init__(self, workdir: Path | None = None) -> None:
        self._tmp = None if workdir is not None else tempfile.mkdtemp(prefix="smbgw-sentinel-")
        self.workdir = workdir if workdir is not None else Path(self._tmp or "")
        mport, mdir = free_port(HOST), self.workdir / "master"
        rport, rdir = free_port(HOST), self.workdir / "replica"
        self.master = RedisServer(mdir, _data_args(mport, mdir), mport)
        replicaof = ["--replicaof", HOST, str(mport)]
        self.replica = RedisServer(rdir, [*_data_args(rport, rdir), *replicaof], rport)
        self.sentinels = [self._sentinel(i) for i in range(3)]

    def _sentinel(self, index: int) -> RedisServer:
        port = free_port(HOST)
        sdir = self.workdir / f"sentinel{index}"
        # A Sentinel rewrites its file (the replicas and Sentinels it found),
        # so each has its own, written before each start.
        return RedisServer(sdir, [str(sdir / "sentinel.conf"), "--sentinel"], port)

    def _write_sentinel_conf(self, sentinel: RedisServer) -> None:
        sentinel.workdir.mkdir(parents=True, exist_ok=True)
        (sentinel.workdir / "sentinel.conf").write_text(
            f"port {sentinel.port}\nbind {HOST}\ndir {sentinel.workdir}\n"
            f"sentinel monitor {SERVICE} {HOST} {self.master.port} {QUORUM}\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
        )

    def start(self, timeout: float = 20.0) -> LocalSentinel:
        """Start everything and wait until each Sentinel knows the replica and
        the two other Sentinels: before that it could not fail over."""
        try:
            self.master.start()
            self.replica.start()
            for s in self.sentinels:
                self._write_sentinel_conf(s)
                s.start()
            deadline = time.monotonic() + timeout
            while not all(self._ready(s) for s in self.sentinels):
                if time.monotonic() > deadline:
                    raise RedisError("the Sentinels did not find the replica and each other")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _ready(sentinel: RedisServer) -> bool:
        try:
            with sentinel.client() as c:
                info = c.sentinel_master(SERVICE)
        except redis.RedisError:
            return False
        return bool(info.get("num-slaves") == 1 and info.get("num-other-sentinels") == 2)

    @property
    def url(self) -> str:
        """The bus URL naming the three Sentinels and the service."""
        hosts = ",".join(f"{HOST}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}"

    def master_port(self) -> int:
        """The master's port, as the first Sentinel names it."""
        with self.sentinels[0].client() as c:
            addr = c.sentinel_get_master_addr_by_name(SERVICE)
        return int(addr[1])

    def fail_over(self, timeout: float = 15.0) -> tuple[float, float]:
        """Kill the master, restart the replica empty, and wait until Sentinel
        names the replica as master: (when the master was killed, when the
        switch was seen), on ``time.monotonic``'s clock."""
        killed_at = time.monotonic()
        self.master.kill()
        self.replica.kill()
        self.replica.start()
        deadline = killed_at + timeout
        while True:
            try:
                if self.master_port() == self.replica.port:
                    return killed_at, time.monotonic()
            except redis.RedisError:
                pass  # asked while it was busy switching: ask again
            if time.monotonic() > deadline:
                raise RedisError(f"Sentinel did not promote the replica within {timeout:g} s")
            time.sleep(0.02)

    def stop(self) -> None:
        for server in [*self.sentinels, self.master, self.replica]:
            server.stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> LocalSentinel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
