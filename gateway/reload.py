"""SIGHUP: read the users file and the shares' settings again, dropping no connection.

The configuration is built again exactly as at start (TOML, then the
command-line flags, then the same validation), and only then applied to the
running node, so a bad new file changes nothing: the node keeps its running
configuration and logs one ERROR line.

What a reload changes:

* users: the whole table; logons (and re-authentications) from then on use it.
  Sessions already logged on stay, whatever happened to their user;
* shares: ``comment``, ``read_only``, ``guest_ok``, ``encrypt`` and
  ``continuous_availability`` for tree connects made from then on (a tree
  connect keeps the settings it was made with); new shares are served, removed
  ones refuse new tree connects (trees connected to them stay);
* ``log_level``.

Not reloaded (logged as needing a restart when they changed): a share's
``path`` and ``volume_id``, a new share on a shared bus (its volume is
compared with the other nodes' at start only), and every node-wide setting
(listen address, bus, node id, signing/encryption requirements, timeouts,
limits, takeover, ...).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from .config import Config, ConfigError, ShareConfig
from .fs.vfs import ShareFS
from .users import file_warnings

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("smbgw.reload")

# Config fields a reload applies; every other one needs a restart.
_RELOADED = {"shares", "users", "users_file", "log_level"}
# Filled in by the node at start when 0 (gateway/node.py): not an operator's change.
_DERIVED = {"max_opens_per_node"}


def log_users_warnings(cfg: Config) -> None:
    """Clear-text passwords, a file others can read: one WARNING line each."""
    if cfg.users_file:
        for warning in file_warnings(cfg.users_file, cfg.users):
            logging.getLogger("smbgw.users").warning("%s", warning)


def install(node: Node, rebuild: Callable[[], Config]) -> None:
    """At start: warn about the users file, and reload on SIGHUP rather than die
    (SIGHUP's default action would drop every client and parked handle)."""
    log_users_warnings(node.config)
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload, node, rebuild)


def reload(node: Node, rebuild: Callable[[], Config]) -> bool:
    """Build the configuration again and apply what can change while serving."""
    try:
        new = rebuild()
        shares, new_fs, restart_shares = _plan_shares(node, new.shares)
    except (ConfigError, OSError) as e:
        log.error("SIGHUP: configuration not reloaded, the running one stays: %s", e)
        return False
    cfg = node.config
    restart = [f.name for f in dataclasses.fields(Config) if _needs_restart(f.name, cfg, new)]
    restart += restart_shares
    summary = _summary(cfg, new, shares)

    # Nothing above touched the node; everything below cannot fail. One event
    # loop turn, so no request sees half of it.
    cfg.users = new.users
    cfg.users_file = new.users_file
    cfg.shares = shares
    node.share_fs.update(new_fs)
    node.allows_guest = any(s.guest_ok for s in shares)
    if new.log_level != cfg.log_level:
        cfg.log_level = new.log_level
        logging.getLogger().setLevel(getattr(logging, new.log_level, logging.INFO))

    log.info("SIGHUP: configuration reloaded (%s)", summary)
    if restart:
        log.warning("SIGHUP: changed, but only a restart applies it: %s", ", ".join(restart))
    log_users_warnings(cfg)
    return True


def _needs_restart(name: str, cfg: Config, new: Config) -> bool:
    if name in _RELOADED:
        return False
    if name in _DERIVED and not getattr(new, name):
        return False
    return bool(getattr(cfg, name) != getattr(new, name))


def _plan_shares(
    node: Node, wanted: list[ShareConfig]
) -> tuple[list[ShareConfig], dict[str, ShareFS], list[str]]:
    """The shares to serve, the ShareFS of those new to the node, and what of
    ``wanted`` only a restart applies: a new path or volume_id (tree
    connects, their opens and the other nodes name files by the share's
    volume: it cannot move under them), and a new share on a shared bus (a
    node compares each share's volume with the other nodes' at start,
    gateway/node.py)."""
    shares: list[ShareConfig] = []
    new_fs: dict[str, ShareFS] = {}
    restart: list[str] = []
    for share in wanted:
        key = share.name.lower()
        current = node.config.share(share.name)
        if current is not None:
            # What its ShareFS was made from stays as it is.
            if os.path.realpath(current.path) != os.path.realpath(share.path):
                restart.append(f"share {share.name} path")
            if current.volume_id != share.volume_id:
                restart.append(f"share {share.name} volume_id")
            shares.append(
                dataclasses.replace(share, path=current.path, volume_id=current.volume_id)
            )
            continue
        fs = node.share_fs.get(key)  # a share removed by an earlier reload, back
        if fs is None or fs.root != os.path.realpath(share.path):
            if node.bus.shared:
                restart.append(f"new share {share.name}")
                continue
            new_fs[key] = node._share_fs(share)  # the same volume id checks as at start
        shares.append(share)
    return shares, new_fs, restart


def _summary(cfg: Config, new: Config, shares: list[ShareConfig]) -> str:
    old_users = {name.lower(): cred for name, cred in cfg.users.items()}
    new_users = {name.lower(): cred for name, cred in new.users.items()}
    added = sorted(n for n in new.users if n.lower() not in old_users)
    removed = sorted(n for n in cfg.users if n.lower() not in new_users)
    changed = sorted(
        n for n in new.users if n.lower() in old_users and old_users[n.lower()] != new.users[n]
    )
    old_shares = {s.name.lower(): s for s in cfg.shares}
    new_shares = {s.name.lower(): s for s in shares}
    parts = [f"{len(new.users)} users"]
    for label, names in (
        ("users added", added),
        ("users removed", removed),
        ("passwords changed", changed),
        ("shares added", [s.name for s in shares if s.name.lower() not in old_shares]),
        ("shares removed", [s.name for s in cfg.shares if s.name.lower() not in new_shares]),
        (
            "shares changed",
            [
                s.name
                for s in shares
                if s.name.lower() in old_shares and old_shares[s.name.lower()] != s
            ],
        ),
    ):
        if names:
            parts.append(f"{label}: {', '.join(names)}")
    return "; ".join(parts)
