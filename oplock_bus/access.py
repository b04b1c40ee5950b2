"""Share-mode checks and the access masks that make an open a "stat open"."""

from __future__ import annotations

from collections.abc import Iterable

from .model import OpenEntry

FILE_READ_DATA = 0x00000001
FILE_WRITE_DATA = 0x00000002
FILE_APPEND_DATA = 0x00000004
FILE_EXECUTE = 0x00000020
FILE_READ_ATTRIBUTES = 0x00000080
FILE_WRITE_ATTRIBUTES = 0x00000100
DELETE = 0x00010000
READ_CONTROL = 0x00020000
SYNCHRONIZE = 0x00100000

FILE_SHARE_READ = 0x1
FILE_SHARE_WRITE = 0x2
FILE_SHARE_DELETE = 0x4

# Only opens with one of these take part in share-mode checks (MS-FSA 2.1.5.1.2.2).
DATA_ACCESS = FILE_READ_DATA | FILE_WRITE_DATA | FILE_APPEND_DATA | FILE_EXECUTE | DELETE

_OPLOCK_STAT_BITS = FILE_READ_ATTRIBUTES | FILE_WRITE_ATTRIBUTES | SYNCHRONIZE
_LEASE_STAT_BITS = _OPLOCK_STAT_BITS | READ_CONTROL


def is_oplock_stat_open(access: int) -> bool:
    """Breaks nothing, takes part in no share check, gets no oplock.

    MS-FSA 2.1.4.12 (OPEN) and Samba's is_oplock_stat_open; smbtorture
    smb2.oplock.batch8/statopen1. READ_CONTROL is *not* in this set: such an
    open still breaks oplocks.
    """
    return bool(access & _OPLOCK_STAT_BITS) and not access & ~_OPLOCK_STAT_BITS


def is_lease_stat_open(access: int) -> bool:
    """Does not break leases (but may break oplocks): smbtorture smb2.lease.statopen4."""
    return bool(access & _LEASE_STAT_BITS) and not access & ~_LEASE_STAT_BITS


def _pair_conflicts(access: int, share: int, other_access: int, other_share: int) -> bool:
    # Each side needs the other's permission for every data access it holds.
    for access_bits, share_bit in (
        (FILE_WRITE_DATA | FILE_APPEND_DATA, FILE_SHARE_WRITE),
        (FILE_READ_DATA | FILE_EXECUTE, FILE_SHARE_READ),
        (DELETE, FILE_SHARE_DELETE),
    ):
        if access & access_bits and not other_share & share_bit:
            return True
        if other_access & access_bits and not share & share_bit:
            return True
    return False


def share_conflict(access: int, share: int, existing: Iterable[OpenEntry]) -> bool:
    """MS-FSA 2.1.5.1.2.2: would a new open with ``access``/``share`` be refused?"""
    if not access & DATA_ACCESS:
        return False
    for other in existing:
        if not other.access & DATA_ACCESS:
            continue
        if _pair_conflicts(access, share, other.access, other.share):
            return True
    return False
