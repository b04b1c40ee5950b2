"""What the wire says of a file and a volume, as the filesystem layer fills it in.

FILETIME counts 100 ns ticks since 1601-01-01. ``FileInfo`` and ``VolumeSize``
are plain data: the filesystem layer (``gateway.fs.vfs``) produces them, the
info-class encoders (``gateway.protocol.infoclass``) consume them, and neither
imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass

# FILETIME counts 100 ns ticks since 1601-01-01; this is 1970-01-01 in it.
FILETIME_EPOCH = 116444736000000000
# 0 means "leave alone" in SET_INFO, -1 "stop updating", -2 "resume updating".
_FT_KEEP_MIN = 0x8000000000000000


def to_filetime(t: float | int) -> int:
    """FILETIME of a Unix time: a float counts seconds, an int nanoseconds.

    ``to_filetime(time.time())`` and ``to_filetime(st.st_mtime_ns)`` both work;
    times before 1601 become 0.
    """
    if isinstance(t, float):
        ft = int(t * 10_000_000) + FILETIME_EPOCH
    else:
        ft = t // 100 + FILETIME_EPOCH
    return ft if ft > 0 else 0


def settable(ft: int) -> bool:
    """A FILETIME in SET_INFO that asks for a change (not 0, -1 or -2)."""
    return 0 < ft < _FT_KEEP_MIN


def from_filetime(ft: int) -> int:
    """Nanoseconds since the Unix epoch of a FILETIME (exact, unlike float seconds)."""
    return (ft - FILETIME_EPOCH) * 100


@dataclass(slots=True)
class FileInfo:
    """What SMB needs of a stat: sizes, FILETIMEs, DOS attributes, identity."""

    size: int
    allocation_size: int
    creation_time: int
    last_access_time: int
    last_write_time: int
    change_time: int
    attributes: int
    is_dir: bool
    inode: int
    nlink: int
    volume_id: int

    @property
    def file_key(self) -> str:
        """The cluster-wide identity: volume id and inode, never a path."""
        return f"{self.volume_id:x}:{self.inode:x}"


@dataclass(frozen=True, slots=True)
class VolumeSize:
    """statvfs in the terms of FileFsSizeInformation / FileFsFullSizeInformation."""

    total_units: int
    caller_available_units: int
    actual_available_units: int
    sectors_per_unit: int
    bytes_per_sector: int
