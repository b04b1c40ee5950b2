"""Samba's smbtorture against one gateway node, suite by suite.

Each suite must reach its floor of passed tests, and every failing test must
be on the documented known-failure list (tests/torture/known_failures.toml).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from bench.samba import run_torture

from .conftest import need, start_gateway

KNOWN = tomllib.loads((Path(__file__).parent / "torture" / "known_failures.toml").read_text())
SUITES = list(KNOWN["floors"])
# The default break timeout (35 s, as Windows): smb2.oplock.batch22a measures it.
# Samba's test-only FSCTL_SMBTORTURE controls are on, as in Samba's own test setup.
NODE_ARGS: list[str] = ["--torture-hooks"]


def run_suite(hosts: list[str], port: int, suite: str, outdir: Path) -> dict[str, str]:
    """Run one suite against ``hosts`` (bench/samba.py); returns test name -> outcome."""
    need("smbtorture")
    run = run_torture(hosts, suite, port, outdir)
    log = run.log.read_text(errors="replace")
    assert run.results, f"smbtorture ran no test (exit {run.returncode}):\n{log[-3000:]}"
    return run.results


@pytest.mark.torture
@pytest.mark.parametrize("suite", SUITES)
def test_suite(suite: str, tmp_path: Path) -> None:
    node = start_gateway(tmp_path / "gw", extra=NODE_ARGS)
    try:
        results = run_suite([node.host], node.port, suite, tmp_path / "out")
    finally:
        rc = node.stop()
    check_results(KNOWN, suite, results, node.log())
    assert rc == 0, node.log()[-3000:]
    assert "Traceback" not in node.log(), node.log()[-5000:]


def check_results(
    known_toml: dict[str, Any], suite: str, results: dict[str, str], log: str
) -> None:
    """Every failure must be a known one, and the floor must be reached."""
    known = known_toml.get("known", {})
    failed = sorted(n for n, r in results.items() if r in ("failure", "error"))
    passed = sum(1 for r in results.values() if r == "success")
    unexpected = [n for n in failed if n not in known]
    target = known_toml["targets"][suite]
    summary = (
        f"{suite}: {passed} passed, {len(failed)} failed (target {target}); "
        f"unexpected: {unexpected}"
    )
    print(summary)
    assert not unexpected, summary + "\n" + log[-3000:]
    assert passed >= known_toml["floors"][suite], summary
