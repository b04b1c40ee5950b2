"""QUERY_INFO and SET_INFO sent by smbprotocol, for tests that need raw info classes.

smbprotocol's high-level API only sets and reads what Python's os module knows;
these helpers send its SMB2QueryInfoRequest / SMB2SetInfoRequest with any class,
buffer size and time value, and return the status with the bytes.
"""

from __future__ import annotations

import struct

from smbprotocol.exceptions import SMBResponseException
from smbprotocol.open import Open, SMB2QueryInfoRequest, SMB2QueryInfoResponse, SMB2SetInfoRequest

INFO_FILE = 1
INFO_FILESYSTEM = 2
INFO_SECURITY = 3
FILE_BASIC = 4
FILE_INTERNAL = 6
FILE_EA = 7
FILE_FULL_EA = 15
FILE_ALL = 18
FILE_NETWORK_OPEN = 34
FILE_NORMALIZED_NAME = 48
FILE_ID_INFORMATION = 59
FS_VOLUME = 1
STATUS_SUCCESS = 0
STATUS_BUFFER_OVERFLOW = 0x80000005
STATUS_INFO_LENGTH_MISMATCH = 0xC0000004
STATUS_NOT_SUPPORTED = 0xC00000BB
FREEZE = 0xFFFFFFFFFFFFFFFF  # -1
THAW = 0xFFFFFFFFFFFFFFFE  # -2
BASIC = struct.Struct("<QQQQI4x")  # creation, access, write, change, attributes
FILETIME_EPOCH = 116444736000000000


def filetime(unix_seconds: int) -> int:
    return unix_seconds * 10_000_000 + FILETIME_EPOCH


def query(
    handle: Open,
    info_class: int,
    out_len: int = 4096,
    info_type: int = INFO_FILE,
    additional: int = 0,
) -> tuple[int, bytes]:
    """(status, data) of one QUERY_INFO; a failure's data is empty.
    ``additional``: AdditionalInformation (which parts of a security descriptor)."""
    req = SMB2QueryInfoRequest()
    req["info_type"] = info_type
    req["file_info_class"].enum_strict = False  # smbprotocol lacks some (FileIdInformation)
    req["file_info_class"] = info_class
    req["output_buffer_length"] = out_len
    req["additional_information"] = additional
    req["file_id"] = handle.file_id
    tree = handle.tree_connect
    conn = tree.session.connection
    request = conn.send(req, tree.session.session_id, tree.tree_connect_id)
    try:
        response = conn.receive(request)
    except SMBResponseException as e:
        if e.status != STATUS_BUFFER_OVERFLOW:
            return e.status, b""
        response = request.response
    resp = SMB2QueryInfoResponse()
    resp.unpack(response["data"].get_value())
    return int(response["status"].get_value()), bytes(resp["buffer"].get_value())


def query_ok(handle: Open, info_class: int, out_len: int = 4096) -> bytes:
    status, data = query(handle, info_class, out_len)
    assert status == STATUS_SUCCESS, hex(status)
    return data


def set_info(
    handle: Open, info_class: int, buf: bytes, info_type: int = INFO_FILE, additional: int = 0
) -> None:
    req = SMB2SetInfoRequest()
    req["info_type"] = info_type
    req["file_info_class"] = info_class
    req["additional_information"] = additional
    req["file_id"] = handle.file_id
    req["buffer"] = buf
    tree = handle.tree_connect
    conn = tree.session.connection
    conn.receive(conn.send(req, tree.session.session_id, tree.tree_connect_id))


def set_basic(
    handle: Open, creation: int = 0, access: int = 0, write: int = 0, change: int = 0,
    attributes: int = 0,
) -> None:  # fmt: skip
    set_info(handle, FILE_BASIC, BASIC.pack(creation, access, write, change, attributes))


def basic(handle: Open) -> tuple[int, int, int, int, int]:
    """(creation, access, write, change, attributes) of FileBasicInformation."""
    values: tuple[int, int, int, int, int] = BASIC.unpack(query_ok(handle, FILE_BASIC))
    return values
