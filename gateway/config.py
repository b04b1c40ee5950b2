"""Node configuration: command-line flags and TOML, one validated structure."""

from __future__ import annotations

import ipaddress
import json
import math
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
from .users import Credential, parse_credential


class ConfigError(Exception):
    """Bad configuration; the message is one line meant for the operator."""


# Processes per node (`smbgw serve --workers N`, gateway/workers.py). One for
# now; the CPU count once the whole suite has been seen green with workers on.
DEFAULT_WORKERS = 1
MAX_WORKERS = 64


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
    # The volume id of every file's identity (gateway/fs/vfs.py): given here,
    # it overrides the one kept in the root's xattr (or st_dev); every node
    # serving the share must then give the same.
    volume_id: int | None = None
    # Previous versions (gateway/fs/snapshots.py): a folder, relative to the
    # share root or absolute, of @GMT-YYYY.MM.DD-HH.MM.SS snapshots of the tree.
    snapshots: str | None = None
    # Client-side caching offered for the share's files (srvsvc's SHI1005
    # flags, MS-SRVS 2.2.4.29): one of CSC_MODES.
    csc: str = "manual"


# The share's "csc" setting: what Windows' Offline Files may cache.
CSC_MODES = ("manual", "documents", "programs", "none")


@dataclass
class Config:
    listen_host: str = "127.0.0.1"
    listen_port: int = 445
    shares: list[ShareConfig] = field(default_factory=list)
    users_file: str | None = None
    users: dict[str, Credential] = field(default_factory=dict)  # NT hash or clear text
    node_id: str = ""
    bus_url: str | None = None
    # The bus password kept out of the URL, so that it is in no command line:
    # read from this file, else from $SMBGW_BUS_PASSWORD (see bus_password()).
    bus_password_file: str | None = None
    server_name: str = "SMBGW"
    server_comment: str = ""  # what srvsvc shows as the server's comment (net view)
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
    # Where to serve Prometheus metrics (gateway/metrics.py); None: nowhere.
    metrics_listen: tuple[str, int] | None = None
    # Where the node's admin socket for `smbgw status` goes (gateway/status.py);
    # None: $RUNTIME_DIRECTORY, /run/smbgw (root), $XDG_RUNTIME_DIR/smbgw or /tmp/smbgw-<uid>.
    runtime_dir: str | None = None
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
    # Seconds a node starting on a Redis bus waits for Redis to answer before
    # it gives up (exit 2): Redis and the nodes often start together.
    bus_wait: float = 10.0
    # Log to this file instead of stderr, rotated by size (gateway/logsetup.py):
    # log_max_bytes 0 never rotates; log_backups older files are kept.
    log_file: str | None = None
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 5
    # Processes serving this node's address (SO_REUSEPORT), each its own node
    # on the bus (gateway/workers.py).
    workers: int = DEFAULT_WORKERS
    # Set by the parent in each worker it starts, never by the operator: the
    # node's own id (its ServerGuid, shared by its workers); None: not a worker.
    worker_of: str | None = None
    worker_index: int = 0  # and its slot, 1 to workers (gateway/connpass.py)

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


