"""The case index finds names in another case and never answers from a stale map."""

from __future__ import annotations

import os
import time
from pathlib import Path

from gateway.fs.caseindex import CaseIndex


def _dir(tmp_path: Path, entries: int) -> Path:
    d = tmp_path / "big"
    d.mkdir()
    for i in range(entries):
        (d / f"File-{i:04d}.Dat").touch()
    return d


def test_finds_the_stored_spelling_and_misses_what_is_absent(tmp_path: Path) -> None:
    d = _dir(tmp_path, 20)
    index = CaseIndex(min_entries=1)
    assert index.find(str(d), "FILE-0003.DAT") == "File-0003.Dat"
    assert index.find(str(d), "file-0019.dat") == "File-0019.Dat"
    assert index.find(str(d), "file-0020.dat") is None
    assert index.find(str(tmp_path / "gone"), "x") is None


def test_a_kept_map_follows_creates_renames_and_deletes_made_elsewhere(tmp_path: Path) -> None:
    d = _dir(tmp_path, 50)
    index = CaseIndex(min_entries=1, racy_ns=100_000_000)
    time.sleep(0.3)
    assert index.find(str(d), "file-0001.dat") == "File-0001.Dat"  # the map is kept now
    # Another node changes the directory: plain POSIX calls, as that node makes them.
    (d / "Added.TXT").touch()
    assert index.find(str(d), "ADDED.txt") == "Added.TXT"
    os.rename(d / "File-0002.Dat", d / "Moved.Dat")
    assert index.find(str(d), "file-0002.dat") is None
    assert index.find(str(d), "MOVED.DAT") == "Moved.Dat"
    (d / "File-0003.Dat").unlink()
    assert index.find(str(d), "file-0003.dat") is None


def test_a_directory_changed_within_the_racy_window_is_read_afresh(tmp_path: Path) -> None:
    """Guards coarse ctimes (older kernels, NFS); Linux 6.13+ stamps ext4 finely after a query."""
    d = _dir(tmp_path, 50)
    index = CaseIndex(min_entries=1)  # 2 s window: the directory was changed just now
    for i in range(20):
        # Each change may fall in the same clock tick as the previous lookup.
        (d / f"New-{i}").touch()
        assert index.find(str(d), f"NEW-{i}") == f"New-{i}"
