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
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass


def fold(name: str) -> str:
    """The form two names are compared in when case is ignored."""
    return name.lower()


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
