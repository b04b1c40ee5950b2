"""Extended attributes (EAs) of files and directories, kept on the volume.

Windows EAs are name/value pairs a client sets with the ExtA create context
or SET_INFO FileFullEaInformation and reads with QUERY_INFO of the same class
(MS-FSCC 2.4.15). They live in one ``user.smbgw.ea`` xattr, so every node reads
the same ones: a version byte 1, then per EA ``u8 flags, u8 name length, u16
value length, name (ASCII), value``. No EAs: no xattr.

Names are ASCII, at most 255 bytes, without control characters or
``"*+,/:;<=>?[\\]|`` (else STATUS_INVALID_EA_NAME), compared without case and
kept in upper case, as NTFS keeps them. Setting an EA with an empty value
removes it. EaSize (FileEaInformation, FileAllInformation) is the size of the
EAs in the FILE_FULL_EA_INFORMATION form.

The wire codecs here are sans-IO; ``read``/``write`` are the volume side.
"""

from __future__ import annotations

import errno
import os
import re
import struct
from dataclasses import dataclass

from ..protocol.constants import NtStatusError, Status
from .vfs import setxattr_lending

XATTR = "user.smbgw.ea"
_VERSION = b"\x01"
_STORED = struct.Struct("<BBH")  # flags, name length, value length
_FULL = struct.Struct("<IBBH")  # NextEntryOffset, Flags, EaNameLength, EaValueLength
_GET = struct.Struct("<IB")  # NextEntryOffset, EaNameLength
_BAD_NAME = re.compile(rb'[\x00-\x1f"*+,/:;<=>?\[\\\]|\x7f-\xff]')
FILE_NEED_EA = 0x80
_MAX_TOTAL = 65536 - 5
STATUS_EA_LIST_INCONSISTENT = 0x80000014


@dataclass(frozen=True, slots=True)
class Ea:
    name: bytes  # upper-case ASCII
    value: bytes
    flags: int = 0


def _check_name(name: bytes) -> bytes:
    if not name or _BAD_NAME.search(name):
        raise NtStatusError(Status.INVALID_EA_NAME, f"bad EA name {name!r}")
    return name.upper()


def _entry_size(name_len: int, value_len: int) -> int:
    return (_FULL.size + name_len + 1 + value_len + 3) & ~3


# -- wire (sans-IO) ------------------------------------------------------------------


def parse_full(buf: bytes) -> list[Ea]:
    """A FILE_FULL_EA_INFORMATION chain (SET_INFO, the ExtA create context)."""
    out: list[Ea] = []
    pos = 0
    while True:
        if pos + _FULL.size > len(buf):
            raise NtStatusError(STATUS_EA_LIST_INCONSISTENT, "truncated EA entry")
        nxt, flags, name_len, value_len = _FULL.unpack_from(buf, pos)
        start = pos + _FULL.size
        end = start + name_len + 1 + value_len
        if end > len(buf) or buf[start + name_len] != 0 or (nxt and (nxt % 4 or pos + nxt < end)):
            raise NtStatusError(STATUS_EA_LIST_INCONSISTENT, "bad EA entry")
        name = _check_name(bytes(buf[start : start + name_len]))
        out.append(Ea(name, bytes(buf[start + name_len + 1 : end]), flags & FILE_NEED_EA))
        if not nxt:
            return out
        pos += nxt


def parse_get(buf: bytes) -> list[bytes]:
    """The names of a FILE_GET_EA_INFORMATION chain (QUERY_INFO's input buffer)."""
    names: list[bytes] = []
    pos = 0
    while pos < len(buf):
        if pos + _GET.size > len(buf):
            raise NtStatusError(STATUS_EA_LIST_INCONSISTENT, "truncated EA name")
        nxt, name_len = _GET.unpack_from(buf, pos)
        start = pos + _GET.size
        if start + name_len > len(buf) or (nxt and nxt % 4):
            raise NtStatusError(STATUS_EA_LIST_INCONSISTENT, "bad EA name entry")
        names.append(_check_name(bytes(buf[start : start + name_len])))
        if not nxt:
            break
        pos += nxt
    return names


