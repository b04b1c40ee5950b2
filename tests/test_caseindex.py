"""The case index finds names in another case and never answers from a stale map;
names are equal when NTFS's per-character upcasing makes them equal (``fold``), in
lookups, kept maps, QUERY_DIRECTORY patterns and stream names alike."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from gateway.fs.caseindex import CaseIndex, fold, upcase
from gateway.fs.streamstore import encode_name
from gateway.fs.vfs import wildcard_match


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


# -- the fold ------------------------------------------------------------------------------

# (name, name, equal on NTFS): the upcase table compares one character at a time.
NAMES = [
    ("σίσυφος.txt", "ΣΊΣΥΦΟΣ.txt", True),  # final ς and σ are both Σ; lower() gave ς≠σ
    ("ΣΊΣΥΦΟΣ.TXT", "σίσυφοσ.txt", True),
    ("straße", "STRASSE", False),  # ß has no one-character capital: it stays ß
    ("straße", "STRAẞE", False),  # ẞ upcases to itself, not to ß's class
    ("İstanbul", "istanbul", False),  # İ stays İ; lower() made it two code points
    ("İ.txt", "i\u0307.txt", False),
    ("ırmak", "IRMAK", True),  # ı upcases to I (Python's table; see test_name_folding)
    ("привет.doc", "ПРИВЕТ.DOC", True),
    ("ǅungla", "ǆungla", True),  # titlecase and small dz both upcase to Ǆ
    ("ǅungla", "ǄUNGLA", True),
    ("ŉ", "ʼN", False),  # ŉ has only a two-character capital: it stays
    ("\u212a", "k", False),  # KELVIN SIGN upcases to itself, not to K
    ("𐐨", "𐐀", False),  # outside the BMP: NTFS's table has no entry, nothing changes
]


@pytest.mark.parametrize(("a", "b", "equal"), NAMES)
def test_names_compare_as_ntfs_upcases_them(a: str, b: str, equal: bool) -> None:
    assert (fold(a) == fold(b)) is equal
    assert (upcase(a) == upcase(b)) is equal
    assert len(fold(a)) == len(a) and len(upcase(a)) == len(a)


def test_the_fold_is_per_character_and_agrees_with_upcase_over_the_whole_bmp() -> None:
    text = "".join(chr(c) for c in range(0x10000) if not 0xD800 <= c < 0xE000)
    folded, upper = fold(text), upcase(text)
    assert len(folded) == len(text) == len(upper)
    # fold(a) == fold(b) exactly when upcase(a) == upcase(b), character by character.
    classes: dict[str, str] = {}
    reps: dict[str, str] = {}
    for f, u in zip(folded, upper, strict=True):
        assert classes.setdefault(u, f) == f
        assert reps.setdefault(f, u) == u
    for c, u in zip(text, upper, strict=True):
        one = c.upper()
        assert u == (one if len(one) == 1 else c)
    assert [c for c, f in zip(text, folded, strict=True) if f == "."] == ["."]


def test_ascii_folds_as_lower_case_so_kept_names_keep_their_spelling() -> None:
    ascii_text = "".join(chr(c) for c in range(128))
    assert fold(ascii_text) == ascii_text.lower()
    # A stream's sidecar file is named from the fold: ASCII names are as before.
    assert encode_name("Zone_Identifier") == "zone_identifier"
    assert encode_name("ΣΊΣΥΦΟΣ") == encode_name("σίσυφος")
    assert encode_name("straße") != encode_name("STRASSE")


def test_the_index_finds_greek_names_in_another_case_scanned_and_kept(tmp_path: Path) -> None:
    d = tmp_path / "greek"
    d.mkdir()
    (d / "σίσυφος.txt").touch()
    (d / "ǅungla").touch()
    (d / "straße").touch()
    for min_entries in (10**6, 1):  # scanned every time, then kept as a map
        index = CaseIndex(min_entries=min_entries, racy_ns=0)
        for _ in range(2):
            assert index.find(str(d), "ΣΊΣΥΦΟΣ.TXT") == "σίσυφος.txt"
            assert index.find(str(d), "ǄUNGLA") == "ǅungla"
            assert index.find(str(d), "STRASSE") is None


# (pattern, name, matches): patterns fold as names do, one character per character.
PATTERNS = [
    ("σ*Σ.TXT", "σίσυφος.txt", True),
    ("ΣΊΣΥΦΟΣ.TXT", "σίσυφος.txt", True),  # no wildcard: the whole name folded
    ("*ς*", "ΣΊΣΥΦΟΣ", True),
    ("İ.txt", "i\u0307.txt", False),  # one character is not two
    ("?.txt", "İ.txt", True),
    ("?stanbul", "İstanbul", True),
    ("??stanbul", "İstanbul", False),
    (">.txt", "İ.txt", True),
    ("İ*<.TXT", "İstanbul.txt", True),
    ("*SS*", "straße", False),
    ("*ß*", "STRAßE", True),
    ("ǄU*", "ǅungla", True),
]


@pytest.mark.parametrize(("pattern", "name", "matches"), PATTERNS)
def test_patterns_fold_each_character_as_names_do(pattern: str, name: str, matches: bool) -> None:
    assert wildcard_match(pattern, name) is matches
