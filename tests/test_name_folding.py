"""Names that differ only in case, as a real client sees them: smbclient puts two
spellings of one name to a node and to Samba's smbd, then lists and reads back.

NTFS compares names by upcasing each UTF-16 code unit through its upcase table
(MS-FSA 2.1.4.4; MS-FSCC 2.1.5): ``σίσυφος.txt`` then ``ΣΊΣΥΦΟΣ.txt`` is one
file, overwritten by the second put. The node follows that table
(``gateway.fs.caseindex.fold``). smbd on a case-sensitive Linux volume scans the
directory and compares with its own upper-casing table, which agrees for Greek,
Cyrillic, ß, ẞ and İ but keeps ``ı`` apart from ``I`` and ``ǅ`` apart from
``ǆ``; there the node answers as NTFS does (one file) and smbd does not (two),
and the table below records both answers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.samba import Smbd

from .conftest import PASSWORD, USER, GatewayNode, free_port, need


@dataclass(frozen=True)
class Case:
    first: str
    second: str
    ntfs_files: int  # what the node must show: NTFS's answer
    smbd_files: int  # what smbd shows; where it differs, why is in the note
    note: str = ""


CASES = [
    Case("σίσυφος.txt", "ΣΊΣΥΦΟΣ.txt", 1, 1),  # final ς and σ are both Σ
    Case("straße.txt", "STRASSE.txt", 2, 2),  # ß has no one-character capital
    Case("straße.txt", "STRAẞE.txt", 2, 2),  # ẞ upcases to itself
    Case("İstanbul.txt", "istanbul.txt", 2, 2),  # İ stays İ, i is I
    Case("привет.txt", "ПРИВЕТ.txt", 1, 1),
    Case("ırmak.txt", "IRMAK.txt", 1, 2, "smbd's table leaves ı as it is"),
    Case("ǅungla.txt", "ǆungla.txt", 1, 2, "smbd's table upcases ǆ but not titlecase ǅ"),
]


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    share: str
    root: Path  # the share's directory on this machine


def _smbclient(server: Server, commands: str, home: Path) -> str:
    cmd = [
        need("smbclient"), f"//{server.host}/{server.share}", "-p", str(server.port),
        "-U", f"{USER}%{PASSWORD}", "-c", commands,
    ]  # fmt: skip
    env = dict(os.environ, HOME=str(home), LANG="C.UTF-8")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def smbd() -> Iterator[Server]:
    if shutil.which("smbd") is None:
        pytest.skip("Samba's smbd is not installed")
    if os.geteuid() != 0:
        pytest.skip("smbd needs root (it switches to the test user)")
    work = Path(tempfile.mkdtemp(prefix="smbgw-fold-smbd-"))
    work.chmod(0o755)  # smbd serves the share as user test
    try:
        with Smbd(work / "smbd", free_port()).start() as server:
            host, port = server.endpoints[0]
            yield Server(host, port, "share", server.share)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def node(module_gateway: GatewayNode) -> Server:
    gw = module_gateway
    return Server(gw.host, gw.port, gw.share, gw.share_dir)


@dataclass(frozen=True)
class Answer:
    listed: list[list[str]]  # per case, the names its directory lists
    read_first: list[str]  # per case, what reading the first spelling gives
    pattern: list[str]  # names `ls c0\ΣΊΣ*` lists
    streams: list[str]  # stream lines of `allinfo` after two spellings of a stream


def _ask(server: Server, tmp: Path) -> Answer:
    tmp.mkdir()
    first, second = tmp / "first", tmp / "second"
    first.write_text("first")
    second.write_text("second")
    puts = []
    for i, case in enumerate(CASES):
        puts += [f"mkdir c{i}", f'put {first} "c{i}\\{case.first}"',
                 f'put {second} "c{i}\\{case.second}"']  # fmt: skip
    puts += [f"put {first} f.txt", f'put {first} "f.txt:σίσυφος"',
             f'put {second} "f.txt:ΣΊΣΥΦΟΣ"']  # fmt: skip
    _smbclient(server, "; ".join(puts), tmp)
    reads = [f'get "c{i}\\{case.first}" {tmp}/read{i}' for i, case in enumerate(CASES)]
    lists = [f'ls "c{i}\\*"' for i in range(len(CASES))] + ['ls "c0\\ΣΊΣ*"']
    out = _smbclient(server, "; ".join(reads + lists + ["allinfo f.txt"]), tmp)
    # Each listing ends with its "blocks of size" line.
    chunks = out.split("blocks of size")
    listed = [_names(chunk) for chunk in chunks[: len(CASES) + 1]]
    return Answer(
        listed=listed[: len(CASES)],
        read_first=[(tmp / f"read{i}").read_text() for i in range(len(CASES))],
        pattern=listed[len(CASES)],
        streams=[line.strip() for line in out.splitlines() if line.startswith("stream:")],
    )


def _names(chunk: str) -> list[str]:
    names = []
    for line in chunk.splitlines():
        if line.startswith("  ") and len(line.split()) > 3:
            name = line.split()[0]
            if name not in (".", ".."):
                names.append(name)
    return sorted(names)


def _expected_names(case: Case, files: int) -> list[str]:
    # Merged: the first spelling stays, as on NTFS (the second put overwrote it).
    return [case.first] if files == 1 else sorted([case.first, case.second])


def test_two_spellings_of_a_name_are_one_file_as_ntfs_compares_them(
    node: Server, smbd: Server, tmp_path: Path
) -> None:
    ours = _ask(node, tmp_path / "node")
    theirs = _ask(smbd, tmp_path / "smbd")
    for i, case in enumerate(CASES):
        assert ours.listed[i] == _expected_names(case, case.ntfs_files), case
        assert ours.read_first[i] == ("second" if case.ntfs_files == 1 else "first"), case
        assert theirs.listed[i] == _expected_names(case, case.smbd_files), case
        assert theirs.read_first[i] == ("second" if case.smbd_files == 1 else "first"), case
        # On the volume as in the listing: nothing hidden, nothing left over.
        assert sorted(os.listdir(node.root / f"c{i}")) == ours.listed[i]
    # A pattern is folded as names are: both servers list the Greek file for ΣΊΣ*.
    assert ours.pattern == theirs.pattern == ["σίσυφος.txt"]
    # Stream names too: the second spelling overwrote the first stream.
    for answer in (ours, theirs):
        assert sorted(answer.streams) == ["stream: [::$DATA], 5 bytes",
                                          "stream: [:σίσυφος:$DATA], 6 bytes"]  # fmt: skip
