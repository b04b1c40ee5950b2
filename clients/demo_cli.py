"""The ``smbgw demo`` subcommands: their options, and dispatch to the demos.

Kept apart from ``gateway/cli.py`` so that file only registers the parser
and calls `run`; nothing heavy is imported until a demo actually runs.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import TypeVar

from gateway.cluster import MAX_NODES

ACCESS_EXIT = """exit status:
  0    no committed update lost, every page checksum verifies
  1    damage: committed updates lost or pages with a bad checksum
  2    bad options, or the cluster or the workload could not run
  130  interrupted (Ctrl-C); every node and redis-server it started is stopped"""

BREAK_EXIT = """exit status:
  0    the break reached A before B's CREATE completed and B read A's writes
  1    it did not (wrong order, or B read other data)
  2    bad options, or the cluster or the demo could not run
  130  interrupted (Ctrl-C); every node and redis-server it started is stopped"""

FAILOVER_EXIT = """exit status:
  0    no committed update lost, every page checksum verifies
  1    damage: committed updates lost or pages with a bad checksum
  2    bad options, or the cluster, the workload or a client's reconnect failed
  130  interrupted (Ctrl-C); every node and redis-server it started is stopped"""

ACCESS_HELP = """\
Start a local cluster on 127.0.0.1.. (a private redis-server and one
`smbgw serve` per node, over a fresh temporary share), run the Jet-like
Access workload with the clients spread round-robin over the nodes, print
the figures, and stop everything again.

