"""Strict configuration (issue 17, items 3 and 4): every value of the wrong
type or form is one line on stderr naming the fix and exit status 2, never a
silent misreading; ``smbgw check`` validates without serving; ``--version``;
a closed stdout pipe ends a command quietly."""

from __future__ import annotations

import importlib.metadata
import os
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.config import _SCALARS, _SHARE_KEYS, Config, ConfigError, apply_toml

from .conftest import REPO, free_port, write_users


def smbgw(*args: str, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a process group of its own, and check that nothing
    of it is left running once it has exited."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=REPO, stdout=stdout, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"smbgw {' '.join(args)} still running after 30 s") from None
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # no process of its group is left
    return subprocess.CompletedProcess(proc.args, proc.returncode, out or "", err)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("smbgw: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    (tmp_path / "share").mkdir()
    write_users(tmp_path / "users")
    return tmp_path


def node_flags(d: Path, port: int | None = None) -> list[str]:
    return ["--listen", f"127.0.0.1:{port or free_port()}", "--share", f"s={d / 'share'}",
            "--users", str(d / "users")]  # fmt: skip


def toml(d: Path, settings: str, share: str = "", listen: str = "") -> str:
    """A config file that is valid but for ``settings`` and ``share`` lines."""
    conf = d / "gw.toml"
    listen = listen or f'"127.0.0.1:{free_port()}"'
    conf.write_text(
        f'listen = {listen}\nusers = "{d / "users"}"\n{settings}\n'
        f'[[shares]]\nname = "s"\npath = "{d / "share"}"\n{share}\n'
    )
    return str(conf)


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# -- the mistakes the issue lists, through `smbgw serve` ------------------------------------


def test_listen_as_a_toml_integer(node_dir: Path) -> None:
    # Once taken as the host "4489", port 445.
    result = smbgw("serve", "--config", toml(node_dir, "", listen="4489"))
    assert_one_line_error(result, 'gw.toml: listen = 4489: expected a string "HOST:PORT"')


def test_listen_flag_without_a_port(node_dir: Path) -> None:
    flags = node_flags(node_dir)
    flags[1] = "127.0.0.1"  # once taken as 127.0.0.1:445, without a word
    assert_one_line_error(smbgw("serve", *flags), "--listen '127.0.0.1'", "write HOST:PORT")


def test_listen_ipv6_without_brackets(node_dir: Path) -> None:
    flags = node_flags(node_dir)
    flags[1] = "::1"  # was read as host ":" and port 1
    assert_one_line_error(smbgw("serve", *flags), "[ADDRESS]:PORT")


def test_listen_port_not_a_number(node_dir: Path) -> None:
    flags = node_flags(node_dir)
    flags[1] = "127.0.0.1:4_45"  # int() would take it
    assert_one_line_error(smbgw("serve", *flags), "port must be a number")


def test_unknown_log_level_flag(node_dir: Path) -> None:
    port = free_port()
    result = smbgw("serve", *node_flags(node_dir, port), "--log-level", "bogus")
    assert_one_line_error(result, "--log-level 'bogus'", "DEBUG, INFO, WARNING, ERROR")
    assert port_is_free(port)


def test_unknown_log_level_in_toml(node_dir: Path) -> None:
    result = smbgw("serve", "--config", toml(node_dir, 'log_level = "verbose"'))
    assert_one_line_error(result, 'gw.toml: log_level = "verbose"', '"DEBUG"')


def test_share_path_is_a_file(node_dir: Path) -> None:
    flags = node_flags(node_dir)
    flags[3] = "d=/etc/passwd"
    assert_one_line_error(smbgw("serve", *flags), "share d: /etc/passwd is not a directory")


def test_share_switch_as_a_string(node_dir: Path) -> None:
    # bool("no") is True: read_only = "no" once made the share read-only.
    result = smbgw("serve", "--config", toml(node_dir, "", 'read_only = "no"'))
    assert_one_line_error(result, 'gw.toml: share s: read_only = "no": expected true or false')


@pytest.mark.parametrize(
    "key", ["signing_required", "encrypt_required", "multichannel", "takeover", "torture_hooks"]
)
def test_node_switch_as_a_string(node_dir: Path, key: str) -> None:
    result = smbgw("serve", "--config", toml(node_dir, f'{key} = "false"'))
    assert_one_line_error(result, f'gw.toml: {key} = "false": expected true or false')


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ('break_timeout = "10"', 'break_timeout = "10": expected a number of seconds'),
        ("max_credits = 512.0", "max_credits = 512.0: expected an integer"),
        ("max_io_size = true", "max_io_size = true: expected an integer"),
        ("node_id = 7", "node_id = 7: expected a string"),
        ('bus_password_file = ["a"]', 'bus_password_file = ["a"]: expected a string'),
        ("node_ttl = nan", "node_ttl = NaN: expected a number of seconds"),
    ],
)
def test_node_setting_of_the_wrong_type(node_dir: Path, setting: str, words: str) -> None:
    result = smbgw("check", "--config", toml(node_dir, setting))
    assert_one_line_error(result, f"gw.toml: {words}")


@pytest.mark.parametrize(
    ("share", "words"),
    [
        ("comment = 3", "share s: comment = 3: expected a string"),
        ("guest_ok = 1", "share s: guest_ok = 1: expected true or false"),
    ],
)
def test_share_setting_of_the_wrong_type(node_dir: Path, share: str, words: str) -> None:
    assert_one_line_error(smbgw("check", "--config", toml(node_dir, "", share)), words)


def test_share_name_of_the_wrong_type(node_dir: Path) -> None:
    conf = node_dir / "gw.toml"
    conf.write_text(f'users = "{node_dir / "users"}"\n[[shares]]\nname = 5\npath = "/srv"\n')
    assert_one_line_error(smbgw("check", "--config", str(conf)), "[[shares]] name = 5")


