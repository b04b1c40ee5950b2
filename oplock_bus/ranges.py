"""Byte-range arithmetic and conflict rules (MS-FSA 2.1.4.10, 2.1.5.8; Samba brlock.c)."""

from __future__ import annotations

from .api import OpenId
from .model import ByteRangeLock, RangeSpec

MAX_OFFSET = 0xFFFFFFFFFFFFFFFF


def range_valid(offset: int, length: int) -> bool:
    """MS-FSA 2.1.5.8: a non-empty range may not wrap past 2**64 - 1."""
    if offset < 0 or length < 0 or offset > MAX_OFFSET or length > MAX_OFFSET:
        return False
    return length == 0 or offset + length - 1 <= MAX_OFFSET


def _last(offset: int, length: int) -> int:
    # A zero-length range at offset N covers the "gap" before byte N: its
    # last byte is N - 1, so it overlaps ranges that straddle N.
    if not range_valid(offset, length):
        return MAX_OFFSET
    return offset + length - 1


def overlap(offset1: int, length1: int, offset2: int, length2: int) -> bool:
    """MS-FSA 2.1.4.10: the empty range at offset 0 overlaps nothing."""
    if (offset1 == 0 and length1 == 0) or (offset2 == 0 and length2 == 0):
        return False
    return not (offset1 > _last(offset2, length2) or offset2 > _last(offset1, length1))


def lock_conflicts(held: ByteRangeLock, open_id: OpenId, new: RangeSpec) -> bool:
    """Can ``new`` (asked by ``open_id``) not be granted while ``held`` exists?

    Shared locks never conflict. A shared lock may stack on the same open's
    exclusive lock; anything else overlapping conflicts, the same open's
    locks included (smbtorture smb2.lock.errorcode: a second exclusive lock
    on the same handle is refused).
    """
    if not held.exclusive and not new.exclusive:
        return False
    if held.exclusive and not new.exclusive and held.open_id == open_id:
        return False
    return overlap(held.offset, held.length, new.offset, new.length)


def spec_conflicts(
    earlier: RangeSpec, earlier_open: OpenId, open_id: OpenId, new: RangeSpec
) -> bool:
    """Lock-vs-lock conflict between two requests (used for queued waiters)."""
    held = ByteRangeLock(earlier_open, earlier.offset, earlier.length, earlier.exclusive)
    return lock_conflicts(held, open_id, new)


def io_conflicts(
    held: ByteRangeLock, open_id: OpenId, offset: int, length: int, write: bool
) -> bool:
    """Does a READ/WRITE of the range by ``open_id`` hit ``held``?

    An open's own exclusive lock lets it read and write; its own shared lock
    still blocks its writes (Samba brl_conflict_other; smbtorture
    smb2.lock.rw-shared / rw-exclusive).
    """
    if not held.exclusive and not write:
        return False
    if not overlap(held.offset, held.length, offset, length):
        return False
    if held.open_id != open_id:
        return True
    return not held.exclusive and write
