"""The Access workload's committed updates per second, gateway against Samba.

Four servers in the same run, each given the same seeded Jet workload
(`clients.jet.run_jet`, 4 caching clients spread round-robin over the
nodes):

* one gateway node and a coordinated 2-node gateway cluster (Redis bus,
  started by `gateway.cluster.LocalCluster`);
* one Samba smbd and a 2-node clustered Samba (ctdbd + smbd per node),
  both started by ``bench/samba.py``.

The runs are interleaved (run 1 on every server, then run 2, ...) so a burst
of load on this shared machine lands on all of them; each figure is the
median over the runs. Lost updates and bad pages are counted too: a fast
server that loses updates is not a result.

    sudo .venv/bin/python bench/access_workload.py [--runs 5] [--updates 1000] [--json]

Needs root (smbd switches to the test user; ctdb adds loopback aliases).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.servers import ctdb, gateway, smbd, work_dir  # noqa: E402
from clients.jet import JetConfig, JetReport, run_jet  # noqa: E402

Endpoint = tuple[str, int]


@dataclass
class Target:
    name: str
    nodes: int
    endpoints: list[Endpoint]
    rates: list[float] = field(default_factory=list)
    lost: int = 0
    corrupt: int = 0
    breaks: list[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0


def once(target: Target, cfg: JetConfig) -> JetReport:
    report = asyncio.run(asyncio.wait_for(run_jet(target.endpoints, cfg), 300))
    target.rates.append(report.updates_per_second)
    target.lost += report.lost
    target.corrupt += report.corrupt_pages
    target.breaks.append(report.breaks)
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="runs per server (default 5)")
    ap.add_argument("--updates", type=int, default=1000, help="updates per run (default 1000)")
    ap.add_argument("--clients", type=int, default=4, help="clients per run (default 4)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("access_workload.py: needs root (smbd, ctdbd)", file=sys.stderr)
        return 2
    work = work_dir("smbgw-abench-")
    started = time.monotonic()
    with ExitStack() as stack:
        targets = [
            Target("gateway, 1 node (Redis bus)", 1, stack.enter_context(gateway(work, 1))),
            Target("gateway, 2 nodes (Redis bus)", 2, stack.enter_context(gateway(work, 2))),
            Target("Samba smbd", 1, stack.enter_context(smbd(work))),
            Target("Samba + CTDB, 2 nodes", 2, stack.enter_context(ctdb(work))),
        ]
        for run in range(args.runs):
            for target in targets:
                cfg = JetConfig(clients=args.clients, updates=args.updates, seed=100 + run)
                r = once(target, cfg)
                print(
                    f"run {run + 1}/{args.runs} {target.name:30} {r.updates_per_second:8.0f}/s "
                    f"lost {r.lost} corrupt {r.corrupt_pages} breaks {r.breaks}",
                    file=sys.stderr,
                )
    shutil.rmtree(work, ignore_errors=True)
    gw1, gw2, sm1, sm2 = targets
    if args.json:
        out = {
            t.name: {"median_updates_per_second": round(t.median, 1), "runs": t.rates,
                     "lost": t.lost, "corrupt_pages": t.corrupt}
            for t in targets
        }  # fmt: skip
        print(json.dumps(out, indent=2))
        return 0
    print(
        f"\nAccess workload: {args.clients} clients, {args.updates} updates per run, "
        f"median of {args.runs} runs ({time.monotonic() - started:.0f} s in all)\n"
    )
    print("| server | nodes | committed updates/s (median) | runs | lost | bad pages |")
    print("|---|---|---|---|---|---|")
    for t in targets:
        runs = ", ".join(f"{r:.0f}" for r in t.rates)
        print(f"| {t.name} | {t.nodes} | {t.median:.0f} | {runs} | {t.lost} | {t.corrupt} |")
    print("\n| comparison | ratio |")
    print("|---|---|")
    for a, b in ((gw1, sm1), (gw2, sm2), (gw2, gw1), (sm2, sm1)):
        ratio = a.median / b.median if b.median else 0.0
        print(f"| {a.name} / {b.name} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
