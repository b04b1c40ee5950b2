"""A private redis-server for a local cluster: started on a free port, stopped after.

Nothing is written to disk (no RDB, no AOF): the bus holds only live lock
state, which the nodes rebuild from their own opens.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .children import die_with_parent

INSTALL_HINT = "install it with `apt-get install redis-server` (or run `bash scripts/install.sh`)"


class RedisError(RuntimeError):
    """redis-server is missing or would not start; the message says which."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalRedis:
    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> LocalRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisError(f"redis-server not found; {INSTALL_HINT}")
        self._dir = tempfile.TemporaryDirectory(prefix="smbgw-redis-")
        log = Path(self._dir.name) / "redis.log"
        args = [
            binary, "--bind", self.host, "--port", str(self.port), "--save", "",
            "--appendonly", "no", "--dir", self._dir.name, "--logfile", str(log),
            "--protected-mode", "no",
        ]  # fmt: skip
        # Stops when we die, even by SIGKILL (children.py): a private server
        # must not outlive the cluster it was started for.
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                text = log.read_text(errors="replace")[-500:] if log.exists() else ""
                self.stop()
                raise RedisError(f"redis-server exited at start: {text.strip()}")
            if self._ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise RedisError(f"redis-server did not answer on {self.host}:{self.port}")

    def _ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
