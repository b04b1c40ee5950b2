"""`smbgw serve` as an operator meets it: bad configuration, TOML, clean stop."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from .conftest import REPO, GatewayNode, free_port, smbclient, start_gateway, write_users


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
                   "--users", str(users), "--bus", f"redis://127.0.0.1:{nobody}/0")  # fmt: skip
    assert_one_line_error(result, "Redis unreachable")


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
