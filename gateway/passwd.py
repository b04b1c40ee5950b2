"""``smbgw passwd --users FILE USER``: store a user's NT hash in a users file.

As Samba's smbpasswd, the file keeps the NT hash (MD4 of the UTF-16LE
password), never the password: the line becomes ``USER:nt:HASH``
(gateway/users.py).  The password is asked twice when standard input is a
terminal, else read as one line from it, so that scripts and tests can pipe it.
The user's line is replaced if there is one (whatever its case), every other
line and comment is kept; a missing file is created with mode 0600.  The new
content must load as the node would load it, or nothing is written.  Running
nodes read it on SIGHUP.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import sys
import tempfile

from .config import ConfigError, load_users
from .fs.acl import check_rid_collisions
from .users import file_warnings, hash_line


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "passwd",
        help="set a user's password in a users file (stored as an NT hash, as smbpasswd does)",
    )
    p.add_argument("--users", required=True, metavar="FILE", help="the users file (created 0600)")
    p.add_argument("user", metavar="USER", help="the user to add or change")


def run(args: argparse.Namespace) -> int:
    path: str = args.users
    user: str = args.user
    _check_name(user)
    password = _read_password(user)
    existed, changed = store(path, user, password)
    what = "changed the password of" if changed else "added"
    created = "" if existed else " (created, mode 0600)"
    print(f"{what} user {user} in {path}{created}; running nodes read it on SIGHUP")
    for warning in file_warnings(path, load_users(path)):
        print(f"smbgw: warning: {warning}", file=sys.stderr)
    return 0


def _check_name(user: str) -> None:
    # What load_users would refuse, said before asking for a password; ':'
    # would end the name early.
    if not user or user != user.strip():
        raise ConfigError(f"user name {user!r}: empty, or blanks around it")
    if any(c in user for c in ":\\") or any(ord(c) < 32 for c in user) or user.startswith("#"):
        raise ConfigError(f"user name {user!r} is not allowed (no ':', '\\', control characters)")


def _read_password(user: str) -> str:
    if sys.stdin is not None and sys.stdin.isatty():
        first = getpass.getpass(f"New password for {user}: ")
        if getpass.getpass("Retype new password: ") != first:
            raise ConfigError("the passwords do not match; nothing changed")
        password = first
    else:
        line = sys.stdin.readline() if sys.stdin is not None else ""
        if not line:
            raise ConfigError("no password on standard input (one line expected)")
        password = line.rstrip("\r\n")
    if not password:
        # smbpasswd wants -n for that; nobody should get in with an empty password.
        raise ConfigError("empty password refused; nothing changed")
    return password


def store(path: str, user: str, password: str) -> tuple[bool, bool]:
    """Write ``user``'s hash line into ``path``: (the file existed, the user existed)."""
    new_line = hash_line(user, password)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        existed = True
    except FileNotFoundError:
        raw, existed = b"", False
    except OSError as e:
        raise ConfigError(f"cannot read users file {path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"users file {path} is not valid UTF-8; nothing changed") from None
    lines = text.split("\n")
    trailing = lines[-1] == ""
    if trailing:
        lines.pop()
    replaced = False
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name = line.partition(":")[0].strip()
        if name.lower() == user.lower() and not replaced:
            # Keep a CRLF file CRLF.
            lines[i] = new_line + ("\r" if line.endswith("\r") else "")
            replaced = True
    if not replaced:
        lines.append(new_line)
    content = ("\n".join(lines) + "\n").encode("utf-8")
    _write(path, content, existed)
    return existed, replaced


def _write(path: str, content: bytes, existed: bool) -> None:
    """Replace the file in one step (a node reloading at that moment reads the
    old or the new content, never half), after checking that it loads."""
    target = os.path.realpath(path)  # a symlinked users file stays a symlink
    directory = os.path.dirname(target) or "."
    st = os.stat(target) if existed else None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".smbgw-passwd-", dir=directory)  # mode 0600
    except OSError as e:
        raise ConfigError(f"cannot write users file {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        users = load_users(tmp)
        clashes = check_rid_collisions(users)
        if clashes:
            a, b = clashes[0]
            raise ConfigError(f"users {a!r} and {b!r} would share a SID (see docs); rename one")
        if st is not None:
            os.chmod(tmp, st.st_mode & 0o7777)
            if (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
                try:
                    # Root editing the node's file must leave it the node's.
                    os.chown(tmp, st.st_uid, st.st_gid)
                except PermissionError:
                    # Not ours to give away: write in place, so owner and mode stay.
                    _write_in_place(target, content)
                    return
        os.replace(tmp, target)
        tmp = ""
    except ConfigError as e:
        msg = str(e).replace(tmp, path) if tmp else str(e)
        raise ConfigError(f"{msg}; nothing changed") from None
    except OSError as e:
        raise ConfigError(f"cannot write users file {path}: {e.strerror or e}") from None
    finally:
        if tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _write_in_place(path: str, content: bytes) -> None:
    with open(path, "r+b") as f:
        f.write(content)
        f.truncate()
        f.flush()
        os.fsync(f.fileno())
