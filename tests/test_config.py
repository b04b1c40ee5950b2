"""The users file: ``user:password`` lines read as a user would write them, and
every mistake answered with one line naming the file and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_users


def test_load_users(tmp_path: Path) -> None:
    f = tmp_path / "users"
    f.write_text("# comment\n\n  alice:Secret1\r\nbob:p:a ss \n   # indented comment\nempty:\n")
    assert load_users(f) == {"alice": "Secret1", "bob": "p:a ss ", "empty": ""}


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("alice:x\nnocolon\n", "line 2: expected user:password"),
        (":pw\n", "line 1: empty user name"),
        ("alice:x\nALICE:y\n", "line 2: user 'ALICE' already defined on line 1"),
        ("dom\\alice:x\n", "line 1: invalid user name"),
        ("# only comments\n\n", "defines no user"),
    ],
)
def test_load_users_errors(tmp_path: Path, content: str, match: str) -> None:
    f = tmp_path / "users"
    f.write_text(content)
    with pytest.raises(ConfigError, match=match) as info:
        load_users(f)
    assert str(f) in str(info.value) and "\n" not in str(info.value)


def test_load_users_unreadable(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match="cannot read users file") as info:
        load_users(missing)
    assert str(missing) in str(info.value)
    bad = tmp_path / "latin1"
    bad.write_bytes(b"alice:caf\xe9\n")
    with pytest.raises(ConfigError, match="line 1: not valid UTF-8"):
        load_users(bad)
