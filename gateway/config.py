"""Node configuration: command-line flags and TOML, one validated structure."""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import shutil
import socket
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from .fs.acl import check_rid_collisions


class ConfigError(Exception):
    """Bad configuration; the message is one line meant for the operator."""


@dataclass(frozen=True)
class ShareConfig:
    name: str
    path: str
    comment: str = ""
    guest_ok: bool = False
    read_only: bool = False
    encrypt: bool = False
    # Advertised to 3.x clients (SMB2_SHARE_CAP_CONTINUOUS_AVAILABILITY, and
    # SMB2_GLOBAL_CAP_PERSISTENT_HANDLES at NEGOTIATE) so they ask for
    # persistent handles and fail over to another node.
    continuous_availability: bool = False


@dataclass
class Config:
    listen_host: str = "127.0.0.1"
    listen_port: int = 445
    shares: list[ShareConfig] = field(default_factory=list)
    users_file: str | None = None
    users: dict[str, str] = field(default_factory=dict)
    node_id: str = ""
    bus_url: str | None = None
    # The bus password kept out of the URL, so that it is in no command line:
    # read from this file, else from $SMBGW_BUS_PASSWORD (see bus_password()).
    bus_password_file: str | None = None
    server_name: str = "SMBGW"
    signing_required: bool = False
    encrypt_required: bool = False
    # Offer SMB2_GLOBAL_CAP_MULTI_CHANNEL (3.x): a client may bind a session to
    # more connections to this node (gateway/channels.py).
    multichannel: bool = True
    break_timeout: float = 35.0
    # Seconds a durable handle waits for its client when the client names no
    # timeout (and always for DHnQ): Samba's and Windows' 60 by default.
    durable_timeout: float = 60.0
    # Redis bus: seconds without a heartbeat before other nodes release this
    # node's opens, oplocks, leases and locks.
    node_ttl: float = 5.0
    # Address takeover (docs/operations.md, "Addresses that move"): serve a dead
    # node's listen address until it registers again. The command, if any, is
    # run as ``COMMAND add|remove ADDRESS PORT`` before taking and after
    # giving back an address (moving the address on a real host).
    takeover: bool = False
    takeover_command: str | None = None
    max_io_size: int = 8 * 1024 * 1024
    max_credits: int = 8192
    # What one client may take of a node (docs/configuration.md#limits).
    logon_timeout: float = 30.0  # seconds a connection may go without a session
    max_connections_per_address: int = 256
    max_sessions_per_connection: int = 64
    max_opens_per_connection: int = 16384
    max_opens_per_session: int = 16384
    # 0: what the descriptor limit leaves after sockets (the node raises its
    # RLIMIT_NOFILE to the hard limit at start and keeps 1024 for connections).
    max_opens_per_node: int = 0
    max_pending_per_connection: int = 1024  # requests waiting (locks, notify, breaks)
    # Samba's test-only FSCTL_SMBTORTURE controls (smbd:FSCTL_SMBTORTURE = yes):
    # only for running smbtorture, never in production.
    torture_hooks: bool = False
    log_level: str = "INFO"

    def share(self, name: str) -> ShareConfig | None:
        for s in self.shares:
            if s.name.lower() == name.lower():
                return s
        return None

    @property
    def any_continuously_available(self) -> bool:
        return any(s.continuous_availability for s in self.shares)

    def make_continuously_available(self) -> None:
        """Every share, however it was configured (``--ca``)."""
        self.shares = [replace(s, continuous_availability=True) for s in self.shares]


_SHARE_NAME = re.compile(r"^[A-Za-z0-9_.$ -]{1,80}$")


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = value, "445"
    host = host.strip("[]") or "0.0.0.0"
    try:
        port_n = int(port)
    except ValueError:
        raise ConfigError(f"--listen {value!r}: port must be a number") from None
    if not 0 < port_n < 65536:
        raise ConfigError(f"--listen {value!r}: port must be 1-65535")
    return host, port_n


def parse_share(value: str) -> ShareConfig:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise ConfigError(f"--share {value!r}: expected NAME=PATH")
    return ShareConfig(name=name, path=path)


def load_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


def _strict_bool(value: Any) -> bool:
    # bool() would read the string "false" as true.
    if not isinstance(value, bool):
        raise ValueError(value)
    return value