def parse_listen(value: str, where: str = "--listen") -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``:PORT`` (every address); ``where``
    names the flag or TOML key in the error."""
    host, sep, port = value.rpartition(":")
    if not sep:
        # A bare host once meant port 445 without a word: say what to write.
        raise ConfigError(f"{where} {value!r}: no port; write HOST:PORT (e.g. {value}:445)")
    if ":" in host:
        if not (host.startswith("[") and host.endswith("]")):
            raise ConfigError(f"{where} {value!r}: write an IPv6 address as [ADDRESS]:PORT")
        host = host[1:-1]
    host = host or "0.0.0.0"
    # Not int(): it takes " 445", "4_45" and other digits than 0-9.
    if not re.fullmatch(r"[0-9]{1,5}", port):
        raise ConfigError(f"{where} {value!r}: port must be a number; write HOST:PORT")
    port_n = int(port)
    if not 0 < port_n < 65536:
        raise ConfigError(f"{where} {value!r}: port must be 1-65535")
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


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def parse_log_level(value: str, where: str = "--log-level") -> str:
    # getattr(logging, ...) would quietly fall back to INFO for a typo.
    level = value.strip().upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"{where} {value!r}: not a log level; use one of {', '.join(LOG_LEVELS)}")
    return level


# TOML conversions: each takes only the TOML type it names, so that a value of
# another type is refused rather than misread (bool("no") is True, str(4489)
# a host name); TypeError's message is the type expected, for the error line.


def _strict_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("true or false")
    return value


def _strict_str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("a string")
    return value


def _strict_int(value: Any) -> int:
    # bool is an int to Python, not to an operator.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("an integer")
    return value


def _strict_seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError("a number of seconds")
    return float(value)


def _toml_log_level(value: Any) -> str:
    if not isinstance(value, str) or value.strip().upper() not in LOG_LEVELS:
        raise TypeError("one of " + ", ".join(f'"{v}"' for v in LOG_LEVELS))
    return value.strip().upper()


def _shown(value: Any) -> str:
    """A TOML value as the operator wrote it: "no", not 'no'."""
    return json.dumps(value, default=str)


# TOML key, Config attribute, conversion: the settings that are plain values.
_SCALARS: list[tuple[str, str, Callable[[Any], Any]]] = [
    ("users", "users_file", _strict_str),
    ("node_id", "node_id", _strict_str),
    ("bus", "bus_url", _strict_str),
    ("bus_password_file", "bus_password_file", _strict_str),
    ("server_name", "server_name", _strict_str),
    ("comment", "server_comment", _strict_str),
    ("signing_required", "signing_required", _strict_bool),
    ("encrypt_required", "encrypt_required", _strict_bool),
    ("multichannel", "multichannel", _strict_bool),
    ("break_timeout", "break_timeout", _strict_seconds),
    ("durable_timeout", "durable_timeout", _strict_seconds),
    ("node_ttl", "node_ttl", _strict_seconds),
    ("takeover", "takeover", _strict_bool),
    ("takeover_command", "takeover_command", _strict_str),
    ("max_io_size", "max_io_size", _strict_int),
    ("max_credits", "max_credits", _strict_int),
    ("logon_timeout", "logon_timeout", _strict_seconds),
    ("max_connections_per_address", "max_connections_per_address", _strict_int),
    ("max_sessions_per_connection", "max_sessions_per_connection", _strict_int),
    ("max_opens_per_connection", "max_opens_per_connection", _strict_int),
    ("max_opens_per_session", "max_opens_per_session", _strict_int),
    ("max_opens_per_node", "max_opens_per_node", _strict_int),
    ("max_pending_per_connection", "max_pending_per_connection", _strict_int),
    ("log_level", "log_level", _toml_log_level),
    ("torture_hooks", "torture_hooks", _strict_bool),
    ("runtime_dir", "runtime_dir", _strict_str),
    ("bus_wait", "bus_wait", _strict_seconds),
    ("log_file", "log_file", _strict_str),
    ("log_max_bytes", "log_max_bytes", _strict_int),
    ("log_backups", "log_backups", _strict_int),
    ("workers", "workers", _strict_int),
]
_TOML_KEYS = {"listen", "metrics_listen", "shares"} | {key for key, _, _ in _SCALARS}
_SHARE_BOOLS = ("guest_ok", "read_only", "encrypt", "continuous_availability")
_SHARE_KEYS = {"name", "path", "comment", "volume_id", "snapshots", "csc", *_SHARE_BOOLS}


def apply_toml(cfg: Config, data: dict[str, Any], source: str) -> None:
    unknown = set(data) - _TOML_KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s): {', '.join(sorted(unknown))}")
    if "listen" in data:
        if not isinstance(data["listen"], str):
            raise ConfigError(
                f'{source}: listen = {_shown(data["listen"])}: expected a string "HOST:PORT"'
            )
        cfg.listen_host, cfg.listen_port = parse_listen(data["listen"], f"{source}: listen =")
    if "metrics_listen" in data:
        value = data["metrics_listen"]
        if not isinstance(value, str):
            raise ConfigError(
                f'{source}: metrics_listen = {_shown(value)}: expected a string "HOST:PORT"'
            )
        cfg.metrics_listen = parse_listen(value, f"{source}: metrics_listen =")
    for key, attr, convert in _SCALARS:
        if key in data:
            try:
                setattr(cfg, attr, convert(data[key]))
            except TypeError as e:
                raise ConfigError(f"{source}: {key} = {_shown(data[key])}: expected {e}") from None
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
    name: str = _share_setting(entry, "name", _strict_str, "", "", source)

    def text(key: str) -> str:
        return str(_share_setting(entry, key, _strict_str, "", name, source))

    def flag(key: str) -> bool:
        return bool(_share_setting(entry, key, _strict_bool, False, name, source))

    return ShareConfig(
        name=name,
        path=text("path"),
        comment=text("comment"),
        guest_ok=flag("guest_ok"),
        read_only=flag("read_only"),
        encrypt=flag("encrypt"),
        continuous_availability=flag("continuous_availability"),
        volume_id=_share_setting(entry, "volume_id", _volume_id, None, name, source),
        snapshots=_share_setting(entry, "snapshots", _snapshot_folder, None, name, source),
        csc=_share_setting(entry, "csc", _csc_mode, "manual", name, source),
    )


def _csc_mode(value: Any) -> str:
    if not isinstance(value, str) or value.strip().lower() not in CSC_MODES:
        raise TypeError("one of " + ", ".join(f'"{m}"' for m in CSC_MODES))
    return value.strip().lower()


def _snapshot_folder(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TypeError('a folder of @GMT-... snapshots, e.g. ".snapshots" or "/snap/share"')
    return value


_HEX_VOLUME_ID = re.compile(r"^(0[xX])?[0-9A-Fa-f]{1,16}$")


def _volume_id(value: Any) -> int:
    """A TOML integer, or hex digits in a string (as ``smbgw status`` shows
    file ids); the volume id is a 64-bit number, 0 is not one."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _HEX_VOLUME_ID.match(value.strip()):
        number = int(value.strip(), 16)
    if number is None or not 0 < number < 1 << 64:
        raise TypeError('an integer from 1 to 2**64-1, or hex digits in a string ("5eed")')
    return number


