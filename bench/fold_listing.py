"""What case folding costs on a large directory: a listing with a pattern
(``ShareFS.listdir``, the QUERY_DIRECTORY path), the pattern matcher alone, and a
case-index scan, over 10,000 names of which half are not ASCII.

    .venv/bin/python -m bench.fold_listing [--names 10000] [--runs 7]

Prints the best and the median of ``--runs`` per figure, in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from gateway.fs import vfs
from gateway.fs.caseindex import CaseIndex

PATTERNS = ("*.txt", "σ*Σ-01*.T?T", "REPORT-0<.TXT", "*e-0*1.*", "report-01234.txt")


def _names(count: int) -> list[str]:
    kinds = ("Σίσυφος-{:05d}.TXT", "straße-{:05d}.doc", "Report-{:05d}.txt", "Report-{:05d}.txt")
    return [kinds[i % 4].format(i) for i in range(count)]


def _time(run: Callable[[], object], runs: int) -> tuple[float, float]:
    took = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        took.append((time.perf_counter() - start) * 1000)
    return min(took), statistics.median(took)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    names = _names(args.names)
    with tempfile.TemporaryDirectory(prefix="fold-listing-") as root:
        big = Path(root) / "big"
        big.mkdir()
        for name in names:
            (big / name).touch()
        fs = vfs.ShareFS(root, volume_id=1)

        def match_all(pattern: str) -> int:
            vfs.compile_pattern.cache_clear()  # a fresh matcher, as per listing
            match = vfs.compile_pattern(pattern)
            return sum(1 for name in names if match(name))

        for pattern in PATTERNS:
            found = len(fs.listdir(str(big), pattern))
            listing = _time(partial(fs.listdir, str(big), pattern), args.runs)
            matcher = _time(partial(match_all, pattern), args.runs)
            print(
                f"{pattern!r:20} {found:5d} listed  listdir {listing[0]:6.2f} / {listing[1]:6.2f}"
                f" ms  matcher {matcher[0]:6.2f} / {matcher[1]:6.2f} ms"
            )

        def scan() -> str | None:
            return CaseIndex(min_entries=args.names + 1).find(str(big), "ΣΊΣΥΦΟΣ-00004.txt")

        best, median = _time(scan, args.runs)
        print(f"case-index scan of {args.names} names: {best:.2f} / {median:.2f} ms ({scan()})")


if __name__ == "__main__":
    main()