# TOML key, Config attribute, conversion: the settings that are plain values.
_SCALARS: list[tuple[str, str, Callable[[Any], Any]]] = [
    ("users", "users_file", str),
    ("node_id", "node_id", str),
    ("bus", "bus_url", str),
    ("bus_password_file", "bus_password_file", str),
    ("server_name", "server_name", str),
    ("signing_required", "signing_required", bool),
    ("encrypt_required", "encrypt_required", bool),
    ("multichannel", "multichannel", bool),
    ("break_timeout", "break_timeout", float),
    ("durable_timeout", "durable_timeout", float),
    ("node_ttl", "node_ttl", float),
    ("takeover", "takeover", _strict_bool),
    ("takeover_command", "takeover_command", str),
    ("max_io_size", "max_io_size", int),
    ("max_credits", "max_credits", int),
    ("logon_timeout", "logon_timeout", float),
    ("max_connections_per_address", "max_connections_per_address", int),
    ("max_sessions_per_connection", "max_sessions_per_connection", int),
    ("max_opens_per_connection", "max_opens_per_connection", int),
    ("max_opens_per_session", "max_opens_per_session", int),
    ("max_opens_per_node", "max_opens_per_node", int),
    ("max_pending_per_connection", "max_pending_per_connection", int),
    ("log_level", "log_level", lambda v: str(v).upper()),
    ("torture_hooks", "torture_hooks", bool),
]
_TOML_KEYS = {"listen", "shares"} | {key for key, _, _ in _SCALARS}
_SHARE_BOOLS = ("guest_ok", "read_only", "encrypt", "continuous_availability")
_SHARE_KEYS = {"name", "path", "comment", *_SHARE_BOOLS}


def apply_toml(cfg: Config, data: dict[str, Any], source: str) -> None:
    unknown = set(data) - _TOML_KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s): {', '.join(sorted(unknown))}")
    if "listen" in data:
        cfg.listen_host, cfg.listen_port = parse_listen(str(data["listen"]))
    for key, attr, convert in _SCALARS:
        if key in data:
            try:
                setattr(cfg, attr, convert(data[key]))
            except (TypeError, ValueError):
                raise ConfigError(f"{source}: {key} = {data[key]!r} is not valid") from None
    shares = data.get("shares", [])
    if not isinstance(shares, list):
        raise ConfigError(f"{source}: 'shares' must be an array of tables ([[shares]])")
    for entry in shares:
        if not isinstance(entry, dict) or "name" not in entry or "path" not in entry:
            raise ConfigError(f"{source}: every [[shares]] needs 'name' and 'path'")
        bad = set(entry) - _SHARE_KEYS
        if bad:
            raise ConfigError(f"{source}: unknown share setting(s): {', '.join(sorted(bad))}")
        cfg.shares.append(_share_from_toml(entry, source))


def _share_from_toml(entry: dict[str, Any], source: str) -> ShareConfig:
    name = str(entry["name"])

    def flag(key: str) -> bool:
        return _share_bool(entry, key, name, source)

    return ShareConfig(
        name=name,
        path=str(entry["path"]),
        comment=str(entry.get("comment", "")),
        guest_ok=flag("guest_ok"),
        read_only=flag("read_only"),
        encrypt=flag("encrypt"),
        continuous_availability=flag("continuous_availability"),
    )


def _share_bool(entry: dict[str, Any], key: str, share: str, source: str) -> bool:
    # bool() would read the string "false" as true: only a TOML boolean will do.
    value = entry.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{source}: share {share}: {key} = {value!r} is not true or false")
    return value


