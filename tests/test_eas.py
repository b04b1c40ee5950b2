"""The EA codecs against smbprotocol's FILE_FULL_EA_INFORMATION, and their refusals."""

from __future__ import annotations

import struct

import pytest
from smbprotocol.file_info import FileFullEaInformation

from gateway.fs import eas
from gateway.fs.eas import Ea
from gateway.protocol.constants import NtStatusError, Status


def _status(fn: object, *args: object) -> int:
    with pytest.raises(NtStatusError) as e:
        fn(*args)  # type: ignore[operator]
    return e.value.status


def _smbprotocol_chain(pairs: list[tuple[bytes, bytes]]) -> bytes:
    out = b""
    for i, (name, value) in enumerate(pairs):
        entry = FileFullEaInformation()
        entry["ea_name"] = name
        entry["ea_value"] = value
        raw = entry.pack()
        if i != len(pairs) - 1:
            size = (len(raw) + 3) & ~3
            raw = struct.pack("<I", size) + raw[4:] + bytes(size - len(raw))
        out += raw
    return out


def test_parse_reads_what_smbprotocol_writes() -> None:
    chain = _smbprotocol_chain([(b"user.One", b"1"), (b"Two", b""), (b"THREE", b"x" * 300)])
    assert eas.parse_full(chain) == [
        Ea(b"USER.ONE", b"1"), Ea(b"TWO", b""), Ea(b"THREE", b"x" * 300)
    ]


def test_encode_is_what_smbprotocol_reads() -> None:
    data = eas.encode_full([Ea(b"ALPHA", b"first"), Ea(b"B", b"")])
    first = FileFullEaInformation()
    first.unpack(data)
    assert first["ea_name"].get_value() == b"ALPHA"
    assert first["ea_value"].get_value() == b"first"
    offset = first["next_entry_offset"].get_value()
    assert offset == 20  # 8 + "ALPHA\0" + "first", aligned to 4
    second = FileFullEaInformation()
    second.unpack(data[offset:])
    assert second["ea_name"].get_value() == b"B" and second["next_entry_offset"].get_value() == 0
    assert eas.ea_size([Ea(b"ALPHA", b"first"), Ea(b"B", b"")]) == 20 + 12


@pytest.mark.parametrize("name", [b"", b"a:b", b"a*", b"semi;", b"tab\t", b"caf\xe9"])
def test_bad_names_are_refused(name: bytes) -> None:
    chain = struct.pack("<IBBH", 0, 0, len(name), 1) + name + b"\0" + b"v"
    assert _status(eas.parse_full, chain) == Status.INVALID_EA_NAME


def test_inconsistent_lists_are_refused() -> None:
    good = struct.pack("<IBBH", 0, 0, 1, 1) + b"A\0v"
    for bad in (good[:7], good[:-1], good.replace(b"A\0", b"AB"),
                struct.pack("<I", 2) + good[4:] + good):  # fmt: skip
        assert _status(eas.parse_full, bad) == eas.STATUS_EA_LIST_INCONSISTENT


def test_merge_select_and_fit() -> None:
    now = eas.merged([Ea(b"A", b"1"), Ea(b"B", b"2")], [Ea(b"A", b""), Ea(b"C", b"3")])
    assert now == [Ea(b"B", b"2"), Ea(b"C", b"3")]
    assert eas.select(now, [b"C", b"Z"]) == [Ea(b"C", b"3"), Ea(b"Z", b"")]
    whole = eas.encode_full(now)
    assert eas.fit(now, len(whole)) == (Status.SUCCESS, whole)
    assert eas.fit(now, len(whole) - 1) == (Status.BUFFER_OVERFLOW, eas.encode_full(now[:1]))
    assert _status(eas.fit, now, 5) == Status.BUFFER_TOO_SMALL
    names = struct.pack("<IB", 8, 1) + b"c\0\0" + struct.pack("<IB", 0, 1) + b"z\0"
    assert eas.parse_get(names) == [b"C", b"Z"]