def _share_setting(
    entry: dict[str, Any],
    key: str,
    convert: Callable[[Any], Any],
    default: Any,
    share: str,
    source: str,
) -> Any:
    """One [[shares]] value of the type ``convert`` takes, or a ConfigError
    naming the file, the share and the key."""
    if key not in entry:
        return default
    try:
        return convert(entry[key])
    except TypeError as e:
        where = f"share {share}: " if share else "[[shares]] "
        raise ConfigError(f"{source}: {where}{key} = {_shown(entry[key])}: expected {e}") from None


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
            # A file (or a device) is there: "does not exist" would send the
            # operator looking for a typo.
            if os.path.exists(s.path):
                raise ConfigError(f"share {s.name}: {s.path} is not a directory")
            raise ConfigError(f"share {s.name}: directory {s.path} does not exist")
        if not os.access(s.path, os.R_OK | os.X_OK):
            raise ConfigError(f"share {s.name}: directory {s.path} is not readable")
        if s.snapshots is not None:
            # A missing folder is fine: the first snapshot may make it.
            folder = os.path.join(s.path, s.snapshots)
            if os.path.exists(folder) and not os.path.isdir(folder):
                raise ConfigError(f"share {s.name}: snapshots = {folder}: not a directory")
    if cfg.users_file:
        cfg.users = load_users(cfg.users_file)
        clashes = check_rid_collisions(cfg.users)
        if clashes:
            a, b = clashes[0]
            raise ConfigError(f"users {a!r} and {b!r} would share a SID (see docs); rename one")
    elif not any(s.guest_ok for s in cfg.shares):
        raise ConfigError("no users file (--users FILE) and no guest share: nobody could log on")
    # float() takes "nan" and "inf" from a flag, and nan passes every "<= 0".
    for name in ("break_timeout", "node_ttl", "durable_timeout", "logon_timeout", "bus_wait"):
        if not math.isfinite(getattr(cfg, name)):
            raise ConfigError(f"{name} must be a finite number of seconds")
    if cfg.bus_wait < 0:
        raise ConfigError("bus_wait must be 0 (do not wait) or more seconds")
    validate_log_file(cfg)
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
        cfg.node_id = default_node_id(socket.gethostname(), cfg.listen_host, cfg.listen_port)
    check_node_id(cfg.node_id)
    validate_workers(cfg)


# A node id names Redis keys and channels ("{nodes}:hb:<id>", "node:<id>") and
# open ids ("<id>/<handle>"): no ':', '/', braces (the Cluster hash tag),
# blanks or control characters, and short.
NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_NOT_IN_NODE_ID = re.compile(r"[^A-Za-z0-9._-]+")


