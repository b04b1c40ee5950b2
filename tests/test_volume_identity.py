"""A volume that two hosts name differently is refused, not served wrongly.

A file's identity is its share's volume id plus its inode. Each node here
runs as ``tests/volume_node.py`` makes it: its volume reports an st_dev of
its own and keeps no user xattrs, as one NFS or CephFS volume may look from
two hosts. On a shared bus such a node refuses to start until the share's
``volume_id`` is configured; then two nodes (127.0.0.1 and 127.0.0.2, one
real redis-server) agree on every file. Nodes also compare the share's root
(volume id and inode) through the bus, so a node that names it differently
from a live node refuses to serve.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from smbprotocol.connection import Connection
from smbprotocol.exceptions import SMBResponseException
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    FilePipePrinterAccessMask,
    ImpersonationLevel,
    Open,
    ShareAccess,
)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from gateway.cli import main as smbgw
from gateway.config import Config, apply_toml

from .conftest import PASSWORD, REPO, USER, free_port, wait_for_port, write_users
from .redis_fixtures import start_redis

STATUS_SHARING_VIOLATION = 0xC0000043
HOSTS = ("127.0.0.1", "127.0.0.2")
DEVICES = (0x801, 0x2A)  # what each host's stat() says of the volume


class Setup:
    def __init__(self, tmp: Path, server_port: int) -> None:
        self.tmp = tmp
        self.share = tmp / "share"
        self.share.mkdir()
        self.users = write_users(tmp / "users")
        self.port = free_port()
        self.bus = f"redis://127.0.0.1:{server_port}/0"
        self.redis = redis.Redis(host="127.0.0.1", port=server_port)

    def config(self, name: str, volume_id: str | None, path: Path | None = None) -> Path:
        """A TOML file exporting the share, with ``volume_id`` as written in it."""
        line = f"volume_id = {volume_id}\n" if volume_id is not None else ""
        toml = self.tmp / f"{name}.toml"
        toml.write_text(
            f'users = "{self.users}"\nbus = "{self.bus}"\n\n'
            f'[[shares]]\nname = "share"\npath = "{path or self.share}"\n{line}'
        )
        return toml

    def command(self, index: int, *args: str) -> list[str]:
        return [
            sys.executable, "-m", "tests.volume_node", str(DEVICES[index]), "serve",
            "--listen", f"{HOSTS[index]}:{self.port}", "--node-id", f"n{index + 1}", *args,
        ]  # fmt: skip

    def refused(self, index: int, *args: str) -> str:
        """Run node ``index``, which must refuse: its one line on stderr."""
        run = subprocess.run(
            self.command(index, *args), cwd=REPO, capture_output=True, text=True, timeout=30
        )
        assert run.returncode == 2, run.stdout + run.stderr
        lines = run.stderr.splitlines()
        assert len(lines) == 1 and run.stdout == "", run.stdout + run.stderr
        assert not _listening(HOSTS[index], self.port)
        return lines[0]

    def start(self, index: int, *args: str) -> subprocess.Popen[bytes]:
        log = self.tmp / f"n{index + 1}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                self.command(index, *args), cwd=REPO, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            wait_for_port(HOSTS[index], self.port, proc, timeout=20)
        except RuntimeError as e:
            proc.kill()
            raise RuntimeError(f"{e}\n{log.read_text()}") from None
        return proc

    def stop(self, index: int, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        log = (self.tmp / f"n{index + 1}.log").read_text()
        assert "Traceback" not in log, log

    def members(self) -> list[bytes]:
        """The node ids registered on the bus."""
        return sorted(self.redis.hkeys("smbgw:{nodes}:members"))


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    server = start_redis(tmp_path / "redis")
    s = Setup(tmp_path, server.port)
    yield s
    s.redis.close()
    server.stop()


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tree(host: str, port: int) -> TreeConnect:
    conn = Connection(uuid.uuid4(), host, port)
    conn.connect(timeout=10)
    session = Session(conn, USER, PASSWORD, auth_protocol="ntlm")
    session.connect()
    tree = TreeConnect(session, rf"\\{host}\share")
    tree.connect()
    return tree


def _open(tree: TreeConnect, name: str, share: int) -> Open:
    handle = Open(tree, name)
    handle.create(
        ImpersonationLevel.Impersonation,
        FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE,
        0, share, CreateDisposition.FILE_OPEN_IF, CreateOptions.FILE_NON_DIRECTORY_FILE,
    )  # fmt: skip
    return handle


def test_a_volume_without_xattrs_is_refused_then_served_with_volume_id(setup: Setup) -> None:
    # Without a volume id every node would fall back to its own st_dev.
    for index in (0, 1):
        line = setup.refused(index, "--share", f"share={setup.share}", "--users",
                             str(setup.users), "--bus", setup.bus)  # fmt: skip
        assert line.startswith("smbgw: share share: cannot read or store its volume id"), line
        assert "set volume_id in its [[shares]] entry" in line, line
    assert setup.members() == []  # it refused before it joined the bus

    # The same id on both, written both ways TOML allows.
    first = setup.start(0, "--config", str(setup.config("n1", '"5eed"')))
    try:
        second = setup.start(1, "--config", str(setup.config("n2", "0x5eed")))
        try:
            a, b = _tree(HOSTS[0], setup.port), _tree(HOSTS[1], setup.port)
            held = _open(a, "db.mdb", share=0)
            # Node 2 names the file as node 1 does, so the share mode holds.
            with pytest.raises(SMBResponseException) as err:
                _open(b, "db.mdb", ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE)
            assert err.value.status == STATUS_SHARING_VIOLATION
            held.close()
            _open(b, "db.mdb", ShareAccess.FILE_SHARE_READ).close()
            a.session.connection.disconnect(True)
            b.session.connection.disconnect(True)
        finally:
            setup.stop(1, second)
    finally:
        setup.stop(0, first)
    assert setup.members() == []


def test_a_node_that_names_the_share_root_differently_refuses(setup: Setup) -> None:
    first = setup.start(0, "--config", str(setup.config("n1", '"5eed"')))
    try:
        # Another volume id than the live node's.
        line = setup.refused(1, "--config", str(setup.config("other-id", '"5eee"')))
        assert line == (
            "smbgw: share share: volume id 5eee here, 5eed on node n1: set the same "
            "volume_id for the share on every node (docs/operations.md)"
        ), line
        # The same id given to another tree: its root is another inode.
        elsewhere = setup.tmp / "elsewhere"
        elsewhere.mkdir()
        line = setup.refused(1, "--config", str(setup.config("other-tree", '"5eed"', elsewhere)))
        assert line.startswith("smbgw: share share: its root is inode "), line
        assert "on node n1: not the same directory, or a filesystem without stable" in line
        # The refused node left nothing registered; node 1 serves on.
        assert setup.members() == [b"n1"]
        assert _listening(HOSTS[0], setup.port)
        assert "fenced" not in (setup.tmp / "n1.log").read_text()
    finally:
        setup.stop(0, first)

    # Only live nodes count: once node 1 stopped, another id may be chosen.
    second = setup.start(1, "--config", str(setup.config("other-id", '"5eee"')))
    setup.stop(1, second)


@pytest.mark.parametrize(
    "written", ['"zz"', '""', "0", "-5", "true", "1.5", '"0x"', '"10000000000000000"', "[1]"]
)
def test_a_bad_volume_id_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], written: str
) -> None:
    share = tmp_path / "share"
    share.mkdir()
    toml = tmp_path / "smbgw.toml"
    toml.write_text(
        f'users = "{write_users(tmp_path / "users")}"\n\n'
        f'[[shares]]\nname = "data"\npath = "{share}"\nvolume_id = {written}\n'
    )
    assert smbgw(["serve", "--config", str(toml)]) == 2
    err = capsys.readouterr().err
    shown = json.dumps(tomllib.loads(f"v = {written}")["v"])
    assert err == (
        f"smbgw: {toml}: share data: volume_id = {shown}: expected an integer from 1 to "
        '2**64-1, or hex digits in a string ("5eed")\n'
    ), err


def test_volume_id_forms(tmp_path: Path) -> None:
    for written, value in [
        ("1", 1), ('"ffffffffffffffff"', 2**64 - 1), ('"0X5EED"', 0x5EED), ('" 5eed "', 0x5EED),
        ("0x7fffffffffffffff", 2**63 - 1),
    ]:  # fmt: skip
        cfg = Config()
        data = tomllib.loads(f'[[shares]]\nname = "d"\npath = "{tmp_path}"\nvolume_id = {written}')
        apply_toml(cfg, data, "t.toml")
        assert cfg.shares[0].volume_id == value, written
