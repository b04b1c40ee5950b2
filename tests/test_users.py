"""Users as an operator manages them: `smbgw passwd` stores NT hashes that real
clients log on with, clear-text files still load with a warning, and SIGHUP
reloads users and shares while clients stay connected."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import smbclient as pysmb
from smbprotocol.exceptions import LogonFailure

from gateway.auth import Authenticator, AuthError
from gateway.cli import main
from gateway.config import ConfigError, load_users
from gateway.users import NtHash, nt_hash

from .conftest import REPO, GatewayNode, free_port, need, start_gateway
from .test_auth import run_pyspnego

# ---------------------------------------------------------------------------
# helpers


def passwd(users: Path, user: str, password: str) -> subprocess.CompletedProcess[str]:
    """`smbgw passwd` as a script runs it: the password piped on stdin."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "passwd", "--users", str(users), user],
        input=password + "\n", capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip


def smbclient_as(
    node: GatewayNode, user: str, password: str, commands: str = "ls", share: str = "share"
) -> subprocess.CompletedProcess[str]:
    cmd = [
        need("smbclient"), f"//{node.host}/{share}", "-p", str(node.port),
        "-U", f"{user}%{password}", "-m", "SMB3_11", "--client-protection=sign", "-c", commands,
    ]  # fmt: skip
    env = dict(os.environ, HOME=str(node.share_dir.parent))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


def wait_for_log(node: GatewayNode, needle: str, count: int = 1, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = node.log()
        if log.count(needle) >= count:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} not logged {count} time(s):\n{node.log()[-3000:]}")


def hup(node: GatewayNode, needle: str) -> str:
    """SIGHUP the node and wait for its answer (reloaded, or not)."""
    before = node.log().count(needle)
    node.proc.send_signal(signal.SIGHUP)
    return wait_for_log(node, needle, before + 1)


def pysmb_session(node: GatewayNode, user: str, password: str) -> dict[str, object]:
    cache: dict[str, object] = {}
    pysmb.register_session(
        node.host, username=user, password=password, port=node.port, connection_cache=cache,
        auth_protocol="ntlm", require_signing=True,
    )  # fmt: skip
    return cache


RELOADED = "SIGHUP: configuration reloaded"
NOT_RELOADED = "SIGHUP: configuration not reloaded"


# ---------------------------------------------------------------------------
# the hash and the file


def test_nt_hash_is_smbpasswds() -> None:
    # MD4(UTF-16LE("password")), the value every NTLM implementation agrees on.
    assert nt_hash("password").hex() == "8846f7eaee8fb117ad06bdd830b7586c"


def test_passwd_creates_0600_file_and_replaces_only_its_line(tmp_path: Path) -> None:
    users = tmp_path / "users"
    result = passwd(users, "alice", "Secret1")
    assert result.returncode == 0, result.stderr
    assert "added user alice" in result.stdout and result.stderr == ""
    assert users.stat().st_mode & 0o777 == 0o600
    assert users.read_text() == f"alice:nt:{nt_hash('Secret1').hex()}\n"

    users.write_bytes(f"# ops team\r\nbob:clear pw\r\n{users.read_text()}# end\n".encode())
    users.chmod(0o640)
    result = passwd(users, "ALICE", "n3w:pass")  # a name matches whatever its case
    assert result.returncode == 0, result.stderr
    assert "changed the password of user ALICE" in result.stdout
    assert users.read_bytes().decode() == (  # bytes: CRLF lines kept as they were
        f"# ops team\r\nbob:clear pw\r\nALICE:nt:{nt_hash('n3w:pass').hex()}\n# end\n"
    )
    assert users.stat().st_mode & 0o777 == 0o640  # the operator's mode stays
    # bob's clear text and the group bits are each pointed out, on stderr.
    assert "clear-text passwords (bob)" in result.stderr and "chmod 600" in result.stderr
    loaded = load_users(users)
    assert loaded == {"bob": "clear pw", "ALICE": NtHash(nt_hash("n3w:pass"))}
    assert "nt_hash" not in repr(loaded) and nt_hash("n3w:pass").hex() not in repr(loaded)


