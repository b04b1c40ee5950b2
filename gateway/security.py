"""The security descriptor a file shows when none was written (MS-DTYP 2.4.6).

Owner and group are the file's Unix ids in Samba's unix-mapping form
(S-1-22-1-uid, S-1-22-2-gid); the DACL gives the owner full control and
Everyone read and execute. Stored, per-file ACLs come with issue 6.
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .state import Open

OWNER_SECURITY_INFORMATION = 0x1
GROUP_SECURITY_INFORMATION = 0x2
DACL_SECURITY_INFORMATION = 0x4
SACL_SECURITY_INFORMATION = 0x8
SE_DACL_PRESENT = 0x0004
SE_SELF_RELATIVE = 0x8000
ACCESS_ALLOWED_ACE_TYPE = 0
FILE_ALL_ACCESS = 0x001F01FF
READ_EXECUTE = 0x001200A9
EVERYONE = "S-1-1-0"


def sid_bytes(sid: str) -> bytes:
    parts = sid.split("-")
    if parts[0] != "S" or len(parts) < 3:
        raise ValueError(f"bad SID {sid}")
    authority = int(parts[2])
    subs = [int(p) for p in parts[3:]]
    return (
        struct.pack("<BB", int(parts[1]), len(subs))
        + authority.to_bytes(6, "big")
        + struct.pack(f"<{len(subs)}I", *subs)
    )


def _ace(mask: int, sid: str, flags: int = 0) -> bytes:
    raw = sid_bytes(sid)
    return struct.pack("<BBHI", ACCESS_ALLOWED_ACE_TYPE, flags, 8 + len(raw), mask) + raw


def acl(aces: list[bytes]) -> bytes:
    body = b"".join(aces)
    return struct.pack("<BBHHH", 2, 0, 8 + len(body), len(aces), 0) + body


def descriptor(owner: str | None, group: str | None, dacl: bytes | None) -> bytes:
    """A self-relative security descriptor with the given parts."""
    control = SE_SELF_RELATIVE | (SE_DACL_PRESENT if dacl is not None else 0)
    parts = b""
    offsets = []
    for item in (sid_bytes(owner) if owner else None, sid_bytes(group) if group else None, dacl):
        if item is None:
            offsets.append(0)
        else:
            offsets.append(20 + len(parts))
            parts += item
    return struct.pack("<BBHIIII", 1, 0, control, offsets[0], offsets[1], 0, offsets[2]) + parts


def default_descriptor(uid: int, gid: int, is_dir: bool, additional: int) -> bytes:
    owner = f"S-1-22-1-{uid}" if additional & OWNER_SECURITY_INFORMATION else None
    group = f"S-1-22-2-{gid}" if additional & GROUP_SECURITY_INFORMATION else None
    dacl = None
    if additional & DACL_SECURITY_INFORMATION:
        inherit = 0x3 if is_dir else 0  # object + container inherit
        dacl = acl([_ace(FILE_ALL_ACCESS, f"S-1-22-1-{uid}", inherit),
                    _ace(READ_EXECUTE, EVERYONE, inherit)])  # fmt: skip
    return descriptor(owner, group, dacl)


def query_security(op: Open, additional: int) -> bytes:
    st = os.fstat(op.fd) if op.fd >= 0 else os.stat(op.host_path)
    return default_descriptor(st.st_uid, st.st_gid, op.is_dir, additional)
