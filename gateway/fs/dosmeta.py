"""The ``user.smbgw.dos`` xattr: DOS attributes and the times POSIX cannot keep.

Sans-IO: bytes in, a record out, and the rules that decide which time a stat
shows. ``gateway.fs.vfs`` reads and writes the xattr; every node reads the same
bytes, so every node answers the same times.

Layout (little-endian). Version 1, 14 bytes, is what older nodes wrote and what
is still written while no time needs keeping::

    u8 version=1, u8 flags, u32 attributes, u64 creation FILETIME

Version 2, 74 bytes, appends three kept times, each a FILETIME and the inode
time that makes it valid, as signed seconds and nanoseconds since 1970 (inode
times run past what 64-bit nanoseconds hold: ext4 goes to 2446)::

    u64 change FILETIME,  i64 s + u32 ns: ctime guard
    u64 write FILETIME,   i64 s + u32 ns: the st_mtime it stands for
    u64 access FILETIME,  i64 s + u32 ns: the st_atime it stands for

Why each is valid only so long:

- ChangeTime cannot be set on POSIX (the kernel owns ctime). A ChangeTime set
  by SET_INFO is kept with a guard: a time no earlier than the inode's ctime
  right after the xattr was written, and not much later (the writer checks
  both). A later change to the inode (a write, a rename, attributes) moves
  ctime past the guard, and the inode's own ctime shows again, as Windows
  would update ChangeTime then.
- A write or access time the filesystem could not hold (out of its range, or
  coarser than 100 ns) is kept with the value the inode got instead; once the
  inode's time moves, the kept one is stale and the inode's shows.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# 1601-01-01 to 1970-01-01 in 100 ns ticks (gateway.fs.vfs.FILETIME_EPOCH).
_EPOCH = 116444736000000000

HAS_ATTRS = 0x01
HAS_CRTIME = 0x02
HAS_CHANGE = 0x04
HAS_WRITE = 0x08
HAS_ACCESS = 0x10
# FSCTL_SET_SPARSE (gateway.smb.handlers.sparse): apart from the attributes, so that
# FileBasicInformation cannot set or clear it. A version-1 flag: no time needed.
IS_SPARSE = 0x20
_KEPT_TIMES = HAS_CHANGE | HAS_WRITE | HAS_ACCESS

_NS = 1_000_000_000
_V1 = struct.Struct("<BBIQ")
_V2 = struct.Struct("<BBIQQqIQqIQqI")


@dataclass(slots=True)
class DosRecord:
    """One file's ``user.smbgw.dos``; a time field means something only with its flag."""

    flags: int = 0
    attributes: int = 0
    creation: int = 0
    change: int = 0
    change_guard_ns: int = 0
    write: int = 0
    write_mtime_ns: int = 0
    access: int = 0
    access_atime_ns: int = 0


def decode(raw: bytes) -> DosRecord | None:
    """The record in an xattr value, or None for an unknown version or size."""
    if len(raw) == _V1.size and raw[0] == 1:
        _v, flags, attrs, crtime = _V1.unpack(raw)
        return DosRecord(flags & (HAS_ATTRS | HAS_CRTIME | IS_SPARSE), attrs, crtime)
    if len(raw) == _V2.size and raw[0] == 2:
        (_v, flags, attrs, crtime, change, gs, gn, write, ms, mn, access, as_, an) = _V2.unpack(
            raw
        )
        return DosRecord(
            flags, attrs, crtime, change, gs * _NS + gn, write, ms * _NS + mn, access,
            as_ * _NS + an,
        )  # fmt: skip
    return None


def encode(rec: DosRecord) -> bytes:
    """Version 1 while no time is kept, so nodes that know only it still read it."""
    if not rec.flags & _KEPT_TIMES:
        return _V1.pack(1, rec.flags, rec.attributes, rec.creation)
    return _V2.pack(
        2, rec.flags, rec.attributes, rec.creation,
        rec.change, *divmod(rec.change_guard_ns, _NS),
        rec.write, *divmod(rec.write_mtime_ns, _NS),
        rec.access, *divmod(rec.access_atime_ns, _NS),
    )  # fmt: skip


def ns_to_filetime(ns: int) -> int:
    """FILETIME of nanoseconds since 1970; before 1601 is 0 (FILETIME is unsigned)."""
    ft = ns // 100 + _EPOCH
    return ft if ft > 0 else 0


def effective_times(
    rec: DosRecord | None, atime_ns: int, mtime_ns: int, ctime_ns: int
) -> tuple[int, int, int]:
    """(LastAccessTime, LastWriteTime, ChangeTime) of an inode and its record."""
    access = ns_to_filetime(atime_ns)
    write = ns_to_filetime(mtime_ns)
    change = ns_to_filetime(ctime_ns)
    if rec is not None and rec.flags & _KEPT_TIMES:
        if rec.flags & HAS_ACCESS and rec.access_atime_ns == atime_ns:
            access = rec.access
        if rec.flags & HAS_WRITE and rec.write_mtime_ns == mtime_ns:
            write = rec.write
        if rec.flags & HAS_CHANGE and ctime_ns <= rec.change_guard_ns:
            change = rec.change
    return access, write, change