def encode_full(eas: list[Ea]) -> bytes:
    """FILE_FULL_EA_INFORMATION: entries 4-byte aligned, the last not padded."""
    out = bytearray()
    for i, ea in enumerate(eas):
        raw = _FULL.pack(0, ea.flags, len(ea.name), len(ea.value)) + ea.name + b"\0" + ea.value
        if i != len(eas) - 1:
            size = _entry_size(len(ea.name), len(ea.value))
            raw = struct.pack("<I", size) + raw[4:] + bytes(size - len(raw))
        out += raw
    return bytes(out)


def ea_size(eas: list[Ea]) -> int:
    """EaSize of FileEaInformation: the EAs' size in the FILE_FULL_EA_INFORMATION form."""
    return sum(_entry_size(len(ea.name), len(ea.value)) for ea in eas)


def merged(current: list[Ea], changes: list[Ea]) -> list[Ea]:
    """``current`` with ``changes`` applied: a name set again is replaced, an empty
    value removes it."""
    by_name = {ea.name: ea for ea in current}
    for ea in changes:
        if ea.value:
            by_name[ea.name] = ea
        else:
            by_name.pop(ea.name, None)
    return list(by_name.values())


def select(eas: list[Ea], names: list[bytes]) -> list[Ea]:
    """The EAs asked for by name, in the order asked; a missing one comes back with
    an empty value (as Windows answers)."""
    by_name = {ea.name: ea for ea in eas}
    return [by_name.get(name, Ea(name, b"")) for name in names]


def fit(eas: list[Ea], out_len: int) -> tuple[int, bytes]:
    """As many whole EAs as ``out_len`` holds: all (SUCCESS), some (BUFFER_OVERFLOW),
    or none (BUFFER_TOO_SMALL)."""
    for count in range(len(eas), 0, -1):
        data = encode_full(eas[:count])
        if len(data) <= out_len:
            return (Status.SUCCESS if count == len(eas) else Status.BUFFER_OVERFLOW), data
    raise NtStatusError(Status.BUFFER_TOO_SMALL)


def _decode_stored(raw: bytes) -> list[Ea]:
    if raw[:1] != _VERSION:
        return []
    out: list[Ea] = []
    pos = 1
    while pos + _STORED.size <= len(raw):
        flags, name_len, value_len = _STORED.unpack_from(raw, pos)
        pos += _STORED.size
        name, value = raw[pos : pos + name_len], raw[pos + name_len : pos + name_len + value_len]
        pos += name_len + value_len
        out.append(Ea(name, value, flags))
    return out


def _encode_stored(eas: list[Ea]) -> bytes:
    return _VERSION + b"".join(
        _STORED.pack(ea.flags, len(ea.name), len(ea.value)) + ea.name + ea.value for ea in eas
    )


# -- the volume ------------------------------------------------------------------------


def _target(target: str | int) -> str | int:
    # O_PATH descriptors refuse f*xattr; their /proc link does not.
    return f"/proc/self/fd/{target}" if isinstance(target, int) else target


def read(target: str | int) -> list[Ea]:
    """The EAs of a path or descriptor; none where there is no xattr (or no xattrs)."""
    try:
        raw = os.getxattr(_target(target), XATTR)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return []
        raise
    return _decode_stored(raw)


def write(target: str | int, eas: list[Ea]) -> None:
    """Store ``eas`` (none: remove the xattr). More than Windows holds (64 KiB - 5,
    MS-FSA 2.1.5.15.5) or the volume takes is EA_TOO_LARGE; a volume without
    xattrs is EAS_NOT_SUPPORTED."""
    if ea_size(eas) > _MAX_TOTAL:
        raise NtStatusError(Status.EA_TOO_LARGE)
    path = _target(target)
    try:
        if eas:
            setxattr_lending(path, XATTR, _encode_stored(eas))
        else:
            try:
                os.removexattr(path, XATTR)
            except OSError as e:
                if e.errno != errno.ENODATA:
                    raise
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.E2BIG):
            raise NtStatusError(Status.EA_TOO_LARGE) from None
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise NtStatusError(Status.EAS_NOT_SUPPORTED) from None
        raise
