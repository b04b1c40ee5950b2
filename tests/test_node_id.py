"""Node ids: a short pattern, and one live node per id.

Two processes under one id would fence each other forever (each takes the
other's heartbeat for a lapse of its own), so the second refuses to start,
naming the live node's address. Real gateway processes on 127.0.0.1 and
127.0.0.2 and a real redis-server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from gateway.cli import main as smbgw
from gateway.config import NODE_ID, Config, ShareConfig, default_node_id, validate

from .conftest import REPO, GatewayNode, free_port, start_gateway, write_users
from .redis_fixtures import start_redis

NODE_TTL = 4.0
MEMBERS = "smbgw:{nodes}:members"


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[tuple[str, redis.Redis]]:
    server = start_redis(tmp_path / "redis")
    client = redis.Redis(host="127.0.0.1", port=server.port)
    yield f"redis://127.0.0.1:{server.port}/0", client
    client.close()
    server.stop()


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _serve(tmp: Path, host: str, port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    """``smbgw serve`` of ``tmp/share``, expected to refuse: it must exit on its own."""
    share = tmp / "share"
    share.mkdir(exist_ok=True)
    tmp = tmp / host
    tmp.mkdir()
    cmd = [
        sys.executable, "-m", "gateway.cli", "serve", "--listen", f"{host}:{port}",
        "--share", f"share={share}", "--users", str(write_users(tmp / "users")), *extra,
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=30)


def _one_line(run: subprocess.CompletedProcess[str]) -> str:
    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and run.stdout == "", run.stdout + run.stderr
    return lines[0]


def _stop(node: GatewayNode) -> None:
    assert node.stop() == 0, node.log()[-3000:]
    assert "Traceback" not in node.log(), node.log()[-3000:]


# -- the pattern -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "node_id",
    ["a b", "n1:445", "{nodes}", "a/b", "-n1", ".n1", "n\u00e9", "n\t1", "x" * 65, "y" * 5000],
)
def test_a_bad_node_id_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], node_id: str
) -> None:
    share = tmp_path / "share"
    share.mkdir()
    users = str(write_users(tmp_path / "users"))
    code = smbgw(["serve", "--share", f"s={share}", "--users", users, f"--node-id={node_id}"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 300, err
    assert err.startswith("smbgw: node id '"), err
    assert err.endswith(
        "is not allowed: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter "
        "or digit (--node-id, node_id)\n"
    ), err


def test_a_bad_node_id_in_the_config_file_stops_the_process(tmp_path: Path) -> None:
    toml = tmp_path / "smbgw.toml"
    toml.write_text('node_id = "node 1"\n')
    line = _one_line(_serve(tmp_path, "127.0.0.1", free_port(), "--config", str(toml)))
    assert line.startswith("smbgw: node id 'node 1' is not allowed"), line


@pytest.mark.parametrize("node_id", ["node1", "n", "gw-01.example.com", "A_b-c.9", "z" * 64])
def test_good_node_ids(node_id: str) -> None:
    assert NODE_ID.match(node_id)


@pytest.mark.parametrize(
    ("hostname", "host", "port", "expected"),
    [
        ("box", "127.0.0.1", 445, "box-127.0.0.1-445"),  # as before
        ("box", "::1", 445, "box--1-445"),
        ("box", "fe80::1%eth0", 4455, "box-fe80-1-eth0-4455"),
        ("gw." + "a" * 70, "10.0.0.1", 445, "gw-10.0.0.1-445"),
        ("b" * 70, "10.0.0.1", 445, "b" * 51 + "-10.0.0.1-445"),  # 64 in all
        ("", "0.0.0.0", 445, "smbgw-0.0.0.0-445"),
    ],
)
def test_the_default_node_id_is_valid(hostname: str, host: str, port: int, expected: str) -> None:
    made = default_node_id(hostname, host, port)
    assert made == expected
    assert NODE_ID.match(made)


def test_a_node_listening_on_ipv6_gets_a_valid_default(tmp_path: Path) -> None:
    cfg = Config(listen_host="::", shares=[ShareConfig("s", str(tmp_path), guest_ok=True)])
    validate(cfg)
    assert NODE_ID.match(cfg.node_id) and ":" not in cfg.node_id, cfg.node_id


# -- one live node per id --------------------------------------------------------------


def test_a_live_nodes_id_is_refused_until_it_stops(
    tmp_path: Path, bus: tuple[str, redis.Redis]
) -> None:
    url, client = bus
    port = free_port()
    share = tmp_path / "share"
    share.mkdir()
    flags = ["--bus", url, "--node-id", "dup", "--node-ttl", str(NODE_TTL)]
    first = start_gateway(tmp_path / "a", port=port, extra=[*flags, "--takeover"], share_dir=share)
    try:
        run = _serve(tmp_path, "127.0.0.2", port, *flags)
        assert _one_line(run) == (
            f"smbgw: node id dup is in use by a live node at 127.0.0.1:{port}: give this "
            "node another --node-id (if that node was killed, its id is free again "
            "node_ttl seconds later)"
        )
        assert not _listening("127.0.0.2", port)
        # The refused process left the live node's registration as it was.
        record = client.hget(MEMBERS, "dup")
        assert record is not None and f'"address": "127.0.0.1:{port}"' in record.decode()
        assert client.hexists("smbgw:{nodes}:addresses", "dup")
        time.sleep(NODE_TTL / 2)  # a few heartbeats: node 1 was never fenced
        assert _listening("127.0.0.1", port)
        assert "lapsed" not in first.log() and "fenced" not in first.log(), first.log()
    finally:
        _stop(first)
    assert client.hlen(MEMBERS) == 0

    # Stopped cleanly, the id is free at once.
    second = start_gateway(
        tmp_path / "b", host="127.0.0.2", port=port, extra=flags, share_dir=share
    )
    _stop(second)


def test_a_killed_nodes_id_is_free_after_node_ttl(
    tmp_path: Path, bus: tuple[str, redis.Redis]
) -> None:
    url, client = bus
    port = free_port()
    share = tmp_path / "share"
    share.mkdir()
    flags = ["--bus", url, "--node-id", "dup", "--node-ttl", str(NODE_TTL)]
    first = start_gateway(tmp_path / "a", port=port, extra=flags, share_dir=share)
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait()
    killed = time.monotonic()
    # Its heartbeat still runs out: nothing tells a killed node from a live one.
    line = _one_line(_serve(tmp_path, "127.0.0.2", port, *flags))
    assert line.startswith(f"smbgw: node id dup is in use by a live node at 127.0.0.1:{port}")

    while client.exists("smbgw:{nodes}:hb:dup"):
        assert time.monotonic() - killed < NODE_TTL + 2
        time.sleep(0.1)
    second = start_gateway(
        tmp_path / "b", host="127.0.0.2", port=port, extra=flags, share_dir=share
    )
    try:
        record = client.hget(MEMBERS, "dup")
        assert record is not None and f'"address": "127.0.0.2:{port}"' in record.decode()
    finally:
        _stop(second)
