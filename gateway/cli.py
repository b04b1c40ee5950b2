"""The ``smbgw`` command line."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import signal
import sys
from typing import TYPE_CHECKING

from oplock_bus.api import BusUnavailable

from .config import (
    BUS_PASSWORD_ENV,
    Config,
    ConfigError,
    apply_toml,
    bus_password,
    load_toml,
    parse_listen,
    parse_share,
    validate,
)

if TYPE_CHECKING:
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
    if args.signing_required:
        cfg.signing_required = True
    if args.no_multichannel:
        cfg.multichannel = False
    if args.log_level:
        cfg.log_level = args.log_level.upper()
    if args.torture_hooks:
        cfg.torture_hooks = True
    validate(cfg)
    return cfg


async def serve(cfg: Config) -> int:
    from oplock_bus import make_bus
    from oplock_bus.redis_url import redact

    from .node import Node

    try:
        bus = make_bus(
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
    node = Node(cfg, bus)
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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping node %s", cfg.node_id)
    await node.stop()
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="run one gateway node")
    p.add_argument("--listen", help="HOST:PORT to listen on (default 127.0.0.1:445)")
    p.add_argument("--share", action="append", metavar="NAME=PATH", help="export PATH as NAME")
    p.add_argument("--ca", action="store_true", help=_CA_HELP)
    p.add_argument("--users", metavar="FILE", help="file of user:password lines")
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
    p.add_argument("--signing-required", action="store_true", help="require SMB signing")
    p.add_argument(
        "--no-multichannel", action="store_true", help="refuse binding sessions to more connections"
    )
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
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
    up.add_argument("--users", required=True, metavar="FILE", help="file of user:password lines")
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
        node_args += ["--log-level", args.log_level]
    return ClusterSpec(
        nodes=args.nodes,
        port=args.port,
        shares=args.share,
        users=args.users,
        bus=args.bus,
        uncoordinated=args.uncoordinated,
        continuous_availability=args.ca,
        takeover=args.takeover,
        node_args=node_args,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smbgw", description="SMB2/3 gateway with cluster-wide oplock coordination"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_cluster(sub)
    _add_status(sub)
    _add_drain(sub)
    from clients.demo_cli import add_parser as add_demo

    add_demo(sub)
    return parser


def _add_bus_password(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bus-password-file", metavar="FILE",
        help=f"read the bus password from FILE, not the URL (or set ${BUS_PASSWORD_ENV})",
    )  # fmt: skip


def _add_status(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("status", help="show nodes, opens, oplocks, leases and locks on a bus")
    p.add_argument("--bus", metavar="URL", required=True, help="the Redis bus URL")
    _add_bus_password(p)
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            cfg = build_config(args)
            logging.basicConfig(
                level=getattr(logging, cfg.log_level, logging.INFO),
                format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            )
            return _run(serve(cfg))
        if args.command == "cluster":
            return _cluster(args)
        if args.command == "status":
            from oplock_bus.status import main as status_main

            return status_main(args.bus, args.json, bus_password(args.bus_password_file))
        if args.command == "drain":
            from .drain import main as drain_main

            password = bus_password(args.bus_password_file)
            return drain_main(args.bus, args.node, password, args.timeout)
        if args.command == "demo":
            from clients.demo_cli import run as run_demo

            return run_demo(args)
    except ConfigError as e:
        print(f"smbgw: {e}", file=sys.stderr)
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