@pytest.mark.parametrize(
    ("name", "stdin", "needle"),
    [
        ("a:b", "pw\n", "not allowed"),
        ("dom\\a", "pw\n", "not allowed"),
        ("alice", "", "no password on standard input"),
        ("alice", "\n", "empty password refused"),
    ],
)
def test_passwd_refusals_change_nothing(tmp_path: Path, name: str, stdin: str, needle: str) -> None:
    users = tmp_path / "users"
    users.write_text("keep:me\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "passwd", "--users", str(users), name],
        input=stdin, capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("smbgw: ") and needle in lines[0], lines
    assert users.read_text() == "keep:me\n"


def test_passwd_refuses_a_file_that_would_not_load(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("alice:x\nbroken line\n")
    result = passwd(users, "bob", "pw")
    assert result.returncode == 2 and "line 2" in result.stderr and str(users) in result.stderr
    assert users.read_text() == "alice:x\nbroken line\n"
    assert [p.name for p in tmp_path.iterdir()] == ["users"]  # no temporary file left


def test_passwd_on_a_terminal_asks_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    users = tmp_path / "users"
    answers = iter(["first", "second", "same", "same"])
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert main(["passwd", "--users", str(users), "carol"]) == 2
    assert "do not match" in capsys.readouterr().err and not users.exists()
    assert main(["passwd", "--users", str(users), "carol"]) == 0
    assert load_users(users) == {"carol": NtHash(nt_hash("same"))}


@pytest.mark.parametrize(
    ("line", "needle"),
    [("alice:nt:1234\n", "32 hex digits"), ("alice:nt:" + "zz" * 16 + "\n", "32 hex digits")],
)
def test_malformed_hash_line_names_the_line(tmp_path: Path, line: str, needle: str) -> None:
    users = tmp_path / "users"
    users.write_text("# c\n" + line)
    with pytest.raises(ConfigError, match=f"line 2: .*{needle}"):
        load_users(users)


@pytest.mark.parametrize("protocol", ["negotiate", "ntlm"])
def test_authenticator_with_only_the_hash(protocol: str) -> None:
    users = {"Alice": NtHash(nt_hash("Secret1"))}
    auth = Authenticator(users)
    client = run_pyspnego(auth, "alice", "Secret1", protocol)
    # The key that signs and seals: derived from the hash alone, as the client's.
    assert auth.username == "Alice" and auth.session_key == client.session_key
    with pytest.raises(AuthError, match="wrong password"):
        run_pyspnego(Authenticator(users), "alice", "secret1", protocol)


# ---------------------------------------------------------------------------
# a real node


@pytest.fixture(scope="module")
def hashed_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayNode, Path]]:
    work = tmp_path_factory.mktemp("users")
    users = work / "hashed-users"
    assert passwd(users, "alice", "Al1ce pw").returncode == 0
    node = start_gateway(work / "gw", extra=["--users", str(users)])
    yield node, users
    rc = node.stop()
    assert rc == 0, f"gateway exited with {rc}\n{node.log()[-4000:]}"
    assert "Traceback" not in node.log(), node.log()[-4000:]


def test_hashed_user_logs_on_with_smbclient_and_smbprotocol(
    hashed_node: tuple[GatewayNode, Path],
) -> None:
    node, users = hashed_node
    assert "Al1ce" not in users.read_text()
    result = smbclient_as(node, "alice", "Al1ce pw", "put /etc/hostname from-smbclient.txt; ls")
    assert result.returncode == 0 and "from-smbclient.txt" in result.stdout, result
    cache = pysmb_session(node, "alice", "Al1ce pw")
    try:
        path = rf"\\{node.host}\share\from-smbprotocol.txt"
        with pysmb.open_file(path, mode="wb", port=node.port, connection_cache=cache) as f:
            f.write(b"hashed logon")
        with pysmb.open_file(path, mode="rb", port=node.port, connection_cache=cache) as f:
            assert f.read() == b"hashed logon"
    finally:
        pysmb.reset_connection_cache(connection_cache=cache)
    # Neither a file of clear text nor one others can read: no warning.
    assert "WARNING smbgw.users" not in node.log()

    refused = smbclient_as(node, "alice", "al1ce pw")
    assert refused.returncode != 0 and "NT_STATUS_LOGON_FAILURE" in refused.stdout + refused.stderr
    with pytest.raises(LogonFailure):
        pysmb_session(node, "alice", "wrong")