def test_break_timeout_flag_nan(node_dir: Path) -> None:
    result = smbgw("check", *node_flags(node_dir), "--break-timeout", "nan")
    assert_one_line_error(result, "break_timeout must be a finite number")


# -- every TOML key, in process ------------------------------------------------------------

CANDIDATES: list[Any] = ["text", 7, 1.5, True, ["a"], {"a": 1}]


def _same_kind(stored: Any, given: Any) -> bool:
    if isinstance(given, bool) or isinstance(stored, bool):
        return type(stored) is type(given)
    if isinstance(given, int) and isinstance(stored, float):
        return True  # seconds may be written 10 or 10.0
    return type(stored) is type(given)


@pytest.mark.parametrize(("key", "attr"), [(key, attr) for key, attr, _ in _SCALARS])
def test_no_top_level_value_changes_type(key: str, attr: str) -> None:
    """A value is taken as written or refused naming file, key and type:
    never converted (bool("no"), str(4489), int(True))."""
    refused = 0
    for value in CANDIDATES:
        cfg = Config()
        try:
            apply_toml(cfg, {key: value}, "gw.toml")
        except ConfigError as e:
            assert str(e).startswith(f"gw.toml: {key} = ") and ": expected " in str(e), e
            assert "\n" not in str(e)
            refused += 1
            continue
        assert _same_kind(getattr(cfg, attr), value), (key, value, getattr(cfg, attr))
    assert refused >= len(CANDIDATES) - 2, key


@pytest.mark.parametrize("key", sorted(_SHARE_KEYS))
def test_no_share_value_changes_type(key: str) -> None:
    for value in CANDIDATES:
        cfg = Config()
        entry = {"name": "s", "path": "/p", key: value}
        try:
            apply_toml(cfg, {"shares": [entry]}, "gw.toml")
        except ConfigError as e:
            assert str(e).startswith("gw.toml: ") and f"{key} = " in str(e), e
            assert ": expected " in str(e) and "\n" not in str(e), e
            continue
        assert _same_kind(getattr(cfg.shares[0], key), value), (key, value)


# -- smbgw check ------------------------------------------------------------------------


def test_check_prints_a_summary_without_serving(node_dir: Path) -> None:
    port = free_port()
    nobody = free_port()  # no Redis there: serve would stop, check must not connect
    conf = toml(
        node_dir,
        f'node_id = "n1"\nbus = "redis://:secret@127.0.0.1:{nobody}/0"\nsigning_required = true',
        'read_only = true\ncomment = "the data"',
    )
    with socket.socket() as busy:  # serve could not bind it; check must not try
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", port))
        busy.listen()
        result = smbgw("check", "--config", conf, "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert "configuration OK" in out
    assert "node id:  n1" in out
    assert f"listen:   127.0.0.1:{port}" in out
    assert f"bus:      redis://:***@127.0.0.1:{nobody}/0" in out and "secret" not in out
    assert "users:    1 in " in out
    assert f"s  {node_dir / 'share'}  " in out
    assert 'comment="the data"' in out and "read_only=true" in out
    assert "signing_required=true" in out


def test_check_refuses_what_serve_refuses(node_dir: Path) -> None:
    result = smbgw("check", "--config", toml(node_dir, "", 'encrypt = "yes"'))
    assert_one_line_error(result, 'share s: encrypt = "yes": expected true or false')


def test_check_bad_bus_url(node_dir: Path) -> None:
    result = smbgw("check", *node_flags(node_dir), "--bus", "rdis://127.0.0.1/0")
    assert_one_line_error(result, "unknown bus URL scheme 'rdis'")


def test_check_missing_bus_password_file(node_dir: Path) -> None:
    missing = node_dir / "no-password"
    flags = ["--bus", f"redis://127.0.0.1:{free_port()}/0", "--bus-password-file", str(missing)]
    result = smbgw("check", *node_flags(node_dir), *flags)
    assert_one_line_error(result, f"cannot read bus password file {missing}")


def test_cluster_up_unknown_log_level(node_dir: Path) -> None:
    up = ["cluster", "up", "--share", f"s={node_dir / 'share'}", "--users", str(node_dir / "users"),
          "--uncoordinated", "--nodes", "1", "--port", str(free_port())]  # fmt: skip
    assert_one_line_error(smbgw(*up, "--log-level", "loud"), "--log-level 'loud'", "DEBUG")


def test_deploy_config_has_the_right_types() -> None:
    """The shipped example is valid TOML of the right types (paths aside)."""
    data = tomllib.loads((REPO / "deploy" / "smbgw.toml").read_text())
    apply_toml(Config(), data, "deploy/smbgw.toml")


# -- --version, closed pipes -------------------------------------------------------------


def test_version() -> None:
    result = smbgw("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"smbgw {importlib.metadata.version('smb-oplock-gateway')}"


def _into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """As `smbgw ... | head -3` once head has gone: stdout's reader is closed."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return smbgw(*args, stdout=write_end)
    finally:
        os.close(write_end)


def test_check_into_a_closed_pipe_is_quiet(node_dir: Path) -> None:
    result = _into_closed_pipe("check", *node_flags(node_dir))
    assert result.stderr == ""
    assert result.returncode == 128 + signal.SIGPIPE


def test_status_into_a_closed_pipe_is_quiet() -> None:
    from .redis_fixtures import isolated, shared_url

    result = _into_closed_pipe("status", "--bus", isolated(shared_url("redis")))
    assert result.stderr == ""
    assert result.returncode == 128 + signal.SIGPIPE
