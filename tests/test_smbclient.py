"""Debian's smbclient against one gateway node: the everyday file operations."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from .conftest import PASSWORD, USER, GatewayNode, need, smbclient

MODES = {
    "smb2_02": ["-m", "SMB2_02"],
    "smb3_11": ["-m", "SMB3_11"],
    "signed": ["-m", "SMB3_11", "--client-protection=sign"],
    "encrypted": ["-m", "SMB3_11", "--client-protection=encrypt"],
}


def _ok(result: object) -> str:
    out = f"{result.stdout}\n{result.stderr}"  # type: ignore[attr-defined]
    assert result.returncode == 0, out  # type: ignore[attr-defined]
    assert "NT_STATUS_" not in result.stdout, out  # type: ignore[attr-defined]
    return out


@pytest.mark.parametrize("mode", list(MODES))
def test_file_operations(module_gateway: GatewayNode, tmp_path: Path, mode: str) -> None:
    args = MODES[mode]
    share = module_gateway.share_dir
    payload = os.urandom(3 * 1024 * 1024 + 17)  # several max-size reads and a short tail
    src = tmp_path / "upload.bin"
    src.write_bytes(payload)
    back = tmp_path / "download.bin"
    d = f"dir_{mode}"
    cmds = (
        f"mkdir {d}; cd {d}; put {src} data.bin; get data.bin {back}; "
        "rename data.bin moved.bin; allinfo moved.bin; ls"
    )
    out = _ok(smbclient(module_gateway, cmds, *args))
    assert (share / d / "moved.bin").read_bytes() == payload
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(payload).digest()
    assert not (share / d / "data.bin").exists()
    assert "moved.bin" in out
    # allinfo prints the attributes and the size it was told.
    assert "attributes:" in out and str(len(payload)) in out

    _ok(smbclient(module_gateway, f"cd {d}; rm moved.bin; cd ..; rmdir {d}", *args))
    assert not (share / d).exists()


@pytest.mark.parametrize("mode", ["smb2_02", "smb3_11", "encrypted"])
def test_list_shares(module_gateway: GatewayNode, mode: str) -> None:
    import subprocess

    result = subprocess.run(
        [need("smbclient"), "-L", module_gateway.host, "-p", str(module_gateway.port),
         "-U", f"{USER}%{PASSWORD}", *MODES[mode]],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    lines = [line.split() for line in result.stdout.splitlines()]
    assert ["share", "Disk"] in [line[:2] for line in lines], out
    assert ["IPC$", "IPC"] in [line[:2] for line in lines], out


def test_wrong_password_is_refused(module_gateway: GatewayNode) -> None:
    import subprocess

    result = subprocess.run(
        [need("smbclient"), module_gateway.unc, "-p", str(module_gateway.port),
         "-U", f"{USER}%wrong", "-m", "SMB3_11", "-c", "ls"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "NT_STATUS_LOGON_FAILURE" in result.stdout + result.stderr


def test_unknown_share_is_refused(module_gateway: GatewayNode) -> None:
    import subprocess

    result = subprocess.run(
        [need("smbclient"), f"//{module_gateway.host}/nosuch", "-p", str(module_gateway.port),
         "-U", f"{USER}%{PASSWORD}", "-c", "ls"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "NT_STATUS_BAD_NETWORK_NAME" in result.stdout + result.stderr


def test_names_ignore_case_and_keep_it(module_gateway: GatewayNode, tmp_path: Path) -> None:
    src = tmp_path / "report.txt"
    src.write_text("quarterly\n")
    _ok(smbclient(module_gateway, f"mkdir CaseDir; put {src} CaseDir\\Report.TXT"))
    got = tmp_path / "got.txt"
    _ok(smbclient(module_gateway, f"get casedir\\REPORT.txt {got}"))
    assert got.read_text() == "quarterly\n"
    # A change of case only is a rename, and the listing shows the new case.
    _ok(smbclient(module_gateway, "rename CASEDIR\\report.txt CaseDir\\REPORT.txt"))
    assert sorted(p.name for p in (module_gateway.share_dir / "CaseDir").iterdir()) == [
        "REPORT.txt"
    ]
    _ok(smbclient(module_gateway, "del casedir\\report.txt; rmdir casedir"))
    assert not (module_gateway.share_dir / "CaseDir").exists()
