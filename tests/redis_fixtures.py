"""Real redis-server processes for the bus tests, on free loopback ports.

Shared servers (one plain Redis, one 3-master Cluster, one Sentinel-managed
master) start on first use and stop when the test process exits; tests
isolate themselves with a fresh key namespace. Tests that stop or break a
server start their own with :func:`start_redis`.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import ipaddress
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def free_cluster_port() -> int:
    """A port whose cluster bus port (+10000) is free too, below 55536."""
    import random

    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind((HOST, port))
                b.bind((HOST, port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a cluster node")


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; scripts/install.sh installs redis-server")
    return path


@dataclass
class RedisProc:
    port: int
    workdir: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    password: str | None = None
    extra_ports: list[int] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.workdir / f"redis-{self.port}.log"

    def start(self, *, wait_port: int | None = None) -> RedisProc:
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [binary("redis-server"), *self.args],
            stdout=logf, stderr=subprocess.STDOUT, cwd=self.workdir,
        )  # fmt: skip
        logf.close()
        _wait_listening(wait_port or self.port, self)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def cli(self, *args: str, port: int | None = None) -> str:
        cmd = [binary("redis-cli"), "-h", HOST, "-p", str(port or self.port)]
        if self.password:
            cmd += ["--no-auth-warning", "-a", self.password]
        out = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=20)
        return out.stdout + out.stderr


def _wait_listening(port: int, server: RedisProc, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc is not None and server.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited: {server.log.read_text(errors='replace')}")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"redis-server not listening on {port}")


def start_redis(workdir: Path, *extra: str, port: int | None = None) -> RedisProc:
    """A throwaway server: no persistence, so a restart starts empty."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [
        "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
        "--dir", str(workdir), *extra,
    ]  # fmt: skip
    return RedisProc(port, workdir, args).start()


# -- shared servers, started lazily -------------------------------------------------

_shared: dict[str, tuple[str, list[RedisProc]]] = {}
_root: Path | None = None


def _workdir(name: str) -> Path:
    global _root
    if _root is None:
        _root = Path(tempfile.mkdtemp(prefix="smbgw-redis-"))
        atexit.register(_stop_all)
    path = _root / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _stop_all() -> None:
    for _, procs in _shared.values():
        for p in procs:
            with contextlib.suppress(Exception):
                p.stop()
    _shared.clear()
    if _root is not None:
        shutil.rmtree(_root, ignore_errors=True)


def shared_url(kind: str) -> str:
    """The URL of the shared server of ``kind`` ("redis", "redis-cluster",
    "redis-sentinel"), starting it if needed."""
    if kind not in _shared:
        starter = {"redis": _single, "redis-cluster": _cluster, "redis-sentinel": _sentinel}
        _shared[kind] = starter[kind]()
    return _shared[kind][0]


def isolated(url: str) -> str:
    """The same server under a fresh namespace: an empty lock space."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}namespace=t{uuid.uuid4().hex[:12]}:"


def _single() -> tuple[str, list[RedisProc]]:
    server = start_redis(_workdir("single"))
    return f"redis://{HOST}:{server.port}", [server]


def _cluster() -> tuple[str, list[RedisProc]]:
    return start_cluster(_workdir)


def start_cluster(
    workdir: Callable[[str], Path], *, replicas: int = 0, node_timeout_ms: int = 2000
) -> tuple[str, list[RedisProc]]:
    """A 3-master Redis Cluster with ``replicas`` replicas per master (each
    server in ``workdir(name)``, keeping its nodes.conf across a restart);
    its URL and the servers (which are masters: ask CLUSTER NODES)."""
    procs = []
    for _ in range(3 * (1 + replicas)):
        port = free_cluster_port()
        wd = workdir(f"cluster-{port}")
        wd.mkdir(parents=True, exist_ok=True)
        procs.append(
            start_redis(
                wd,
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(wd / "nodes.conf"),
                "--cluster-node-timeout", str(node_timeout_ms),
                port=port,
            )  # fmt: skip
        )
    hosts = [f"{HOST}:{p.port}" for p in procs]
    out = subprocess.run(
        [binary("redis-cli"), "--cluster", "create", *hosts, "--cluster-replicas",
         str(replicas), "--cluster-yes"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"redis-cli --cluster create failed: {out.stdout}{out.stderr}")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if all("cluster_state:ok" in p.cli("cluster", "info") for p in procs) and all(
            p.cli("cluster", "nodes").count("slave") == 3 * replicas for p in procs
        ):
            break
        time.sleep(0.1)
    else:
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
    return f"redis+cluster://{','.join(hosts[:3])}", procs


SENTINEL_SERVICE = "smbgw"


def _sentinel() -> tuple[str, list[RedisProc]]:
    master = start_redis(_workdir("sentinel-master"))
    port = free_port()
    workdir = _workdir(f"sentinel-{port}")
    conf = workdir / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind {HOST}\ndir {workdir}\n"
        f"sentinel monitor {SENTINEL_SERVICE} {HOST} {master.port} 1\n"
        f"sentinel down-after-milliseconds {SENTINEL_SERVICE} 5000\n"
    )
    sentinel = RedisProc(port, workdir, [str(conf), "--sentinel"]).start()
    deadline = time.monotonic() + 10
    while str(master.port) not in sentinel.cli(
        "sentinel", "get-master-addr-by-name", SENTINEL_SERVICE
    ):
        if time.monotonic() > deadline:
            raise RuntimeError("the Sentinel does not know its master")
        time.sleep(0.05)
    return f"redis+sentinel://{HOST}:{port}/{SENTINEL_SERVICE}", [master, sentinel]


# -- TLS --------------------------------------------------------------------------------


@dataclass
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_tls_files(workdir: Path) -> TlsFiles:
    """A CA and a server certificate for 127.0.0.1, made with cryptography."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("smbgw test CA"))
        .issuer_name(name("smbgw test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(HOST))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(workdir / "ca.pem", workdir / "server.pem", workdir / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisProc]:
    """A server of the test's own, which it may stop and start again."""
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()
