"""`smbgw serve` as an operator meets it: bad configuration, TOML, clean stop."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .conftest import (
    REPO,
    GatewayNode,
    free_port,
    smbclient,
    start_gateway,
    wait_for_port,
    write_users,
)
from .redis_fixtures import start_redis


def serve(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def assert_one_line_error(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("smbgw: ") and needle in lines[0], lines[0]


def test_missing_share_directory(tmp_path: Path) -> None:
    users = write_users(tmp_path / "users")
    result = serve("--listen", f"127.0.0.1:{free_port()}", "--share", f"s={tmp_path}/nope",
                   "--users", str(users))  # fmt: skip
    assert_one_line_error(result, "does not exist")


def test_unreadable_users_file(tmp_path: Path) -> None:
    result = serve("--listen", f"127.0.0.1:{free_port()}", "--share", f"s={tmp_path}",
                   "--users", str(tmp_path / "no-such-users"))  # fmt: skip
    assert_one_line_error(result, "no-such-users")


def test_malformed_users_file_names_the_line(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("# ok\ntest:test\nbroken-line\n")
    result = serve("--listen", f"127.0.0.1:{free_port()}", "--share", f"s={tmp_path}",
                   "--users", str(users))  # fmt: skip
    assert_one_line_error(result, "line 3")


def test_port_in_use(tmp_path: Path) -> None:
    users = write_users(tmp_path / "users")
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = serve("--listen", f"127.0.0.1:{port}", "--share", f"s={tmp_path}",
                       "--users", str(users))  # fmt: skip
    assert_one_line_error(result, "port in use")


def test_unreachable_bus_at_start(tmp_path: Path) -> None:
    users = write_users(tmp_path / "users")
    nobody = free_port()  # nothing listens there
    result = serve("--listen", f"127.0.0.1:{free_port()}", "--share", f"s={tmp_path}",
                   "--users", str(users), "--bus", f"redis://127.0.0.1:{nobody}/0",
                   "--bus-wait", "0")  # fmt: skip
    assert_one_line_error(result, "Redis unreachable")


def test_unreachable_bus_is_waited_for_then_one_line(tmp_path: Path) -> None:
    """Redis and the nodes often start together: the node tries for --bus-wait
    seconds, with a progress line, then gives up with one line and exit 2."""
    users = write_users(tmp_path / "users")
    nobody = free_port()
    started = time.monotonic()
    result = serve("--listen", f"127.0.0.1:{free_port()}", "--share", f"s={tmp_path}",
                   "--users", str(users), "--bus", f"redis://127.0.0.1:{nobody}/0",
                   "--bus-wait", "1.5")  # fmt: skip
    took = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert 1.5 <= took < 20, took
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert "waiting up to 1.5 s for it (--bus-wait)" in lines[0], lines
    errors = [line for line in lines if line.startswith("smbgw: ")]
    assert errors == [lines[-1]], lines
    assert "Redis unreachable" in lines[-1] and "--bus-wait" in lines[-1], lines[-1]


def test_a_refused_bus_password_is_not_waited_for(tmp_path: Path) -> None:
    redis = start_redis(tmp_path / "redis", "--requirepass", "right")
    try:
        started = time.monotonic()
        result = serve("--listen", f"127.0.0.1:{free_port()}", "--share", f"s={tmp_path}",
                       "--users", str(write_users(tmp_path / "users")),
                       "--bus", f"redis://:wrong@127.0.0.1:{redis.port}/0")  # fmt: skip
        assert time.monotonic() - started < 8  # not the 10 s of --bus-wait
    finally:
        redis.stop()
    assert_one_line_error(result, "the bus refused us")
    assert "wrong" not in result.stderr  # the password is shown as ***


def test_a_bus_that_comes_up_during_the_wait_is_used(tmp_path: Path) -> None:
    port = free_port()  # Redis will listen here, a moment after the node starts
    node_port = free_port()
    log_path = tmp_path / "node.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--listen", f"127.0.0.1:{node_port}",
             "--share", f"s={tmp_path}", "--users", str(write_users(tmp_path / "users")),
             "--bus", f"redis://127.0.0.1:{port}/0", "--bus-wait", "30"],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    redis = None
    try:
        deadline = time.monotonic() + 20
        while "waiting up to 30 s" not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        redis = start_redis(tmp_path / "redis", port=port)
        wait_for_port("127.0.0.1", node_port, proc, timeout=20)
        assert "answers after" in log_path.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log_path.read_text()
        if redis is not None:
            redis.stop()
    assert "Traceback" not in log_path.read_text()


def test_unknown_toml_setting(tmp_path: Path) -> None:
    conf = tmp_path / "gw.toml"
    conf.write_text('listen = "127.0.0.1:1"\nfrobnicate = true\n')
    assert_one_line_error(serve("--config", str(conf)), "frobnicate")


def test_node_from_toml_serves_smbclient(tmp_path: Path) -> None:
    share = tmp_path / "data"
    share.mkdir()
    (share / "hello.txt").write_text("from toml")
    users = write_users(tmp_path / "users")
    port = free_port()
    conf = tmp_path / "gw.toml"
    conf.write_text(
        f'listen = "127.0.0.1:{port}"\nusers = "{users}"\nnode_id = "n1"\n'
        f'[[shares]]\nname = "share"\npath = "{share}"\ncomment = "toml share"\n'
    )
    node = start_gateway(
        tmp_path / "gw", port=port, extra=["--config", str(conf)], share_dir=share, flags=False
    )
    try:
        result = smbclient(node, "get hello.txt -", "-m", "SMB3_11")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "from toml" in result.stdout
        assert "node n1 listening on 127.0.0.1:" in node.log()
    finally:
        assert node.stop() == 0  # SIGTERM stops it cleanly


def test_sigterm_with_a_client_connected(gateway: GatewayNode) -> None:
    with socket.create_connection((gateway.host, gateway.port)):
        assert gateway.stop() == 0
