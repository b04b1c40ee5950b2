"""``smbgw demo redis-loss``: the Access workload goes on while Redis loses its state.

The coordinated workload of ``smbgw demo access`` (Jet-like clients, RWH
leases, page locks, spread round-robin over a 2-node cluster) runs on a
Redis the demo starts itself. At a point chosen from the seed (between a
quarter and half of the updates, once every client has the database open)
Redis loses everything it held:

* ``restart``: the redis-server is killed with SIGKILL and started again,
  empty, on the same port;
* ``sentinel``: a master, a replica and three Sentinels
  (`gateway.localsentinel`); the master is killed and the replica restarted
  empty before Sentinel promotes it.

The nodes notice, put back what they hold (``oplock_bus/recovery.py``) and
go on; a client sees a pause and nothing else. The clients hold no durable
handle and do not reconnect, so a dropped connection, or a request answered
with an error, ends the run (`ClientsHurt`, exit status 1). The report
counts dropped connections (there must be none), with committed, lost
(none) and corrupt pages (none), and the longest wait of a client between
two of its updates around the loss, against the longest before it.

`Gaps` and the two ways to lose Redis serve ``bench/bus_recovery.py`` too.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from rich.table import Table

from gateway.config import ConfigError
from gateway.localredis import LocalRedis, RedisError
from gateway.localsentinel import LocalSentinel

from .demo_access import AccessOptions, jet_config
from .demo_common import (
    DAMAGE,
    OK,
    DemoCluster,
    Trigger,
    Ui,
    both,
    demo_cluster,
    fault_point,
    figures_table,
    quiet_client_warnings,
    terminate_as_interrupt,
    workload_result,
)
from .jet import JetReport, run_jet

HOWS = ("restart", "sentinel")
NODES = 2


@dataclass
class RedisLossOptions:
    how: str = "restart"  # restart or sentinel
    clients: int = 4
    updates: int = 1000
    seed: int = 0
    port: int | None = None
    timeout: float = 300.0


# -- losing Redis ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Loss:
    """When Redis went and came back, on ``time.monotonic``'s clock."""

    killed_at: float  # just before the SIGKILL
    back_at: float  # restarted and answering, or named master by Sentinel

    @property
    def seconds(self) -> float:
        return self.back_at - self.killed_at


class LosableRedis(Protocol):
    how: str

    @property
    def url(self) -> str: ...

    def lose(self) -> Loss:
        """Lose every key; blocks until Redis is back (call it off the event loop)."""
        ...

    def stop(self) -> None: ...


class RestartedRedis:
    """A private redis-server (`LocalRedis`, as ``cluster up`` starts), killed
    with SIGKILL and started again, empty, on its port."""

    how = "restart"

    def __init__(self) -> None:
        self.server = LocalRedis()

    def start(self) -> RestartedRedis:
        self.server.start()
        return self

    @property
    def url(self) -> str:
        return self.server.url

    def lose(self) -> Loss:
        proc = self.server.proc
        if proc is None:
            raise RedisError("redis-server is not running")
        killed_at = time.monotonic()
        proc.kill()
        proc.wait()
        # stop() forgets the dead process and removes its directory; start()
        # makes a new, empty one and listens on the same port again.
        self.server.stop()
        self.server.start()
        return Loss(killed_at, time.monotonic())

    def stop(self) -> None:
        self.server.stop()


class FailedOverRedis:
    """A master, a replica and three Sentinels; losing it kills the master and
    wipes the replica before Sentinel promotes it."""

    how = "sentinel"

    def __init__(self) -> None:
        self.sentinel = LocalSentinel()

    def start(self) -> FailedOverRedis:
        self.sentinel.start()
        return self

    @property
    def url(self) -> str:
        return self.sentinel.url

    def lose(self) -> Loss:
        return Loss(*self.sentinel.fail_over())

    def stop(self) -> None:
        self.sentinel.stop()


@contextmanager
def losable_redis(how: str) -> Iterator[LosableRedis]:
    """A started Redis of the kind ``how`` names, stopped on exit."""
    if how not in HOWS:
        raise ConfigError(f"--how must be one of {', '.join(HOWS)}, not {how!r}")
    redis: RestartedRedis | FailedOverRedis
    try:
        redis = RestartedRedis().start() if how == "restart" else FailedOverRedis().start()
    except RedisError as e:
        raise ConfigError(str(e)) from None
    try:
        yield redis
    finally:
        redis.stop()