def test_sighup_adds_a_user_while_a_client_stays_connected(
    hashed_node: tuple[GatewayNode, Path],
) -> None:
    node, users = hashed_node
    cache = pysmb_session(node, "alice", "Al1ce pw")
    try:
        conn = next(iter(cache.values()))
        path = rf"\\{node.host}\share\held-open.bin"
        with pysmb.open_file(path, mode="wb", port=node.port, connection_cache=cache) as held:
            held.write(b"before;")
            held.flush()
            assert smbclient_as(node, "bob", "B0b pw").returncode != 0  # not yet a user

            result = passwd(users, "bob", "B0b pw")
            assert result.returncode == 0, result.stderr
            log = hup(node, RELOADED)
            assert "users added: bob" in log

            bob = smbclient_as(node, "bob", "B0b pw")
            assert bob.returncode == 0, bob.stdout + bob.stderr
            bob_cache = pysmb_session(node, "bob", "B0b pw")
            pysmb.reset_connection_cache(connection_cache=bob_cache)
            refused = smbclient_as(node, "bob", "b0b pw")
            assert "NT_STATUS_LOGON_FAILURE" in refused.stdout + refused.stderr

            # A bad file on the next reload: one ERROR line, the running users stay.
            good = users.read_text()
            users.write_text(good + "no colon here\n")
            log = hup(node, NOT_RELOADED)
            errors = [ln for ln in log.splitlines() if " ERROR " in ln]
            assert len(errors) == 1 and f"{users}, line 3" in errors[0], errors
            users.write_text(good)
            assert smbclient_as(node, "bob", "B0b pw").returncode == 0

            # The first client's connection and open handle lived through it all.
            assert next(iter(cache.values())) is conn
            held.write(b"after")
        with pysmb.open_file(path, mode="rb", port=node.port, connection_cache=cache) as f:
            assert f.read() == b"before;after"
        assert next(iter(cache.values())) is conn
    finally:
        pysmb.reset_connection_cache(connection_cache=cache)
    assert node.proc.poll() is None
    assert (node.share_dir / "held-open.bin").read_bytes() == b"before;after"


