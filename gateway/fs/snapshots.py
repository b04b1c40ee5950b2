"""Previous versions of a share: a folder of ``@GMT-YYYY.MM.DD-HH.MM.SS`` snapshots.

A share with ``snapshots = "FOLDER"`` keeps each snapshot as a full copy of its
tree (a btrfs/ZFS/LVM snapshot mounted there, or a plain copy) in a subfolder
of FOLDER named by its UTC time, as Samba's vfs_shadow_copy2 reads them with
``shadow:snapdir`` and ``shadow:format = @GMT-%Y.%m.%d-%H.%M.%S``.

Clients reach them in two ways:

* FSCTL_SRV_ENUMERATE_SNAPSHOTS (MS-SMB2 2.2.32.2, 3.3.5.15.1) lists the
  tokens, newest first (``snapshot_array``);
* a CREATE with an SMB2_CREATE_TIMEWARP_TOKEN context (MS-SMB2 2.2.13.2.7), a
  FILETIME, or with an ``@GMT-...`` component in its path (the form the
  SMB1 era and ``\\\\server\\share\\@GMT-...\\file`` links use; ``split_token``),
  opens the name under that snapshot (``Snapshots.version``).

A snapshot is served read only, whatever the folder's permissions. Its
files are other files than the live ones: the snapshot's tree gets a volume
id of its own (``snapshot_volume_id``), so its opens meet the live file's
share modes and oplocks on the bus never, even where the snapshot keeps the
live inode numbers (btrfs, ZFS).
"""

from __future__ import annotations

import calendar
import os
import re
import struct
import time
from collections.abc import Iterable
from typing import NamedTuple

from ..protocol.constants import NtStatusError, Status
from .vfs import ShareFS

TOKEN_FORMAT = "@GMT-%Y.%m.%d-%H.%M.%S"
TOKEN_LENGTH = 24
_TOKEN = re.compile(r"@GMT-(\d{4})\.(\d{2})\.(\d{2})-(\d{2})\.(\d{2})\.(\d{2})")
_EPOCH_AS_FILETIME = 116_444_736_000_000_000
_TICKS = 10_000_000  # FILETIME counts 100 ns
_COUNTS = struct.Struct("<III")  # NumberOfSnapShots, NumberOfSnapShotsReturned, SnapShotArraySize


def parse_token(name: str) -> int | None:
    """The FILETIME an ``@GMT-...`` name stands for; None if it is no such name."""
    m = _TOKEN.fullmatch(name)
    if m is None:
        return None
    fields = tuple(int(g) for g in m.groups())
    try:
        # strptime checks the calendar (no 2024.02.30, no hour 24).
        time.strptime(name, TOKEN_FORMAT)
    except ValueError:
        return None
    return calendar.timegm(fields) * _TICKS + _EPOCH_AS_FILETIME


def token_of(filetime: int) -> str | None:
    """The ``@GMT-...`` name of a FILETIME (to the second, as the tokens are);
    None for a time no token can name."""
    seconds = (filetime - _EPOCH_AS_FILETIME) // _TICKS
    try:
        token = time.strftime(TOKEN_FORMAT, time.gmtime(seconds))
    except (OverflowError, ValueError, OSError):
        return None
    return token if len(token) == TOKEN_LENGTH else None


def split_token(smb_name: str) -> tuple[str, str | None]:
    """``smb_name`` without its first ``@GMT-...`` component, and that token."""
    parts = smb_name.split("\\")
    for i, part in enumerate(parts):
        if parse_token(part) is not None:
            return "\\".join(parts[:i] + parts[i + 1 :]), part
    return smb_name, None


def snapshot_volume_id(volume_id: int, token: str) -> int:
    """The volume id of one snapshot's tree: the live one mixed with the
    snapshot's time, the same on every node."""
    stamp = parse_token(token) or 0
    return (volume_id ^ (stamp * 0x9E3779B97F4A7C15)) & 0xFFFFFFFFFFFFFFFF or 1


def snapshot_array(tokens: list[str], max_out: int) -> bytes:
    """SRV_SNAPSHOT_ARRAY (MS-SMB2 2.2.32.2) for ``tokens``, newest first.

    When the array does not fit in ``max_out``, only the counts go back, with
    the size needed (3.3.5.15.1), so the client asks again with room enough.
    """
    if max_out < 16:
        raise NtStatusError(Status.INVALID_PARAMETER, "MaxOutputResponse below 16")
    if not tokens:
        return _COUNTS.pack(0, 0, 2) + bytes(2)  # an empty multi-string
    names = "".join(t + "\0" for t in tokens) + "\0"
    array = names.encode("utf-16-le")
    if _COUNTS.size + len(array) > max_out:
        return _COUNTS.pack(len(tokens), 0, len(array)) + bytes(4)
    return _COUNTS.pack(len(tokens), len(tokens), len(array)) + array


def newest_first(names: Iterable[str]) -> list[str]:
    """The snapshot tokens among ``names``, newest first."""
    found = [(stamp, n) for n in names if (stamp := parse_token(n)) is not None]
    return [n for _, n in sorted(found, reverse=True)]


class Version(NamedTuple):
    """One snapshot: its token and its tree."""

    token: str
    fs: ShareFS


class Snapshots:
    """The snapshot folder of one share, read at each request: snapshots
    come and go without the node being told."""

    def __init__(self, live: ShareFS, folder: str) -> None:
        self.live = live
        self.folder = os.path.realpath(os.path.join(live.root, folder))
        self._trees: dict[str, tuple[float, Version]] = {}

    def tokens(self) -> list[str]:
        """Every snapshot there now, newest first."""
        try:
            with os.scandir(self.folder) as it:
                names = [e.name for e in it if e.is_dir()]
        except OSError:
            return []  # no folder yet: no snapshot yet
        return newest_first(names)

    def version(self, token: str) -> Version | None:
        """The share as it was at ``token`` (a tree rooted in its snapshot),
        None if no snapshot has that time."""
        root = os.path.join(self.folder, token)
        try:
            mtime = os.stat(root).st_mtime
        except OSError:
            self._trees.pop(token, None)
            return None
        known = self._trees.get(token)
        if known is not None and known[0] == mtime:
            return known[1]
        try:
            tree = ShareFS(root, volume_id=snapshot_volume_id(self.live.volume_id, token))
        except OSError:
            return None
        found = self._trees[token] = (mtime, Version(token, tree))
        return found[1]

    def hidden_names(self, directory: str) -> set[str]:
        """What a listing of ``directory`` leaves out: the folder itself, and
        the ``..`` of a snapshot's root, which would lead into the folder
        (smbd's root of a snapshot has none either)."""
        parent, name = os.path.split(self.folder)
        hidden = {name} if parent == directory else set()
        if os.path.dirname(directory) == self.folder:
            hidden.add("..")
        return hidden


_BY_SHARE: dict[tuple[str, str], Snapshots] = {}


def of_share(live: ShareFS, folder: str) -> Snapshots:
    """The one ``Snapshots`` of a share's tree and folder."""
    key = (live.root, folder)
    found = _BY_SHARE.get(key)
    if found is None or found.live is not live:
        found = _BY_SHARE[key] = Snapshots(live, folder)
    return found