# -- what the clients saw ------------------------------------------------------------------


class Gaps:
    """When each client's requests complete, to find the pause a client saw:
    its longest wait between two completed requests (or from its start to its
    first) that ended after the fault, against the longest before it."""

    def __init__(self) -> None:
        self._last: dict[int, float] = {}
        self.waits: list[tuple[float, float, int]] = []  # (ended at, seconds, client)

    def begin(self, client: int) -> None:
        self._last[client] = time.monotonic()

    def done(self, client: int) -> None:
        now = time.monotonic()
        last = self._last.get(client, now)
        self._last[client] = now
        self.waits.append((now, now - last, client))

    def longest(self, since: float | None = None, until: float | None = None) -> float:
        """The longest wait that ended at ``since`` or later, and before ``until``."""
        return max(
            (
                seconds
                for ended, seconds, _ in self.waits
                if (since is None or ended >= since) and (until is None or ended < until)
            ),
            default=0.0,
        )

    def longest_of(self, client: int, since: float | None = None) -> float:
        return max(
            (s for ended, s, c in self.waits if c == client and (since is None or ended >= since)),
            default=0.0,
        )


# -- the demo ------------------------------------------------------------------------------


class ClientsHurt(ConfigError):
    """The loss cost a client more than a pause: its connection, or a request
    answered with an error (either ends a client that does not reconnect)."""

    def __init__(self, dropped: int, why: str) -> None:
        what = f"{dropped} client connection(s) dropped" if dropped else "a client failed"
        super().__init__(f"{what} after Redis was lost; {why}")
        self.dropped = dropped


@dataclass
class RedisLossReport:
    jet: JetReport
    how: str
    loss: Loss | None  # None: the workload ended before Redis was lost
    lost_after: int | None  # committed updates when Redis was lost
    dropped: int
    gaps: Gaps = field(repr=False)

    @property
    def seconds_paused(self) -> float:
        """The longest wait of a client that ended after Redis was killed."""
        return self.gaps.longest(since=self.loss.killed_at) if self.loss else 0.0

    @property
    def seconds_paused_before(self) -> float:
        """The same before the loss: what the workload costs anyway."""
        return self.gaps.longest(until=self.loss.killed_at if self.loss else None)

    @property
    def damaged(self) -> bool:
        return bool(self.jet.lost or self.jet.corrupt_pages or self.dropped)

    def client_pauses(self) -> list[float]:
        since = self.loss.killed_at if self.loss else None
        return [self.gaps.longest_of(i, since) for i in range(len(self.jet.clients))]

    def as_dict(self) -> dict[str, object]:
        """The figures ``smbgw demo redis-loss --json`` prints."""
        return {
            **self.jet.as_dict(),
            "how": self.how,
            "dropped": self.dropped,
            "redis_lost_after": self.lost_after,
            "redis_back_seconds": round(self.loss.seconds, 3) if self.loss else None,
            "seconds_paused": round(self.seconds_paused, 3),
            "seconds_paused_before": round(self.seconds_paused_before, 3),
            "paused": [round(p, 3) for p in self.client_pauses()],
        }


def access_options(opts: RedisLossOptions) -> AccessOptions:
    """The coordinated ``demo access`` workload these options describe."""
    return AccessOptions(
        nodes=NODES, clients=opts.clients, updates=opts.updates, seed=opts.seed,
        port=opts.port, timeout=opts.timeout,
    )  # fmt: skip


