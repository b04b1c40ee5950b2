"""The bus as a trust boundary (issue 16, finding 7).

A node runs against a real redis-server whose only way in is the ACL user
docs/operations.md shows (read from that page, so the page stays true),
with the password kept out of the URL, the command line and the log; the
other user, and an anonymous client, are refused. Secrets in URLs are
shown as ``***`` wherever a URL is printed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from oplock_bus.redis_url import parse_url, redact, split_password

from .conftest import REPO, smbclient, start_gateway
from .redis_fixtures import HOST, start_redis

PASSWORD = "s3cret-bus-password"


def _documented_acl() -> list[str]:
    text = (REPO / "docs" / "operations.md").read_text()
    line = next(ln.strip() for ln in text.splitlines() if ln.strip().startswith("ACL SETUSER"))
    return line.replace("PASSWORD", PASSWORD).split()


def test_redact_and_split_keep_secrets_out_of_sight() -> None:
    url = f"rediss+sentinel://smbgw:{PASSWORD}@a:1,b:2/m?sentinel_password=zz&timeout=3"
    shown = redact(url)
    assert PASSWORD not in shown and "zz" not in shown and "smbgw:***@" in shown
    assert redact("redis://secret@h/0") == "redis://***@h/0"
    bare, password = split_password(f"redis://smbgw:{PASSWORD}@h:6379/0")
    assert (bare, password) == ("redis://smbgw@h:6379/0", PASSWORD)
    target = parse_url(bare, password=password)
    assert (target.username, target.password) == ("smbgw", PASSWORD)
    with pytest.raises(ValueError, match="twice"):
        parse_url(f"redis://smbgw:{PASSWORD}@h/0", password="other")
    with pytest.raises(ValueError) as err:
        parse_url(f"redis://smbgw:{PASSWORD}@h/0?bogus=1x")
    assert PASSWORD not in str(err.value)


def test_node_on_the_documented_acl_user(tmp_path: Path) -> None:
    redis = start_redis(tmp_path / "redis", "--requirepass", "default-is-locked")
    redis.password = "default-is-locked"
    try:
        assert "OK" in redis.cli(*_documented_acl())
        secret = tmp_path / "bus-password"
        secret.write_text(PASSWORD + "\n")
        url = f"redis://smbgw@{HOST}:{redis.port}/0"
        node = start_gateway(tmp_path / "gw", extra=["--bus", url, "--bus-password-file",
                                                      str(secret), "--node-id", "n1"])  # fmt: skip
        try:
            (tmp_path / "hello.txt").write_text("over the locked-down bus")
            put = smbclient(node, f"put {tmp_path / 'hello.txt'} hello.txt", "-m", "SMB3_11")
            assert put.returncode == 0, put.stdout + put.stderr + node.log()[-3000:]
            assert (node.share_dir / "hello.txt").read_text() == "over the locked-down bus"
            cmdline = Path(f"/proc/{node.proc.pid}/cmdline").read_bytes()
            assert PASSWORD.encode() not in cmdline
            env = dict(os.environ, SMBGW_BUS_PASSWORD=PASSWORD)
            status = subprocess.run(
                [sys.executable, "-m", "gateway.cli", "status", "--bus", url],
                capture_output=True, text=True, timeout=30, env=env, cwd=REPO,
            )  # fmt: skip
            assert status.returncode == 0, status.stderr
            assert "n1" in status.stdout
        finally:
            assert node.stop() == 0
        assert PASSWORD not in node.log()
        assert "Traceback" not in node.log(), node.log()[-3000:]
        # The ACL user reaches nothing outside the namespace, and nobody gets in
        # without a password.
        denied = redis.cli("--user", "smbgw", "--pass", PASSWORD, "SET", "elsewhere", "1")
        assert "NOPERM" in denied
        anonymous = subprocess.run(
            ["redis-cli", "-h", HOST, "-p", str(redis.port), "SET", "smbgw:x", "1"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        assert re.search("NOAUTH|WRONGPASS", anonymous.stdout + anonymous.stderr)
    finally:
        redis.stop()


def test_a_password_in_the_url_is_not_logged(tmp_path: Path) -> None:
    redis = start_redis(tmp_path / "redis", "--requirepass", PASSWORD)
    try:
        node = start_gateway(tmp_path / "gw", extra=[
            "--bus", f"redis://:{PASSWORD}@{HOST}:{redis.port}/0", "--node-id", "n2",
        ])  # fmt: skip
        assert node.stop() == 0
        log = node.log()
        assert "listening" in log and f"redis://:***@{HOST}:{redis.port}/0" in log
        assert PASSWORD not in log
    finally:
        redis.stop()
