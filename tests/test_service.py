"""Running a node as a service (issue 17, item 8): the systemd unit, the log
file with its rotation, lines the journal files by priority."""

from __future__ import annotations

import configparser
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.config import Config
from gateway.logsetup import JournalFormatter, journal_stream

from .conftest import REPO, free_port, start_gateway, write_users

UNIT = REPO / "deploy" / "smbgw@.service"


def _unit() -> configparser.ConfigParser:
    # strict=False: systemd allows a key more than once (ExecStartPre...).
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_the_unit_runs_one_node_per_config_as_its_own_user() -> None:
    unit = _unit()
    service = unit["Service"]
    assert service["ExecStart"].endswith(" serve --config /etc/smbgw/%i.toml")
    assert service["User"] == "smbgw"
    # Port 445 without root, and no other privilege.
    assert service["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert service["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert service["NoNewPrivileges"] == "yes"
    assert service["Restart"] == "on-failure"
    assert service["StandardError"] == "journal"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"  # reloads, never drops clients
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # An instance of the template, its ExecStart pointed at this checkout's
    # smbgw (verify checks the program exists).
    smbgw = Path(sys.executable).parent / "smbgw"
    text = UNIT.read_text().replace("/usr/local/bin/smbgw", str(smbgw))
    (tmp_path / "smbgw@n1.service").write_text(text)
    out = subprocess.run(
        [analyze, "verify", str(tmp_path / "smbgw@n1.service")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    # Unknown keys are only warned about: no output at all is the pass.
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr


def test_the_node_logs_to_its_file_and_rotates_it(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "node.log"
    log_file.parent.mkdir()
    node = start_gateway(tmp_path / "gw", extra=[
        "--log-file", str(log_file), "--log-max-bytes", "1000", "--log-backups", "2",
    ])  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while " listening on " not in log_file.read_text():
            assert time.monotonic() < deadline, log_file.read_text()
            time.sleep(0.05)
        time.sleep(0.3)  # past start: SIGHUP now reloads (before, it would kill)
        # Every reload logs a line: enough of them to rotate more than twice.
        for _ in range(12):
            before = _reloads(log_file)
            node.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while _reloads(log_file) == before:
                assert time.monotonic() < deadline, "no reload line"
                time.sleep(0.02)
            time.sleep(0.05)  # the reload's other lines (users warnings) too
    finally:
        rc = node.stop()
    assert rc == 0
    assert node.log() == "", node.log()  # nothing on stderr: it all went to the file
    files = sorted(p.name for p in log_file.parent.iterdir())
    assert files == ["node.log", "node.log.1", "node.log.2"], files  # two backups kept
    for name in files:
        assert (log_file.parent / name).stat().st_size <= 1000
    assert "stopping node" in log_file.read_text()  # the newest lines in the file itself
    assert "SIGHUP: configuration reloaded" in (log_file.parent / "node.log.1").read_text()


def _reloads(log_file: Path) -> list[str]:
    """The reload lines of the file and its backups: a rotation moves lines
    and drops the oldest, so a new line shows as a change, not a count."""
    lines = []
    for path in sorted(log_file.parent.glob(log_file.name + "*")):
        text = path.read_text(errors="replace")
        lines += [line for line in text.splitlines() if "configuration reloaded" in line]
    return lines


def test_log_file_in_toml_and_its_mistakes(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    users = write_users(tmp_path / "users")
    conf = tmp_path / "gw.toml"

    def check(settings: str) -> subprocess.CompletedProcess[str]:
        conf.write_text(
            f'listen = "127.0.0.1:{free_port()}"\nusers = "{users}"\n{settings}\n'
            f'[[shares]]\nname = "s"\npath = "{share}"\n'
        )
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", "check", "--config", str(conf)],
            cwd=REPO, capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    good = check(f'log_file = "{tmp_path}/n1.log"\nlog_max_bytes = 4096\nlog_backups = 3')
    assert good.returncode == 0, good.stderr
    assert f'log_file="{tmp_path}/n1.log"' in good.stdout
    assert not (tmp_path / "n1.log").exists()  # check creates nothing
    for settings, words in (
        (f'log_file = "{tmp_path}/no/such/dir/n1.log"', "does not exist"),
        ("log_max_bytes = -1", "log_max_bytes"),
        ("log_backups = 0", "log_backups must be at least 1"),
        ('log_max_bytes = "10M"', "expected an integer"),
        ('bus_wait = "soon"', "expected a number of seconds"),
        ("bus_wait = -1", "bus_wait"),
    ):
        bad = check(settings)
        assert bad.returncode == 2, (settings, bad.stdout, bad.stderr)
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (settings, lines)


def test_journal_lines_carry_their_priority(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = (tmp_path / "stderr").open("w")
    try:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert journal_stream(stream)  # systemd named this very stream
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not journal_stream(stream)  # inherited by a child logging elsewhere
    finally:
        stream.close()
    formatter = JournalFormatter("%(name)s: %(message)s")

    def line(level: int) -> str:
        return formatter.format(logging.LogRecord("smbgw.x", level, "", 0, "hi", None, None))

    assert line(logging.ERROR) == "<3>smbgw.x: hi"
    assert line(logging.WARNING) == "<4>smbgw.x: hi"
    assert line(logging.INFO) == "<6>smbgw.x: hi"
    assert Config().log_file is None  # stderr (the journal) unless asked