def test_plaintext_world_readable_file_warns_and_sighup_reloads_shares(tmp_path: Path) -> None:
    share, other = tmp_path / "data", tmp_path / "other"
    share.mkdir()
    other.mkdir()
    users = tmp_path / "users"
    users.write_text("alice:clear1\n")
    users.chmod(0o644)
    conf = tmp_path / "gw.toml"

    def write_conf(read_only: bool, comment: str, extra_share: bool, path: Path) -> None:
        text = (
            f'users = "{users}"\n'
            f'[[shares]]\nname = "share"\npath = "{path}"\ncomment = "{comment}"\n'
            f"read_only = {str(read_only).lower()}\n"
        )
        if extra_share:
            text += f'[[shares]]\nname = "extra"\npath = "{other}"\n'
        conf.write_text(text)

    write_conf(False, "first comment", False, share)
    port = free_port()
    node = start_gateway(
        tmp_path / "gw", port=port, share_dir=share, flags=False,
        extra=["--listen", f"127.0.0.1:{port}", "--config", str(conf)],
    )  # fmt: skip
    try:
        # Logged right after the node starts listening: wait for them.
        log = wait_for_log(node, "WARNING smbgw.users", 2)
        time.sleep(0.2)  # and no third one
        log = node.log()
        warnings = [ln for ln in log.splitlines() if "WARNING smbgw.users" in ln]
        assert len(warnings) == 2, warnings
        assert str(users) in warnings[0] and "smbgw passwd" in warnings[0]
        assert "(alice)" in warnings[0] and "clear1" not in log
        assert "mode 0644" in warnings[1] and f"chmod 600 {users}" in warnings[1]

        assert smbclient_as(node, "alice", "clear1", "put /etc/hostname a.txt").returncode == 0
        # read_only, comment, a new share and a moved path, at once.
        write_conf(True, "second comment", True, tmp_path)
        log = hup(node, RELOADED)
        assert "shares added: extra" in log and "shares changed: share" in log
        assert "only a restart applies it: share share path" in log

        put = smbclient_as(node, "alice", "clear1", "put /etc/hostname b.txt")
        # The tree connect made after the reload is read-only: the CREATE is refused.
        assert put.returncode != 0 and "NT_STATUS_ACCESS_DENIED" in put.stdout, put
        assert not (share / "b.txt").exists()
        extra = smbclient_as(node, "alice", "clear1", "put /etc/hostname c.txt", share="extra")
        assert extra.returncode == 0, extra.stdout + extra.stderr
        assert (other / "c.txt").exists()
        listing = subprocess.run(
            [need("smbclient"), "-L", node.host, "-p", str(node.port), "-U", "alice%clear1"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert "second comment" in listing.stdout and "extra" in listing.stdout, listing
    finally:
        rc = node.stop()
    assert rc == 0, node.log()[-4000:]
    assert "Traceback" not in node.log(), node.log()[-4000:]


def test_reload_on_a_shared_bus_leaves_a_new_share_for_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A node on a shared bus compares each share's volume with the other
    # nodes' at start only: a share added by SIGHUP would skip that check.
    from gateway import reload as reloading
    from gateway.config import Config, ShareConfig
    from gateway.fs.vfs import ShareFS

    caplog.set_level(logging.INFO)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    cfg = Config(shares=[ShareConfig("a", str(a))], users={"u": "p"}, node_id="n1")
    node = SimpleNamespace(
        config=cfg, share_fs={"a": ShareFS(str(a))}, allows_guest=False,
        bus=SimpleNamespace(shared=True),
    )  # fmt: skip
    new = Config(
        shares=[ShareConfig("a", str(b), comment="new"), ShareConfig("b", str(b), guest_ok=True)],
        users={"u": "p", "v": NtHash(nt_hash("q"))},
        node_id="n1",
        break_timeout=5.0,
    )
    assert reloading.reload(cast(Any, node), lambda: new)
    assert cfg.shares == [ShareConfig("a", str(a), comment="new")]  # the path stays
    assert set(node.share_fs) == {"a"} and not node.allows_guest
    assert cfg.users == new.users and cfg.break_timeout == 35.0
    assert "users added: v" in caplog.text and "shares changed: a" in caplog.text
    assert "break_timeout, share a path, new share b" in caplog.text

    def broken() -> Config:
        raise ConfigError("users file x, line 1: expected user:password")

    assert not reloading.reload(cast(Any, node), broken)
    assert cfg.users == new.users
    assert "not reloaded, the running one stays: users file x, line 1" in caplog.text


def test_a_closed_terminal_still_stops_cluster_up(tmp_path: Path) -> None:
    # A terminal that closes sends SIGHUP to its whole foreground group: the
    # nodes now only reload on it, so `cluster up` must stop them itself.
    share = tmp_path / "share"
    share.mkdir()
    users = tmp_path / "users"
    assert passwd(users, "alice", "pw").returncode == 0
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "cluster", "up", "--nodes", "2", "--port", str(port),
         "--share", f"share={share}", "--users", str(users)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "Ctrl-C" not in proc.stdout.readline():
            pass
        os.killpg(proc.pid, signal.SIGHUP)
        proc.wait(timeout=30)
        time.sleep(0.3)
        try:
            os.killpg(proc.pid, 0)
            left = True  # a node or the redis-server outlived cluster up
        except ProcessLookupError:
            left = False
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left, a failure or not
        proc.wait()
    assert not left
