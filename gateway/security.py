"""The security descriptor a file shows when none was written (MS-DTYP 2.4.6).

Owner and group are the file's Unix ids in Samba's unix-mapping form
(S-1-22-1-uid, S-1-22-2-gid). The DACL gives the owner and SYSTEM full control
and Everyone read and execute; a directory's ACEs are inherited by what is
created in it (object and container inherit). There is no SACL. The descriptor
is self-relative and holds only the parts the SecurityInformation bits ask for.
Stored, per-file descriptors come with issue 6.
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING

from .protocol.constants import FILE_ALL_ACCESS, FILE_GENERIC_EXECUTE, FILE_GENERIC_READ
from .vfs import FsError

if TYPE_CHECKING:
    from .state import Open

OWNER_SECURITY_INFORMATION = 0x00000001
GROUP_SECURITY_INFORMATION = 0x00000002
DACL_SECURITY_INFORMATION = 0x00000004
SACL_SECURITY_INFORMATION = 0x00000008

SE_DACL_PRESENT = 0x0004
SE_SACL_PRESENT = 0x0010
SE_SELF_RELATIVE = 0x8000
ACCESS_ALLOWED_ACE_TYPE = 0x00
OBJECT_INHERIT_ACE = 0x01
CONTAINER_INHERIT_ACE = 0x02
ACL_REVISION = 2
SD_REVISION = 1
READ_EXECUTE = FILE_GENERIC_READ | FILE_GENERIC_EXECUTE  # 0x001200A9

EVERYONE = "S-1-1-0"
LOCAL_SYSTEM = "S-1-5-18"
UNIX_USER = "S-1-22-1-"  # + uid
UNIX_GROUP = "S-1-22-2-"  # + gid

_SD_HEADER = struct.Struct("<BBHIIII")  # 20: revision, sbz1, control, 4 offsets
_ACL_HEADER = struct.Struct("<BBHHH")  # 8: revision, sbz1, size, count, sbz2
_ACE_HEADER = struct.Struct("<BBHI")  # 8: type, flags, size, mask


def sid_bytes(sid: str) -> bytes:
    """The binary SID (MS-DTYP 2.4.2.2) of its string form ``S-1-5-18``."""
    parts = sid.split("-")
    if len(parts) < 3 or parts[0] != "S" or len(parts) - 3 > 15:
        raise ValueError(f"bad SID {sid!r}")
    try:
        revision, authority = int(parts[1]), int(parts[2])
        subs = [int(p) for p in parts[3:]]
    except ValueError:
        raise ValueError(f"bad SID {sid!r}") from None
    if revision != 1 or not 0 <= authority < 1 << 48 or any(not 0 <= s < 1 << 32 for s in subs):
        raise ValueError(f"bad SID {sid!r}")
    return (
        struct.pack("<BB", revision, len(subs))
        + authority.to_bytes(6, "big")
        + struct.pack(f"<{len(subs)}I", *subs)
    )


def ace(mask: int, sid: str, flags: int = 0) -> bytes:
    """An ACCESS_ALLOWED_ACE (MS-DTYP 2.4.4.2)."""
    raw = sid_bytes(sid)
    return _ACE_HEADER.pack(ACCESS_ALLOWED_ACE_TYPE, flags, _ACE_HEADER.size + len(raw), mask) + raw


def acl(aces: list[bytes]) -> bytes:
    """An ACL (MS-DTYP 2.4.5) of encoded ACEs."""
    body = b"".join(aces)
    return _ACL_HEADER.pack(ACL_REVISION, 0, _ACL_HEADER.size + len(body), len(aces), 0) + body


def descriptor(
    owner: str | None,
    group: str | None,
    dacl: bytes | None,
    sacl: bytes | None = None,
) -> bytes:
    """A self-relative security descriptor of the parts given (None: absent)."""
    control = SE_SELF_RELATIVE
    if dacl is not None:
        control |= SE_DACL_PRESENT
    if sacl is not None:
        control |= SE_SACL_PRESENT
    # Owner, group, SACL, DACL: Samba's NDR order (any order is valid).
    parts = bytearray()
    offsets: dict[str, int] = {}
    for key, item in (
        ("owner", sid_bytes(owner) if owner else None),
        ("group", sid_bytes(group) if group else None),
        ("sacl", sacl),
        ("dacl", dacl),
    ):
        if item is not None:
            offsets[key] = _SD_HEADER.size + len(parts)
            parts += item
    header = _SD_HEADER.pack(
        SD_REVISION, 0, control, offsets.get("owner", 0), offsets.get("group", 0),
        offsets.get("sacl", 0), offsets.get("dacl", 0),
    )  # fmt: skip
    return header + bytes(parts)


def default_dacl(uid: int, is_dir: bool) -> bytes:
    """Owner and SYSTEM full control, Everyone read and execute."""
    flags = OBJECT_INHERIT_ACE | CONTAINER_INHERIT_ACE if is_dir else 0
    return acl([
        ace(FILE_ALL_ACCESS, f"{UNIX_USER}{uid}", flags),
        ace(FILE_ALL_ACCESS, LOCAL_SYSTEM, flags),
        ace(READ_EXECUTE, EVERYONE, flags),
    ])  # fmt: skip


def default_descriptor(uid: int, gid: int, is_dir: bool, additional: int) -> bytes:
    """The default descriptor, with the parts ``additional`` (SecurityInformation) asks for.

    A SACL asked for is absent: there is none.
    """
    owner = f"{UNIX_USER}{uid}" if additional & OWNER_SECURITY_INFORMATION else None
    group = f"{UNIX_GROUP}{gid}" if additional & GROUP_SECURITY_INFORMATION else None
    dacl = default_dacl(uid, is_dir) if additional & DACL_SECURITY_INFORMATION else None
    return descriptor(owner, group, dacl)


def query_security(op: Open, additional: int) -> bytes:
    """The descriptor of an open file for QUERY_INFO (SMB2_0_INFO_SECURITY)."""
    try:
        st = os.fstat(op.fd) if op.fd >= 0 else os.stat(op.host_path)
    except OSError as e:
        raise FsError.from_oserror(e) from None
    return default_descriptor(st.st_uid, st.st_gid, op.is_dir, additional)
