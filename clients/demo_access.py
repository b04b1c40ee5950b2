"""``smbgw demo access``: the Access scenario on a throwaway local cluster.

Several Jet-like clients (`clients.jet`) update records of one database
file, spread round-robin over the nodes. Coordinated, the nodes share one
Redis bus and a break raised on one node reaches the caching client on the
other before the conflicting open completes: nothing is lost. With
``uncoordinated`` every node has its own in-process bus over the same
directory (a naive multi-mount): each node grants its first client Write
caching, and the clients overwrite each other's records.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from .demo_common import (
    DAMAGE,
    OK,
    PASSWORD,
    SHARE,
    USER,
    DemoCluster,
    Ui,
    demo_cluster,
    figures_table,
    quiet_client_warnings,
    terminate_as_interrupt,
    workload_result,
)
from .jet import JetConfig, JetReport, run_jet


@dataclass
class AccessOptions:
    nodes: int = 2
    clients: int = 4
    updates: int = 1000
    seed: int = 0
    uncoordinated: bool = False
    mode: str = "lease"
    port: int | None = None
    timeout: float = 300.0


def jet_config(opts: AccessOptions) -> JetConfig:
    return JetConfig(
        clients=opts.clients,
        updates=opts.updates,
        seed=opts.seed,
        mode=opts.mode,
        share=SHARE,
        user=USER,
        password=PASSWORD,
    )


async def run_workload(
    cluster: DemoCluster,
    opts: AccessOptions,
    progress: Ui | None = None,
) -> JetReport:
    """One workload run on a running cluster (the tests call this for many seeds)."""
    cfg = jet_config(opts)
    ui = progress or Ui(False)
    with ui.progress("updates", cfg.updates) as bar:
        # asyncio.wait, not wait_for: a client's own connect timeout must not
        # be reported as the workload's.
        task = asyncio.ensure_future(run_jet(cluster.endpoints, cfg, progress=bar))
        done, _ = await asyncio.wait({task}, timeout=opts.timeout)
        return await workload_result(task, bool(done), cluster, opts.timeout)


def describe(opts: AccessOptions) -> str:
    how = "uncoordinated (one in-process bus per node)" if opts.uncoordinated else "coordinated"
    return (
        f"{opts.clients} clients over {opts.nodes} node(s), {how}, "
        f"{opts.updates} updates, seed {opts.seed}, caching: {opts.mode}"
    )


def render(report: JetReport, opts: AccessOptions, ui: Ui) -> None:
    rate = report.updates_per_second
    ui.out.print(f"Access workload: {describe(opts)}")
    ui.out.print(
        figures_table(
            "",
            [
                ("updates committed", str(report.committed)),
                ("updates lost", str(report.lost)),
                ("pages with a bad checksum", str(report.corrupt_pages)),
                ("elapsed time", f"{report.seconds:.2f} s ({rate:.0f} updates/s)"),
                ("breaks sent", str(report.breaks)),
            ],
        )
    )
    if report.lost or report.corrupt_pages:
        ui.out.print(
            f"[bold red]DAMAGE:[/bold red] {report.lost} committed update(s) lost, "
            f"{report.corrupt_pages} page(s) corrupt"
        )
    else:
        ui.out.print("[bold green]OK:[/bold green] every committed update is in the file")


def run_access(opts: AccessOptions, as_json: bool) -> int:
    """The whole command: start a cluster, run the workload, report, stop."""
    ui = Ui(not as_json)
    with terminate_as_interrupt(), quiet_client_warnings():
        ui.say(describe(opts))
        with demo_cluster(
            opts.nodes, port=opts.port, uncoordinated=opts.uncoordinated, say=ui.say
        ) as cluster:
            report = asyncio.run(run_workload(cluster, opts, ui))
    if as_json:
        print(json.dumps(report.as_dict()))
    else:
        render(report, opts, ui)
    return DAMAGE if report.lost or report.corrupt_pages else OK