async def run_redis_loss_workload(
    cluster: DemoCluster, redis: LosableRedis, opts: RedisLossOptions, ui: Ui | None = None
) -> RedisLossReport:
    """One run on a running cluster whose bus is ``redis``, which it loses part way."""
    ui = ui or Ui(False)
    gaps = Gaps()
    dropped = 0
    losing: list[asyncio.Future[Loss]] = []

    def lose() -> None:
        # Off the event loop: a restart or a failover takes a while, and the
        # clients must go on meanwhile, as they would with a remote Redis.
        losing.append(asyncio.ensure_future(asyncio.to_thread(redis.lose)))

    def on_open(client: int) -> None:
        gaps.begin(client)
        trigger.on_open(client)

    def on_lost(_client: int) -> None:
        nonlocal dropped
        dropped += 1

    trigger = Trigger(fault_point(random.Random(opts.seed), opts.updates), opts.clients, lose)
    with ui.progress("updates", opts.updates) as bar:
        task = asyncio.ensure_future(
            run_jet(
                cluster.endpoints,
                jet_config(access_options(opts)),
                progress=both(trigger.on_commit, bar),
                on_open=on_open,
                on_commit=gaps.done,
                on_lost=on_lost,
            )
        )
        done, _ = await asyncio.wait({task}, timeout=opts.timeout)
        try:
            report = await workload_result(task, bool(done), cluster, opts.timeout)
        except ConfigError as e:
            if dropped or trigger.fired_after is not None:
                raise ClientsHurt(dropped, str(e)) from None
            raise
        finally:
            # Redis must be back (or given up on) before anything is stopped.
            outcome = await asyncio.gather(*losing, return_exceptions=True)
    loss = outcome[0] if outcome else None
    if isinstance(loss, BaseException):
        raise ConfigError(f"could not lose Redis ({opts.how}): {loss}")
    return RedisLossReport(report, opts.how, loss, trigger.fired_after, dropped, gaps)


def describe(opts: RedisLossOptions) -> str:
    how = {
        "restart": "a redis-server killed and restarted empty",
        "sentinel": "a Sentinel failover to a wiped replica",
    }[opts.how]
    return (
        f"{opts.clients} clients over {NODES} nodes (coordinated, RWH leases) through "
        f"{how}, {opts.updates} updates, seed {opts.seed}"
    )


def _what_happened(report: RedisLossReport) -> str:
    if report.loss is None:
        return "not lost: the workload ended first"
    back = (
        "restarted empty"
        if report.how == "restart"
        else "the replica wiped; Sentinel named it master"
    )
    return f"SIGKILL after {report.lost_after} updates; {back} {report.loss.seconds:.2f} s later"


def render(report: RedisLossReport, opts: RedisLossOptions, ui: Ui) -> None:
    jet = report.jet
    ui.out.print(f"Access workload through a Redis loss: {describe(opts)}")
    ui.out.print(
        figures_table(
            "",
            [
                ("updates committed", str(jet.committed)),
                ("updates lost", str(jet.lost)),
                ("pages with a bad checksum", str(jet.corrupt_pages)),
                ("client connections dropped", str(report.dropped)),
                ("Redis", _what_happened(report)),
                ("longest pause of a client around the loss", f"{report.seconds_paused:.2f} s"),
                ("longest wait of a client before it", f"{report.seconds_paused_before:.2f} s"),
                ("elapsed time", f"{jet.seconds:.2f} s"),
            ],
        )
    )
    ui.out.print(_clients_table(report))
    if report.damaged:
        ui.out.print(
            f"[bold red]DAMAGE:[/bold red] {jet.lost} committed update(s) lost, "
            f"{jet.corrupt_pages} page(s) corrupt, {report.dropped} connection(s) dropped"
        )
    else:
        ui.out.print(
            "[bold green]OK:[/bold green] every committed update is in the file and "
            "every client kept its connection"
        )


def _clients_table(report: RedisLossReport) -> Table:
    table = Table(title="clients", title_justify="left")
    for name in ("client", "node address", "updates", "paused around the loss"):
        table.add_column(name, justify="left" if name == "node address" else "right")
    for i, (c, paused) in enumerate(zip(report.jet.clients, report.client_pauses(), strict=True)):
        table.add_row(str(i + 1), c.endpoint[0], str(c.committed), f"{paused:.2f} s")
    return table


def run_redis_loss(opts: RedisLossOptions, as_json: bool) -> int:
    """The whole command: start Redis and a cluster on it, run the workload,
    lose Redis part way, report, stop everything."""
    ui = Ui(not as_json)
    with terminate_as_interrupt(), quiet_client_warnings():
        ui.say(describe(opts))
        try:
            with losable_redis(opts.how) as redis:
                ui.say(f"bus: {redis.url}")
                with demo_cluster(NODES, port=opts.port, say=ui.say, bus=redis.url) as cluster:
                    report = asyncio.run(run_redis_loss_workload(cluster, redis, opts, ui))
        except ClientsHurt as e:
            if as_json:
                print(json.dumps({"dropped": e.dropped, "error": str(e)}))
            else:
                ui.out.print(f"[bold red]DAMAGE:[/bold red] {e}")
            return DAMAGE
    if as_json:
        print(json.dumps(report.as_dict()))
    else:
        render(report, opts, ui)
    return DAMAGE if report.damaged else OK
