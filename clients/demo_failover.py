"""``smbgw demo failover``: the Access workload goes on while a node dies.

A throwaway cluster (2 or 3 nodes, a private Redis, every share continuously
available, ``--takeover``) runs the Jet-like workload of ``smbgw demo
access``, each client holding the database through a persistent handle. At a
point chosen from the seed (between a quarter and half of the updates, once
every client has the database open) one node, also chosen from the seed
among those with clients, is killed with SIGKILL. Its clients lose their
connections; each connects again to the address it used, which another node
serves once the dead one is declared dead (``node_ttl``), takes its handle
back with a DH2C, sends again the request that was unanswered, and goes on
(`clients.reconnect`). Nothing committed may be lost: every update whose
unlock returned must be in the file at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rich.table import Table

from .demo_common import (
    DAMAGE,
    OK,
    PASSWORD,
    SHARE,
    USER,
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
from .jet import JetConfig, JetReport, run_jet


@dataclass
class FailoverOptions:
    nodes: int = 2
    clients: int = 4
    updates: int = 1000
    seed: int = 0
    node_ttl: float = 2.0
    port: int | None = None
    timeout: float = 300.0


@dataclass(frozen=True)
class KillPlan:
    victim: int  # index of the node to kill
    after: int  # committed updates before the kill

    @classmethod
    def from_seed(cls, opts: FailoverOptions) -> KillPlan:
        rng = random.Random(opts.seed)
        # Only a node with clients: client i is on node i mod nodes.
        victim = rng.randrange(min(opts.nodes, opts.clients))
        return cls(victim, fault_point(rng, opts.updates))


def killer(cluster: DemoCluster, plan: KillPlan, clients: int) -> Trigger:
    """SIGKILLs the victim once ``plan.after`` updates are committed and every
    client has the database open (before that, a client could lose a
    connection with no persistent handle on it yet)."""

    def kill() -> None:
        # On the clients' event loop: the kill is one system call, and the
        # clients on that node find their connections gone.
        os.kill(cluster.cluster.nodes[plan.victim].proc.pid, signal.SIGKILL)

    return Trigger(plan.after, clients, kill)


@dataclass
class FailoverReport:
    jet: JetReport
    killed_node: str
    killed_after: int | None
    node_ttl: float

    @property
    def seconds_paused(self) -> float:
        return max((c.paused_seconds for c in self.jet.clients), default=0.0)

    @property
    def reconnects(self) -> list[int]:
        return [c.reconnects for c in self.jet.clients]

    @property
    def damaged(self) -> bool:
        return bool(self.jet.lost or self.jet.corrupt_pages)

    def as_dict(self) -> dict[str, object]:
        """The figures ``smbgw demo failover --json`` prints."""
        return {
            **self.jet.as_dict(),
            "killed_node": self.killed_node,
            "killed_after": self.killed_after,
            "node_ttl": self.node_ttl,
            "seconds_paused": round(self.seconds_paused, 3),
            "reconnects": self.reconnects,
            "reclaimed": [c.reclaimed for c in self.jet.clients],
            "replayed": [c.replayed for c in self.jet.clients],
        }


def jet_config(opts: FailoverOptions) -> JetConfig:
    return JetConfig(
        clients=opts.clients,
        updates=opts.updates,
        seed=opts.seed,
        share=SHARE,
        user=USER,
        password=PASSWORD,
        persistent=True,
    )


async def run_failover_workload(
    cluster: DemoCluster, opts: FailoverOptions, ui: Ui | None = None
) -> FailoverReport:
    """One run on a running cluster (``demo_cluster`` with CA and takeover)."""
    ui = ui or Ui(False)
    plan = KillPlan.from_seed(opts)
    kill = killer(cluster, plan, opts.clients)
    with ui.progress("updates", opts.updates) as bar:
        task = asyncio.ensure_future(
            run_jet(
                cluster.endpoints,
                jet_config(opts),
                progress=both(kill.on_commit, bar),
                on_open=kill.on_open,
            )
        )
        done, _ = await asyncio.wait({task}, timeout=opts.timeout)
        report = await workload_result(task, bool(done), cluster, opts.timeout)
    victim = cluster.cluster.nodes[plan.victim].node_id
    return FailoverReport(report, victim, kill.fired_after, opts.node_ttl)


def describe(opts: FailoverOptions) -> str:
    return (
        f"{opts.clients} clients over {opts.nodes} nodes (CA share, takeover, "
        f"node_ttl {opts.node_ttl:g} s), {opts.updates} updates, seed {opts.seed}"
    )


def render(report: FailoverReport, opts: FailoverOptions, ui: Ui) -> None:
    jet = report.jet
    killed = (
        f"{report.killed_node} (SIGKILL) after {report.killed_after} updates"
        if report.killed_after is not None
        else f"{report.killed_node}: not killed"
    )
    ui.out.print(f"Access workload through a node failure: {describe(opts)}")
    ui.out.print(
        figures_table(
            "",
            [
                ("updates committed", str(jet.committed)),
                ("updates lost", str(jet.lost)),
                ("pages with a bad checksum", str(jet.corrupt_pages)),
                ("node killed", killed),
                ("longest pause of a client", f"{report.seconds_paused:.2f} s"),
                ("elapsed time", f"{jet.seconds:.2f} s"),
            ],
        )
    )
    ui.out.print(_clients_table(report))
    if report.damaged:
        ui.out.print(
            f"[bold red]DAMAGE:[/bold red] {jet.lost} committed update(s) lost, "
            f"{jet.corrupt_pages} page(s) corrupt"
        )
    else:
        ui.out.print("[bold green]OK:[/bold green] every committed update is in the file")
    if not any(report.reconnects):
        ui.out.print("note: no client was working on the node when it died")


def _clients_table(report: FailoverReport) -> Table:
    table = Table(title="clients", title_justify="left")
    columns = ("client", "node address", "updates", "reconnects", "reclaimed", "replayed", "paused")
    for name in columns:
        table.add_column(name, justify="left" if name == "node address" else "right")
    for i, c in enumerate(report.jet.clients):
        table.add_row(
            str(i + 1), c.endpoint[0], str(c.committed),
            str(c.reconnects), str(c.reclaimed), str(c.replayed), f"{c.paused_seconds:.2f} s",
        )  # fmt: skip
    return table


@contextmanager
def failover_cluster(
    opts: FailoverOptions, say: Callable[[str], None] | None = None
) -> Iterator[DemoCluster]:
    """A throwaway cluster as the demo needs it: CA shares, takeover, ``node_ttl``.
    One run kills a node of it, so each run needs a new one."""
    with demo_cluster(
        opts.nodes,
        port=opts.port,
        say=say,
        continuous_availability=True,
        takeover=True,
        node_args=["--node-ttl", f"{opts.node_ttl:g}"],
    ) as cluster:
        yield cluster


def run_failover(opts: FailoverOptions, as_json: bool) -> int:
    """The whole command: start a cluster, run the workload, kill a node, report, stop."""
    ui = Ui(not as_json)
    with terminate_as_interrupt(), quiet_client_warnings():
        ui.say(describe(opts))
        with failover_cluster(opts, ui.say) as cluster:
            report = asyncio.run(run_failover_workload(cluster, opts, ui))
    if as_json:
        print(json.dumps(report.as_dict()))
    else:
        render(report, opts, ui)
    return DAMAGE if report.damaged else OK