With --uncoordinated every node runs with its own in-process bus over the
same directory, the naive multi-mount: each node grants its own client
Write caching and committed updates are lost. Coordinated, none are."""

BREAK_HELP = """\
Start a 2-node cluster; client A on node 1 opens a file with a Batch oplock
(or an RWH lease with --lease), writes a record and takes a page lock, all
in its cache; client B opens the same file through node 2. Prints the
timeline (milliseconds since A's open): B's CREATE sent, break received by
A, A flushed, A acknowledged, B's CREATE completed, B read A's data."""

FAILOVER_HELP = """\
Start a local cluster with a continuously available share and --takeover,
run the Access workload with every client holding the database through a
persistent handle, and kill one node with SIGKILL part way (the seed picks
the node and the moment). Its clients reconnect to the same address, now
served by another node, take their handles back (DH2C), send again what was
unanswered and go on. Prints the figures: committed, lost (must be 0),
corrupt pages, the longest pause of a client, reconnects per client."""

REDIS_LOSS_EXIT = """exit status:
  0    no committed update lost, every page checksum verifies, no connection dropped
  1    damage: committed updates lost, pages with a bad checksum, connections
       dropped, or a request that failed once Redis was lost
  2    bad options, or Redis, the cluster or the workload could not run
  130  interrupted (Ctrl-C); every node and redis-server it started is stopped"""

REDIS_LOSS_HELP = """\
Start a Redis of its own and a 2-node cluster on it, run the coordinated
Access workload with the clients spread over both nodes, and make Redis lose
everything part way (the seed picks when): with --how restart the
redis-server is killed with SIGKILL and started again, empty, on the same
port; with --how sentinel a master, a replica and three Sentinels run, the
master is killed and the replica restarted empty before Sentinel promotes
it. The nodes put back what they hold and go on. Prints the figures:
committed, lost (must be 0), corrupt pages, client connections dropped
(must be 0) and the longest pause a client saw around the loss."""

T = TypeVar("T")

# Below this a node busy on a small machine may miss its own heartbeat.
MIN_NODE_TTL = 0.5


def _bounded(name: str, low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            span = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{name} must be {span}, not {value}")
        return value

    return parse


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {value:g}")
    return value


def _node_ttl(text: str) -> float:
    value = _positive_seconds(text)
    if value < MIN_NODE_TTL:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_NODE_TTL:g} s, not {value:g}")
    return value


def _workload_args(p: argparse.ArgumentParser, seed_help: str) -> None:
    """The Access workload's options, the same in every demo that runs it."""
    p.add_argument(
        "--clients", type=_bounded("clients", 1, 64), default=4,
        help="clients, spread round-robin over the nodes (default 4)",
    )  # fmt: skip
    p.add_argument(
        "--updates", type=_bounded("updates", 1), default=1000,
        help="record updates in total, split over the clients (default 1000)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help=seed_help)


def _output_args(p: argparse.ArgumentParser, port: Callable[[str], int]) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object, no progress")
    p.add_argument("--port", type=port, help="port every node listens on (default: a free one)")
    p.add_argument(
        "--timeout", type=_positive_seconds, default=300.0,
        help="give up on the workload after this many seconds (default 300)",
    )  # fmt: skip


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="show the Access corruption and its prevention")
    dsub = p.add_subparsers(
        dest="demo_command", required=True, metavar="{access,break,failover,redis-loss}"
    )
    port = _bounded("a port", 1, 65535)

    a = dsub.add_parser(
        "access",
        help="the multi-user Access workload on a local cluster",
        description=ACCESS_HELP,
        epilog=ACCESS_EXIT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument(
        "--nodes", type=_bounded("nodes", 1, MAX_NODES), default=2,
        help="gateway nodes (default 2)",
    )  # fmt: skip
    _workload_args(a, "which pages the clients pick (default 0)")
    a.add_argument(
        "--uncoordinated", action="store_true",
        help="no shared bus: every node decides alone (shows the damage)",
    )  # fmt: skip
    a.add_argument(
        "--oplock", action="store_true",
        help="clients ask for a Batch oplock instead of an RWH lease",
    )  # fmt: skip
    _output_args(a, port)

    b = dsub.add_parser(
        "break",
        help="one cross-node oplock break, step by step",
        description=BREAK_HELP,
        epilog=BREAK_EXIT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("--json", action="store_true", help="print the events as one JSON object")
    b.add_argument("--lease", action="store_true", help="A and B ask for RWH leases")
    b.add_argument(
        "--uncoordinated", action="store_true",
        help="no shared bus: node 2 does not know A's oplock (shows the failure)",
    )  # fmt: skip
    b.add_argument("--port", type=port, help="port both nodes listen on (default: a free one)")
    _add_failover(dsub, port)
    _add_redis_loss(dsub, port)


def _add_failover(
    dsub: argparse._SubParsersAction,  # type: ignore[type-arg]
    port: Callable[[str], int],
) -> None:
    f = dsub.add_parser(
        "failover",
        help="the Access workload while a node is killed",
        description=FAILOVER_HELP,
        epilog=FAILOVER_EXIT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    f.add_argument(
        "--nodes", type=_bounded("nodes", 2, 3), default=2, help="gateway nodes, 2 or 3 (default 2)"
    )
    _workload_args(f, "pages, the node killed and when (default 0)")
    f.add_argument(
        "--node-ttl", type=_node_ttl, default=2.0,
        help="seconds before the cluster declares a silent node dead (default 2)",
    )  # fmt: skip
    _output_args(f, port)


def _add_redis_loss(
    dsub: argparse._SubParsersAction,  # type: ignore[type-arg]
    port: Callable[[str], int],
) -> None:
    r = dsub.add_parser(
        "redis-loss",
        help="the Access workload while Redis loses its state",
        description=REDIS_LOSS_HELP,
        epilog=REDIS_LOSS_EXIT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument(
        "--how", choices=("restart", "sentinel"), default="restart",
        help="restart: kill Redis and start it empty; sentinel: fail over to a "
        "wiped replica (default restart)",
    )  # fmt: skip
    _workload_args(r, "pages, and when Redis goes (default 0)")
    _output_args(r, port)


def _options(cls: type[T], args: argparse.Namespace) -> T:
    """A demo's options (a dataclass) from the parsed arguments of the same names."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    return cls(**{n: getattr(args, n) for n in names if hasattr(args, n)})


def run(args: argparse.Namespace) -> int:
    """Run the demo ``args`` names; Ctrl-C stops it (and everything it started) with 130."""
    from .demo_common import INTERRUPTED

    try:
        if args.demo_command == "access":
            from .demo_access import AccessOptions, run_access

            opts = _options(AccessOptions, args)
            opts.mode = "oplock" if args.oplock else "lease"
            return run_access(opts, args.json)
        if args.demo_command == "failover":
            from .demo_failover import FailoverOptions, run_failover

            return run_failover(_options(FailoverOptions, args), args.json)
        if args.demo_command == "redis-loss":
            from .demo_redis_loss import RedisLossOptions, run_redis_loss

            return run_redis_loss(_options(RedisLossOptions, args), args.json)
        from .demo_break import run_break_demo

        return run_break_demo(
            "lease" if args.lease else "oplock", args.uncoordinated, args.json, args.port
        )
    except KeyboardInterrupt:
        import sys

        print("smbgw: interrupted; everything the demo started is stopped", file=sys.stderr)
        return INTERRUPTED
