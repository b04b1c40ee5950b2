"""Case-insensitive name lookup in large directories, coherent across nodes.

A name the client spells in another case than the volume costs a directory
scan. For a large directory that is too slow per open, so a node keeps, per
directory, the map folded name -> stored name. The map is only trusted while
the directory's identity and change time (``st_ino``, ``st_ctime_ns``) are
what they were when it was built: a create, rename or delete through ANY
node (they all share the volume) changes the directory's ctime, and a client
cannot set ctime, so one ``stat`` of the directory validates the map.

Timestamps are coarse (ext4 stamps with the kernel tick), so a change made
in the same tick as the scan could leave the ctime equal. As git does with
its index, a map is not kept when the directory changed within the last
``racy_ns`` of the scan; such a directory is scanned again next time.

Folding. Every name comparison that ignores case (lookups, these maps, the
QUERY_DIRECTORY matcher, stream names) goes through ``fold``, the one place
that says when two names are equal. NTFS compares names as FsRtlAreNamesEqual
does (WDK ntifs.h; the same table serves MS-FSA 2.1.4.4's wildcard match): both
are upcased one UTF-16 code unit at a time through the volume's $UpCase table,
with no context and no change of length. So ``σ`` and ``ς`` are both ``Σ``,
``ß`` stays ``ß`` (and differs from ``ẞ``), ``İ`` stays ``İ`` while ``ı`` is
``I``, and ``ǆ``, ``ǅ``, ``Ǆ`` are one name. The table here is Python's
per-character ``str.upper()`` where it gives one character, else the character
itself; characters outside the BMP (surrogate pairs on the wire) are never
changed, as the $UpCase table only covers single code units. $UpCase differs
with the Windows version that formatted the volume; older tables (and Samba's)
leave ``ı``, ``µ``, ``ſ`` and ``ǅ`` as they are (tests/test_name_folding.py).
``str.lower()`` is not such a fold: it turns a final ``Σ`` into ``ς`` and
``İ`` into two code points.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass


def _tables() -> tuple[str, str]:
    """(upcase, fold) for the BMP: the character each code point maps to, by index.

    A class of names equal under upcasing is represented by the lower-case of
    its upcased form when that lower-cases back into the same class (so ASCII
    folds as ``str.lower()`` does, and folded names written before, such as the
    stream sidecar files of ``streamstore``, keep their spelling), else by the
    upcased form itself (the Kelvin sign stays apart from ``k``).
    """
    up = []
    for cp in range(0x10000):
        c = chr(cp)
        u = c.upper()
        up.append(u if len(u) == 1 and not 0xD800 <= cp < 0xE000 else c)
    upcase = "".join(up)
    folded = []
    for u in up:
        low = u.lower()
        same_class = len(low) == 1 and ord(low) < 0x10000 and upcase[ord(low)] == u
        folded.append(low if same_class else u)
    return upcase, "".join(folded)


# Indexed by code point; str.translate leaves the characters past the end (outside
# the BMP) as they are. A str, not a dict: translate looks it up three times faster.
_UPCASE, _FOLD = _tables()


def upcase(name: str) -> str:
    """``name`` upcased as NTFS (and NTLM, RtlUpcaseUnicodeString) upcases it:
    character by character, never changing the length."""
    return name.translate(_UPCASE)


def fold(name: str) -> str:
    """The form two names are compared in when case is ignored: ``fold(a) ==
    fold(b)`` exactly when ``upcase(a) == upcase(b)``. Same length as ``name``,
    each character folded alone, so a position in one is a position in the other."""
    if name.isascii():
        return name.lower()  # the same as the table for ASCII, ten times faster
    return name.translate(_FOLD)


@dataclass(frozen=True)
class _Map:
    stamp: tuple[int, int, int]
    names: dict[str, str]


class CaseIndex:
    """Folded-name maps of the large directories a node looked up lately."""

    def __init__(
        self,
        *,
        min_entries: int = 512,
        max_names: int = 2_000_000,
        racy_ns: int = 2_000_000_000,
    ) -> None:
        self.min_entries = min_entries  # smaller directories are scanned: cheaper than a map
        self.max_names = max_names
        self.racy_ns = racy_ns
        self._maps: OrderedDict[str, _Map] = OrderedDict()
        self._names = 0

    def find(self, directory: str, name: str) -> str | None:
        """The entry of ``directory`` equal to ``name`` but for case, if any."""
        try:
            st = os.stat(directory)
        except OSError:
            return None
        stamp = (st.st_dev, st.st_ino, st.st_ctime_ns)
        cached = self._maps.get(directory)
        if cached is not None:
            if cached.stamp == stamp:
                self._maps.move_to_end(directory)
                return cached.names.get(fold(name))
            self._drop(directory)
        return self._scan(directory, name, stamp, time.time_ns() - st.st_ctime_ns)

    def _scan(self, directory: str, name: str, stamp: tuple[int, int, int], age: int) -> str | None:
        wanted = fold(name)
        names: dict[str, str] = {}
        found: str | None = None
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    folded = fold(entry.name)
                    names.setdefault(folded, entry.name)
                    if found is None and folded == wanted:
                        found = entry.name
        except OSError:
            return None
        if len(names) >= self.min_entries and age > self.racy_ns:
            self._keep(directory, _Map(stamp, names))
        return found

    def _keep(self, directory: str, new: _Map) -> None:
        self._maps[directory] = new
        self._names += len(new.names)
        while self._names > self.max_names and len(self._maps) > 1:
            self._drop(next(iter(self._maps)))

    def _drop(self, directory: str) -> None:
        old = self._maps.pop(directory, None)
        if old is not None:
            self._names -= len(old.names)
