"""QUERY_DIRECTORY against a node: a listing resumed after the directory
changed shows it as it is now (smb2.dir.fixed), RESTART_SCANS starts over,
and smbclient's ``ls`` masks select names."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from smbprotocol.exceptions import SMBResponseException
from smbprotocol.file_info import FileInformationClass
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    FilePipePrinterAccessMask,
    Open,
    QueryDirectoryFlags,
)

from .conftest import GatewayNode, smbclient
from .smbp import SmbpTree

NO_MORE_FILES = 0x80000006
LISTING = FileInformationClass.FILE_DIRECTORY_INFORMATION


def open_in(t: SmbpTree, name: str, *, directory: bool = False, delete: bool = False) -> Open:
    options = CreateOptions.FILE_DIRECTORY_FILE if directory else 0
    if delete:
        options |= CreateOptions.FILE_DELETE_ON_CLOSE
        return t.open(name, FilePipePrinterAccessMask.DELETE, CreateDisposition.FILE_OPEN, options)
    return t.open(name, disposition=CreateDisposition.FILE_OPEN, options=options)


def query(d: Open, flags: int = 0) -> list[tuple[str, int]]:
    """(name, EndOfFile) of the entries one QUERY_DIRECTORY returns; [] at the end."""
    try:
        entries = d.query_directory("*", LISTING, flags=flags, max_output=65536)
    except SMBResponseException as e:
        assert e.status == NO_MORE_FILES
        return []
    return [
        (e["file_name"].get_value().decode("utf-16-le"), int(e["end_of_file"].get_value()))
        for e in entries
    ]


def rest_of(d: Open) -> dict[str, int]:
    out: dict[str, int] = {}
    while batch := query(d):
        out.update(batch)
    return out


@pytest.fixture
def listed(module_gateway: GatewayNode, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    name = f"qd_{request.node.name}"
    folder = module_gateway.share_dir / name
    folder.mkdir()
    for f in "abcde":
        (folder / f"{f}.txt").write_bytes(b"x")
    t = SmbpTree(module_gateway)
    d = open_in(t, name, directory=True)
    first = query(d, QueryDirectoryFlags.SMB2_RETURN_SINGLE_ENTRY)
    assert [n for n, _ in first] == ["."]
    yield {"tree": t, "dir": d, "name": name, "folder": folder}
    d.close()
    t.close()


def test_resumed_listing_leaves_out_deleted_entries(listed: dict[str, Any]) -> None:
    t, name = listed["tree"], listed["name"]
    for f in ("b.txt", "c.txt"):
        open_in(t, rf"{name}\{f}", delete=True).close()
    assert set(rest_of(listed["dir"])) == {"..", "a.txt", "d.txt", "e.txt"}


def test_resumed_listing_shows_current_metadata(listed: dict[str, Any]) -> None:
    t, name = listed["tree"], listed["name"]
    f = open_in(t, rf"{name}\d.txt")
    f.write(b"0123456789", 0)
    f.close()
    sizes = rest_of(listed["dir"])
    assert sizes["d.txt"] == 10 and sizes["a.txt"] == 1


def test_restart_scans_lists_again(listed: dict[str, Any]) -> None:
    d = listed["dir"]
    assert len(rest_of(d)) == 6  # '..' and five files after the single '.'
    (listed["folder"] / "f.txt").write_bytes(b"")
    again = {n for n, _ in query(d, QueryDirectoryFlags.SMB2_RESTART_SCANS)}
    again |= set(rest_of(d))
    assert again == {".", "..", "a.txt", "b.txt", "c.txt", "d.txt", "e.txt", "f.txt"}


def test_smbclient_ls_masks(module_gateway: GatewayNode) -> None:
    folder = module_gateway.share_dir / "qd_masks"
    folder.mkdir()
    for f in ("alpha.txt", "alto.doc", "beta.txt", "ab.txt"):
        (folder / f).write_bytes(b"")

    def names(mask: str) -> set[str]:
        out = smbclient(module_gateway, rf"ls qd_masks\{mask}")
        assert out.returncode == 0, out.stderr + out.stdout
        return set(re.findall(r"^\s+(\S+)\s+[ADHNRS]+\s+\d+", out.stdout, re.M))

    assert names("al*") == {"alpha.txt", "alto.doc"}
    assert names("*.txt") == {"alpha.txt", "beta.txt", "ab.txt"}
    assert names("a?.txt") == {"ab.txt"}
    assert names("ALPHA.TXT") == {"alpha.txt"}