def check_node_id(node_id: str) -> None:
    if not NODE_ID.match(node_id):
        shown = repr(node_id)
        if len(node_id) > 70:  # still one line for a 5,000-character id
            shown = f"{node_id[:60]!r}... ({len(node_id)} characters)"
        raise ConfigError(
            f"node id {shown} is not allowed: 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (--node-id, node_id)"
        )


def default_node_id(hostname: str, host: str, port: int) -> str:
    """``<hostname>-<listen address>-<port>``, made a valid node id: an IPv6
    address's ':' become '-', and a host name too long is cut at its first
    dot, then to what fits."""
    tail = _NOT_IN_NODE_ID.sub("-", f"-{host}-{port}")
    head = _NOT_IN_NODE_ID.sub("-", hostname).strip("-._")
    room = 64 - len(tail)
    if len(head) > room:
        head = head.split(".", 1)[0][:room].rstrip("-._")
    return f"{head or 'smbgw'}{tail}"


def validate_log_file(cfg: Config) -> None:
    """The log file's settings; the file itself is opened when the node
    starts (``smbgw check`` creates nothing), but a directory that is not
    there is caught here, where check sees it too."""
    if cfg.log_max_bytes < 0:
        raise ConfigError("log_max_bytes must be 0 (never rotate) or more bytes")
    if cfg.log_backups < 1:
        # RotatingFileHandler with no backups never rotates: the file would
        # grow without bound while log_max_bytes says otherwise.
        raise ConfigError("log_backups must be at least 1")
    if cfg.log_file is not None:
        if not cfg.log_file:
            raise ConfigError("log_file is empty: leave it out to log to stderr")
        folder = os.path.dirname(os.path.abspath(cfg.log_file))
        if not os.path.isdir(folder):
            raise ConfigError(f"log file {cfg.log_file}: directory {folder} does not exist")
        if os.path.isdir(cfg.log_file):
            raise ConfigError(f"log file {cfg.log_file} is a directory")


def worker_node_id(node_id: str, index: int, life: int = 0) -> str:
    """Worker ``index``'s (1-based) id on the bus; a worker started again after
    a crash takes a new one (``life``), since the dead one's stays in use until
    its heartbeat lapses."""
    return f"{node_id}-w{index}" + (f".{life}" if life else "")


def validate_workers(cfg: Config) -> None:
    if not 1 <= cfg.workers <= MAX_WORKERS:
        raise ConfigError(f"workers must be between 1 and {MAX_WORKERS}, not {cfg.workers}")
    if cfg.workers == 1 or cfg.worker_of is not None:  # a worker: its parent checked
        return
    if cfg.takeover:
        raise ConfigError(
            "--takeover with --workers above 1 is not supported yet: run one worker per "
            "takeover node"
        )
    longest = worker_node_id(cfg.node_id, cfg.workers, 999)
    if not NODE_ID.match(longest):
        raise ConfigError(
            f"node id {cfg.node_id!r} is too long for {cfg.workers} workers: each worker "
            f"is a bus node named like {longest!r} (at most 64 characters); give a shorter "
            "--node-id"
        )
    if cfg.metrics_listen is not None and cfg.metrics_listen[1]:
        host, port = cfg.metrics_listen
        if port + cfg.workers - 1 > 65535:
            raise ConfigError(
                f"--metrics-listen {host}:{port}: worker i serves its metrics on port "
                f"{port}+i-1, and {port + cfg.workers - 1} is not a TCP port"
            )


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


def load_users(path: str | os.PathLike[str]) -> dict[str, Credential]:
    """Read ``user:nt:HASH`` and ``user:password`` lines (gateway/users.py);
    ``#`` comments and blank lines are ignored.

    The password is everything after the first colon, kept verbatim (only the
    line ending is removed); one starting with ``nt:`` is an NT hash.  User
    names are stripped of surrounding blanks, must be non-empty, must not
    contain a backslash and must be unique ignoring case.  Raises ConfigError
    with a one-line message naming the file (and line).
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read users file {path}: {e.strerror or e}") from None
    users: dict[str, Credential] = {}
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
        try:
            users[user] = parse_credential(password)
        except ValueError as e:
            raise ConfigError(f"users file {path}, line {lineno}: {e}") from None
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
