"""The ``smbgw`` command line."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import importlib.metadata
import json
import logging
import os
import select
import signal
import sys
from typing import TYPE_CHECKING

from oplock_bus.api import BusUnavailable

from .config import (
    BUS_PASSWORD_ENV,
    DEFAULT_WORKERS,
    Config,
    ConfigError,
    ShareConfig,
    apply_toml,
    bus_password,
    load_toml,
    parse_listen,
    parse_log_level,
    parse_share,
    validate,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from oplock_bus.api import LockBus

    from .cluster import ClusterSpec

log = logging.getLogger("smbgw")

_CA_HELP = "make every share continuously available (advertised to SMB 3.x clients)"


def build_config(args: argparse.Namespace) -> Config:
    """TOML first, then flags: a flag given on the command line wins."""
    cfg = Config()
    if args.config:
        apply_toml(cfg, load_toml(args.config), args.config)
    if args.listen:
        cfg.listen_host, cfg.listen_port = parse_listen(args.listen)
    for share in args.share or []:
        cfg.shares.append(parse_share(share))
    if args.ca:
        cfg.make_continuously_available()
    if args.users:
        cfg.users_file = args.users
    if args.node_id:
        cfg.node_id = args.node_id
    if args.bus:
        cfg.bus_url = args.bus
    if args.bus_password_file:
        cfg.bus_password_file = args.bus_password_file
    if args.break_timeout is not None:
        cfg.break_timeout = args.break_timeout
    if args.node_ttl is not None:
        cfg.node_ttl = args.node_ttl
    if args.durable_timeout is not None:
        cfg.durable_timeout = args.durable_timeout
    if args.takeover:
        cfg.takeover = True
    if args.takeover_command is not None:
        cfg.takeover_command = args.takeover_command
    if args.metrics_listen is not None:
        cfg.metrics_listen = parse_listen(args.metrics_listen, "--metrics-listen")
    if args.runtime_dir is not None:
        cfg.runtime_dir = args.runtime_dir
    if args.signing_required:
        cfg.signing_required = True
    if args.no_multichannel:
        cfg.multichannel = False
    if args.log_level:
        cfg.log_level = parse_log_level(args.log_level)
    if args.torture_hooks:
        cfg.torture_hooks = True
    if args.bus_wait is not None:
        cfg.bus_wait = args.bus_wait
    if args.log_file is not None:
        cfg.log_file = args.log_file
    if args.log_max_bytes is not None:
        cfg.log_max_bytes = args.log_max_bytes
    if args.log_backups is not None:
        cfg.log_backups = args.log_backups
    if args.workers is not None:
        cfg.workers = args.workers
    if args.worker_of is not None:
        cfg.worker_of = args.worker_of
        cfg.worker_index = args.worker_index
    validate(cfg)
    return cfg


def node_bus(cfg: Config) -> LockBus:
    """The node's bus, built but not started: nothing connects yet, so
    ``smbgw check`` calls this too, to check the URL and the password file."""
    from oplock_bus import make_bus
    from oplock_bus.redis_url import redact

    try:
        return make_bus(
            cfg.bus_url,
            password=bus_password(cfg.bus_password_file) if cfg.bus_url else None,
            node_id=cfg.node_id,
            break_timeout=cfg.break_timeout,
            node_ttl=cfg.node_ttl,
            node_address=f"{cfg.listen_host}:{cfg.listen_port}",
            takeover=cfg.takeover,
        )
    except ValueError as e:
        raise ConfigError(f"--bus {redact(cfg.bus_url or '')}: {e}") from None


async def serve(cfg: Config, rebuild: Callable[[], Config] | None = None) -> int:
    from oplock_bus.redis_url import redact

    from .busstate import wait_for_bus
    from .node import Node

    # Before anything can take time: a SIGTERM while the node starts (a
    # service manager, a test) stops it cleanly once started, rather than
    # killing it by the default action.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bus = node_bus(cfg)
    node = Node(cfg, bus)  # its shares' mistakes first: they need no waiting for
    # Redis and the nodes often start together: wait for it a while (one
    # line, exit 2, if it never answers) rather than fail at once.
    await wait_for_bus(bus, cfg.bus_wait, redact(cfg.bus_url or ""))
    try:
        server = await node.start()
    except ConfigError:
        await bus.stop()
        raise
    except BusUnavailable as e:
        # Nothing to serve without the lock space: one line, not a traceback.
        await bus.stop()
        raise ConfigError(f"cannot start: {e} (--bus {redact(cfg.bus_url or '')})") from None
    except OSError as e:
        await bus.stop()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"cannot listen on {cfg.listen_host}:{cfg.listen_port}: port in use"
            ) from None
        if e.errno == errno.EACCES:
            raise ConfigError(
                f"cannot listen on {cfg.listen_host}:{cfg.listen_port}: permission denied"
            ) from None
        raise ConfigError(f"cannot listen on {cfg.listen_host}:{cfg.listen_port}: {e}") from None
    addrs = ", ".join(f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in server.sockets)
    shares = ", ".join(f"{s.name}={s.path}" for s in cfg.shares)
    log.info(
        "node %s listening on %s (shares: %s; bus: %s)",
        cfg.node_id, addrs, shares, redact(cfg.bus_url) if cfg.bus_url else "in-process",
    )  # fmt: skip
    from .reload import install as install_reload  # SIGHUP reloads users and shares

    install_reload(node, rebuild or (lambda: cfg))
    await stop.wait()
    log.info("stopping node %s", cfg.node_id)
    await node.stop()
    return 0


def check(args: argparse.Namespace) -> int:
    """``smbgw check``: the configuration built and validated as ``serve``
    does it (build_config), and its bus built but not started; then a summary.
    It binds no port and connects to no bus (as Samba's testparm)."""
    cfg = build_config(args)
    node_bus(cfg)  # the URL and the password file; nothing connects before start()
    print("\n".join(config_summary(cfg, args.config)))
    return 0


# Shown on lines of their own by config_summary, not among "settings".
_SUMMARY_OWN_LINES = {
    "listen_host", "listen_port", "shares", "users_file", "users", "node_id", "bus_url",
    "bus_password_file",
}  # fmt: skip


def config_summary(cfg: Config, source: str | None) -> list[str]:
    """What a node would serve: node id, listen address, bus, users, shares with
    their settings, and the node-wide settings that differ from the defaults."""
    from oplock_bus.redis_url import redact

    def shown(value: object) -> str:
        return json.dumps(value, default=str)  # as TOML writes it: true, "text"

    bus = redact(cfg.bus_url) if cfg.bus_url else "in-process (this node alone)"
    if cfg.bus_url and cfg.bus_password_file:
        bus += f" (password from {cfg.bus_password_file})"
    users = f"{len(cfg.users)} in {cfg.users_file}" if cfg.users_file else "none (guests only)"
    lines = [
        f"configuration OK{f' ({source} and flags)' if source else ' (flags)'}",
        f"node id:  {cfg.node_id}",
        f"listen:   {cfg.listen_host}:{cfg.listen_port}",
        f"bus:      {bus}",
        f"users:    {users}",
        f"shares:   {len(cfg.shares)}",
    ]
    share_default = {f.name: f.default for f in dataclasses.fields(ShareConfig)}
    for s in cfg.shares:
        settings = [
            f"{name}={shown(getattr(s, name))}"
            for name, default in share_default.items()
            if name not in ("name", "path") and getattr(s, name) != default
        ]
        lines.append(f"  {s.name}  {s.path}  {' '.join(settings) or '(defaults)'}".rstrip())
    defaults = Config()
    changed = [
        f"{f.name}={shown(getattr(cfg, f.name))}"
        for f in dataclasses.fields(Config)
        if f.name not in _SUMMARY_OWN_LINES and getattr(cfg, f.name) != getattr(defaults, f.name)
    ]
    lines.append(f"settings: {', '.join(changed) if changed else '(defaults)'}")
    return lines


def _add_serve(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    _add_node_options(sub.add_parser("serve", help="run one gateway node"))


def _add_check(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "check",
        help="check a node's configuration (serve's flags) without serving, as testparm does",
    )
    _add_node_options(p)


def _add_node_options(p: argparse.ArgumentParser) -> None:
    """serve's flags; check takes the same, so it checks what serve would run."""
    p.add_argument("--listen", help="HOST:PORT to listen on (default 127.0.0.1:445)")
    p.add_argument("--share", action="append", metavar="NAME=PATH", help="export PATH as NAME")
    p.add_argument("--ca", action="store_true", help=_CA_HELP)
    p.add_argument("--users", metavar="FILE", help="users file (smbgw passwd)")
    p.add_argument("--node-id", help="this node's id on the bus (default: host-address-port)")
    p.add_argument("--bus", metavar="URL", help="bus URL (default: in-process, single node)")
    _add_bus_password(p)
    p.add_argument("--config", metavar="FILE.toml", help="settings file (flags override it)")
    p.add_argument("--break-timeout", type=float, help="seconds to wait for a break ack (35)")
    p.add_argument(
        "--durable-timeout",
        type=float,
        help="seconds a durable handle waits for its client if it names none (60)",
    )
    p.add_argument(
        "--node-ttl", type=float, help="Redis bus: seconds before a silent node counts as dead (5)"
    )
    p.add_argument(
        "--takeover", action="store_true",
        help="serve a dead node's address until it is back, and let others serve ours",
    )  # fmt: skip
    p.add_argument(
        "--takeover-command", metavar="CMD",
        help="run as 'CMD add|remove ADDRESS PORT' before taking / after giving back an address",
    )  # fmt: skip
    p.add_argument(
        "--metrics-listen", metavar="HOST:PORT",
        help="serve Prometheus metrics on HOST:PORT (GET /metrics; default: none)",
    )  # fmt: skip
    p.add_argument("--runtime-dir", metavar="DIR", help=_RUNTIME_HELP)
    p.add_argument("--signing-required", action="store_true", help="require SMB signing")
    p.add_argument(
        "--no-multichannel", action="store_true", help="refuse binding sessions to more connections"
    )
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    p.add_argument(
        "--bus-wait", type=float, metavar="SECONDS",
        help="at start, wait this long for an unreachable Redis bus before giving up (10)",
    )  # fmt: skip
    p.add_argument(
        "--log-file", metavar="PATH", help="log to PATH, rotated by size, not to stderr"
    )
    p.add_argument(
        "--log-max-bytes", type=int, metavar="N",
        help="rotate the log file at N bytes; 0 never (default 10485760)",
    )  # fmt: skip
    p.add_argument(
        "--log-backups", type=int, metavar="N", help="rotated log files to keep (default 5)"
    )
    p.add_argument(
        "--workers", type=int, metavar="N",
        help=f"serve with N processes, each a node on the bus (default {DEFAULT_WORKERS})",
    )  # fmt: skip
    # Given by a node's parent to its workers (gateway/workers.py), not by people.
    p.add_argument("--worker-of", metavar="NODE-ID", help=argparse.SUPPRESS)
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument(
        "--torture-hooks",
        action="store_true",
        help="answer Samba's test-only FSCTL_SMBTORTURE controls (for smbtorture only)",
    )


def _add_cluster(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("cluster", help="a local multi-node cluster")
    csub = p.add_subparsers(dest="cluster_command", required=True)
    up = csub.add_parser("up", help="run a local cluster in the foreground until Ctrl-C")
    up.add_argument("--nodes", type=int, default=2, help="number of nodes (default 2)")
    up.add_argument("--port", type=int, default=445, help="port every node listens on (445)")
    up.add_argument("--share", action="append", required=True, metavar="NAME=PATH")
    up.add_argument("--ca", action="store_true", help=_CA_HELP)
    up.add_argument("--users", required=True, metavar="FILE", help="users file (smbgw passwd)")
    up.add_argument("--bus", metavar="URL", help="Redis URL (default: start a private redis)")
    up.add_argument(
        "--uncoordinated",
        action="store_true",
        help="no shared bus: every node decides alone (shows what goes wrong)",
    )
    up.add_argument("--break-timeout", type=float, help="seconds to wait for a break ack (35)")
    up.add_argument(
        "--takeover", action="store_true", help="a live node serves a dead node's address"
    )
    up.add_argument("--log-level", help="the nodes' log level (default INFO)")
    up.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS,
        help=f"processes per node, each a node on the bus (default {DEFAULT_WORKERS})",
    )  # fmt: skip


def _cluster(args: argparse.Namespace) -> int:
    from .cluster import run_foreground

    spec = cluster_spec(args)
    spec.check()
    return run_foreground(spec)


def cluster_spec(args: argparse.Namespace) -> ClusterSpec:
    """What ``smbgw cluster up`` starts, from its parsed options."""
    from .cluster import ClusterSpec

    node_args: list[str] = []
    if args.break_timeout is not None:
        node_args += ["--break-timeout", str(args.break_timeout)]
    if args.log_level:
        # Refused here in one line, not by every node with the cluster's noise.
        node_args += ["--log-level", parse_log_level(args.log_level)]
    return ClusterSpec(
        nodes=args.nodes,
        port=args.port,
        shares=args.share,
        users=args.users,
        bus=args.bus,
        uncoordinated=args.uncoordinated,
        continuous_availability=args.ca,
        takeover=args.takeover,
        workers=args.workers,
        node_args=node_args,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smbgw", description="SMB2/3 gateway with cluster-wide oplock coordination"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_check(sub)
    _add_cluster(sub)
    _add_status(sub)
    _add_drain(sub)
    from clients.demo_cli import add_parser as add_demo

    add_demo(sub)
    from .passwd import add_parser as add_passwd

    add_passwd(sub)
    return parser


def _add_bus_password(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bus-password-file", metavar="FILE",
        help=f"read the bus password from FILE, not the URL (or set ${BUS_PASSWORD_ENV})",
    )  # fmt: skip


_RUNTIME_HELP = (
    "directory of the nodes' admin sockets, DIR/NODE-ID.sock (default: $RUNTIME_DIRECTORY, "
    "/run/smbgw for root, $XDG_RUNTIME_DIR/smbgw, /tmp/smbgw-UID)"
)


def _add_status(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "status",
        help="show sessions, open files, oplocks, leases, locks and nodes, as smbstatus does",
    )
    p.add_argument(
        "--bus", metavar="URL",
        help="the Redis bus URL: the whole cluster (default: ask the nodes on this host)",
    )  # fmt: skip
    _add_bus_password(p)
    p.add_argument("--runtime-dir", metavar="DIR", help=_RUNTIME_HELP)
    p.add_argument("--node", metavar="ID", help="ask the node with this id on this host")
    p.add_argument("--socket", metavar="PATH", help="ask the node whose admin socket is PATH")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _add_drain(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "drain",
        help="move a node's clients and addresses to the others, for a planned stop",
    )
    p.add_argument("--bus", metavar="URL", required=True, help="the Redis bus URL")
    _add_bus_password(p)
    p.add_argument(
        "--timeout", type=float, default=30.0,
        help="seconds to wait for the node to report drained (30)",
    )  # fmt: skip
    p.add_argument("node", metavar="NODE", help="the node's id on the bus (see smbgw status)")


def package_version() -> str:
    """The installed distribution's version, for ``smbgw --version``."""
    try:
        return importlib.metadata.version("smb-oplock-gateway")
    except importlib.metadata.PackageNotFoundError:
        # Run from a source tree that was never installed (python -m gateway.cli).
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _main(argv)
        finally:
            # Flushed here, where a closed pipe can still be caught; at exit
            # Python would print "Exception ignored ... BrokenPipeError".
            sys.stdout.flush()
    except BrokenPipeError:
        if not _stdout_gone():
            raise  # not our output's reader: a real error, keep its traceback
        # The reader went away (smbgw status | head -3): stop quietly, as Unix
        # tools do, with the status of a death by SIGPIPE. stdout goes to
        # /dev/null so that the flush at exit has nowhere to fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (POLLERR on Linux)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return True  # cannot tell (no poll(), stdout replaced): take the common case


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            return check(args)
        if args.command == "serve":
            cfg = build_config(args)
            from .logsetup import setup_logging
            from .workers import WorkerPool, setup_worker_logging

            if cfg.worker_of is not None:
                setup_worker_logging(cfg)  # to the parent, which owns the log
            else:
                setup_logging(cfg)  # stderr (the journal), or --log-file rotated by size
            if cfg.workers > 1 and cfg.worker_of is None:
                return WorkerPool(cfg, sys.argv[1:] if argv is None else argv).run()
            return _run(serve(cfg, lambda: build_config(args)))
        if args.command == "cluster":
            return _cluster(args)
        if args.command == "status":
            from .status import main as status_main

            return status_main(
                bus=args.bus,
                password=bus_password(args.bus_password_file) if args.bus else None,
                runtime=args.runtime_dir,
                socket_file=args.socket,
                node=args.node,
                as_json=args.json,
            )
        if args.command == "drain":
            from .drain import main as drain_main

            password = bus_password(args.bus_password_file)
            return drain_main(args.bus, args.node, password, args.timeout)
        if args.command == "demo":
            from clients.demo_cli import run as run_demo

            return run_demo(args)
        if args.command == "passwd":
            from .passwd import run as run_passwd

            return run_passwd(args)
    except ConfigError as e:
        from .logsetup import journal_stream

        # Under systemd, an error in the journal ("<3>"), as the node's own lines.
        priority = "<3>" if journal_stream(sys.stderr) else ""
        print(f"{priority}smbgw: {e}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2


def _run(coro: object) -> int:
    try:
        import uvloop

        return int(uvloop.run(coro))  # type: ignore[arg-type]
    except ImportError:
        return int(asyncio.run(coro))  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
