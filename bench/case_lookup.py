"""Open-by-name in a directory of 100,000 entries, the name in another case.

Windows names ignore case; a POSIX volume does not, so a name the client
spells differently from the volume costs the server a lookup beyond one
stat. This measures that cost on one gateway node and on one Samba smbd in
the same run: each server's share gets a directory ``big`` of ``--entries``
files named ``file-000000.dat``..., and one smbprotocol client opens and
closes random ones as ``BIG\\FILE-012345.DAT`` for ``--seconds``. The
servers are interleaved run by run; each figure is the median over the runs.

    sudo .venv/bin/python bench/case_lookup.py [--entries 100000] [--seconds 10] [--runs 3]

Needs root (smbd switches to the test user).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from smbprotocol.connection import Connection  # noqa: E402
from smbprotocol.open import (  # noqa: E402
    CreateDisposition,
    CreateOptions,
    FilePipePrinterAccessMask,
    ImpersonationLevel,
    Open,
    ShareAccess,
)
from smbprotocol.session import Session  # noqa: E402
from smbprotocol.tree import TreeConnect  # noqa: E402

from bench.servers import (  # noqa: E402
    Endpoint,
    gateway,
    gateway_share,
    smbd,
    smbd_share,
    work_dir,
)


def populate(directory: Path, entries: int) -> None:
    directory.mkdir(parents=True)
    for i in range(entries):
        fd = os.open(directory / f"file-{i:06d}.dat", os.O_CREAT | os.O_WRONLY, 0o644)
        os.close(fd)
        if i and i % 20000 == 0:
            print(f"  {directory}: {i}/{entries} files", file=sys.stderr)
    directory.chmod(0o755)


def opens_per_second(endpoint: Endpoint, entries: int, seconds: float, seed: int) -> float:
    host, port = endpoint
    conn = Connection(uuid.uuid4(), host, port, require_signing=True)
    conn.connect(timeout=10)
    try:
        session = Session(conn, "test", "test", require_encryption=False)
        session.connect()
        tree = TreeConnect(session, rf"\\{host}\share")
        tree.connect()
        rng = random.Random(seed)
        done = 0
        deadline = time.monotonic() + seconds
        started = time.monotonic()
        while time.monotonic() < deadline:
            name = rf"BIG\FILE-{rng.randrange(entries):06d}.DAT"
            handle = Open(tree, name)
            handle.create(
                ImpersonationLevel.Impersonation,
                FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES,
                0,
                ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE,
                CreateDisposition.FILE_OPEN,
                CreateOptions.FILE_NON_DIRECTORY_FILE,
            )
            handle.close()
            done += 1
        return done / (time.monotonic() - started)
    finally:
        conn.disconnect()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=100_000, help="files in the directory")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of one run")
    ap.add_argument("--runs", type=int, default=3, help="runs per server (default 3)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("case_lookup.py: needs root (smbd)", file=sys.stderr)
        return 2
    work = work_dir("smbgw-casebench-")
    rates: dict[str, list[float]] = {"gateway, 1 node": [], "Samba smbd": []}
    try:
        with ExitStack() as stack:
            servers = {
                "gateway, 1 node": stack.enter_context(gateway(work, 1))[0],
                "Samba smbd": stack.enter_context(smbd(work))[0],
            }
            print(f"populating two directories of {args.entries} files", file=sys.stderr)
            populate(gateway_share(work, 1) / "big", args.entries)
            populate(smbd_share(work) / "big", args.entries)
            for run in range(args.runs):
                for name, endpoint in servers.items():
                    rate = opens_per_second(endpoint, args.entries, args.seconds, seed=run)
                    rates[name].append(rate)
                    line = f"run {run + 1}/{args.runs} {name:16} {rate:8.0f} opens/s"
                    print(line, file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    gw, sm = (statistics.median(r) for r in rates.values())
    ratio = gw / sm if sm else 0.0
    if args.json:
        print(json.dumps({"entries": args.entries, "runs": rates, "gateway": gw,
                          "smbd": sm, "ratio": round(ratio, 2)}, indent=2))  # fmt: skip
        return 0
    print(f"\nopen by name in another case, {args.entries} entries, median of {args.runs} runs\n")
    print("| server | opens/s (median) | runs |")
    print("|---|---|---|")
    for name, r in rates.items():
        print(f"| {name} | {statistics.median(r):.0f} | {', '.join(f'{x:.0f}' for x in r)} |")
    print(f"\ngateway / smbd: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