def validate(cfg: Config) -> None:
    """Check everything that would otherwise fail later, with a one-line reason."""
    if not cfg.shares:
        raise ConfigError("no share configured (use --share NAME=PATH)")
    seen: set[str] = set()
    for s in cfg.shares:
        if not _SHARE_NAME.match(s.name) or s.name.upper() == "IPC$":
            raise ConfigError(f"share name {s.name!r} is not allowed")
        if s.name.lower() in seen:
            raise ConfigError(f"share {s.name!r} is configured twice")
        seen.add(s.name.lower())
        if not os.path.isdir(s.path):
            raise ConfigError(f"share {s.name}: directory {s.path} does not exist")
        if not os.access(s.path, os.R_OK | os.X_OK):
            raise ConfigError(f"share {s.name}: directory {s.path} is not readable")
    if cfg.users_file:
        cfg.users = load_users(cfg.users_file)
        clashes = check_rid_collisions(cfg.users)
        if clashes:
            a, b = clashes[0]
            raise ConfigError(f"users {a!r} and {b!r} would share a SID (see docs); rename one")
    elif not any(s.guest_ok for s in cfg.shares):
        raise ConfigError("no users file (--users FILE) and no guest share: nobody could log on")
    if cfg.break_timeout <= 0:
        raise ConfigError("break_timeout must be positive")
    if cfg.node_ttl <= 0:
        raise ConfigError("node_ttl must be positive")
    if not 0 < cfg.durable_timeout <= 300:
        raise ConfigError("durable_timeout must be more than 0 and at most 300 seconds")
    if cfg.takeover:
        validate_takeover(cfg)
    if not 65536 <= cfg.max_io_size <= 8 * 1024 * 1024:
        raise ConfigError("max_io_size must be between 65536 and 8388608")
    positive = (
        "max_credits", "logon_timeout", "max_connections_per_address",
        "max_sessions_per_connection", "max_opens_per_connection", "max_opens_per_session",
        "max_pending_per_connection",
    )  # fmt: skip
    for name in positive:
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{name} must be positive")
    if not cfg.node_id:
        cfg.node_id = f"{socket.gethostname()}-{cfg.listen_host}-{cfg.listen_port}"


def validate_takeover(cfg: Config) -> None:
    """Takeover moves this node's listen address to another node: it needs one
    address (not a wildcard, not a name) and a shared bus with other nodes."""
    where = f"{cfg.listen_host}:{cfg.listen_port}"
    try:
        address = ipaddress.ip_address(cfg.listen_host)
    except ValueError:
        raise ConfigError(f"--takeover needs an IP address to listen on, not {where!r}") from None
    if address.is_unspecified:
        raise ConfigError(
            f"--takeover cannot move the wildcard address {where}: listen on this "
            "node's own address"
        )
    scheme = urlsplit(cfg.bus_url).scheme.lower() if cfg.bus_url else "memory"
    if scheme == "memory":
        raise ConfigError(
            "--takeover needs a shared bus (--bus redis://...): on the in-process bus "
            "there is no other node to take over from"
        )
    if cfg.takeover_command is not None:
        _check_command(cfg.takeover_command)


def _check_command(command: str) -> None:
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise ConfigError(f"takeover_command {command!r}: {e}") from None
    if not argv:
        raise ConfigError("takeover_command is empty")
    if shutil.which(argv[0]) is None:
        raise ConfigError(f"takeover_command: {argv[0]} is not an executable program")


def load_users(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read ``user:password`` lines; ``#`` comments and blank lines are ignored.

    The password is everything after the first colon, kept verbatim (only the
    line ending is removed).  User names are stripped of surrounding blanks,
    must be non-empty, must not contain a backslash and must be unique ignoring
    case.  Raises ConfigError with a one-line message naming the file (and line).
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read users file {path}: {e.strerror or e}") from None
    users: dict[str, str] = {}
    seen: dict[str, int] = {}
    for lineno, line_b in enumerate(raw.split(b"\n"), 1):
        try:
            line = line_b.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            raise ConfigError(f"users file {path}, line {lineno}: not valid UTF-8") from None
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        user = user.strip()
        if not sep:
            raise ConfigError(f"users file {path}, line {lineno}: expected user:password")
        if not user:
            raise ConfigError(f"users file {path}, line {lineno}: empty user name")
        if "\\" in user or any(ord(c) < 32 for c in user):
            raise ConfigError(f"users file {path}, line {lineno}: invalid user name {user!r}")
        key = user.lower()
        if key in seen:
            raise ConfigError(
                f"users file {path}, line {lineno}: user {user!r} already defined "
                f"on line {seen[key]}"
            )
        seen[key] = lineno
        users[user] = password
    if not users:
        raise ConfigError(f"users file {path} defines no user")
    return users


BUS_PASSWORD_ENV = "SMBGW_BUS_PASSWORD"


def bus_password(password_file: str | None) -> str | None:
    """The bus password from ``password_file`` (its first line), else from
    $SMBGW_BUS_PASSWORD, else None (a password in the URL, or none at all)."""
    if password_file:
        try:
            with open(password_file, encoding="utf-8") as f:
                line = f.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read bus password file {password_file}: {e}") from None
        if not line:
            raise ConfigError(f"bus password file {password_file} is empty")
        return line
    return os.environ.get(BUS_PASSWORD_ENV) or None
