"""Samba's smbtorture against one gateway node, suite by suite.

Each suite must reach its floor of passed tests, and every failing test must
be on the documented known-failure list (tests/torture/known_failures.toml).
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from .conftest import SHARED, GatewayNode, need, start_gateway

KNOWN = tomllib.loads((Path(__file__).parent / "torture" / "known_failures.toml").read_text())
SUITES = list(KNOWN["floors"])
RUN_TORTURE = SHARED / "torture" / "run-torture.sh"
# The default break timeout (35 s, as Windows): smb2.oplock.batch22a measures it.
# Samba's test-only FSCTL_SMBTORTURE controls are on, as in Samba's own test setup.
NODE_ARGS: list[str] = ["--torture-hooks"]

# A name may hold spaces (smb2.ioctl."copy-chunk streams",
# smb2.delete-on-close-perms.CREATE Existing); a failure's line ends with " ["
# before its reason.
_RESULT = re.compile(r"^(success|failure|error|skip|xfail): (.+?)(?: \[.*)?$")


def run_suite(node: GatewayNode, suite: str, outdir: Path) -> dict[str, str]:
    """Run one suite; returns test name -> outcome."""
    return run_script([str(RUN_TORTURE), node.host, node.share, suite, str(node.port)],
                      outdir / f"{suite}.log", outdir)  # fmt: skip


def run_script(argv: list[str], log_path: Path, outdir: Path) -> dict[str, str]:
    """Run one of ../shared/torture's scripts; returns test name -> outcome."""
    need("smbtorture")
    env = dict(os.environ, OUTDIR=str(outdir), MAX_RUNTIME="900")
    proc = subprocess.run(
        ["bash", *argv], capture_output=True, text=True, timeout=1200, env=env,
    )  # fmt: skip
    log = log_path.read_text(errors="replace")
    results: dict[str, str] = {}
    for line in log.splitlines():
        m = _RESULT.match(line)
        if m:
            results[m.group(2)] = m.group(1)
    assert results, f"smbtorture ran no test:\n{proc.stdout}\n{proc.stderr}\n{log[-3000:]}"
    return results


@pytest.mark.torture
@pytest.mark.parametrize("suite", SUITES)
def test_suite(suite: str, tmp_path: Path) -> None:
    node = start_gateway(tmp_path / "gw", extra=NODE_ARGS)
    try:
        results = run_suite(node, suite, tmp_path / "out")
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
