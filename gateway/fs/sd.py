"""Security descriptors on the wire and on disk (MS-DTYP 2.4.2-2.4.6): a sans-IO codec.

``parse`` reads a SECURITY_DESCRIPTOR in self-relative form (offsets from its
start; the only form a wire or an xattr can carry) and ``SecurityDescriptor.encode``
writes one back. SIDs are kept as their string form (``S-1-5-18``), which is what
the rest of the gateway compares. ACEs of every type round-trip: the types whose
layout MS-DTYP defines (plain, object, callback, callback-object, mandatory label,
resource attribute, scoped policy) are decoded into mask, SID, object GUIDs and
trailing application data; a type this codec does not know (the obsolete compound
ACE, future types) keeps its body as opaque bytes. An ACE's size is kept as it
came (trailing padding is part of ``app_data``) so that ``parse(x).encode() == x``
for any canonical input.

Malformed input raises ``SdError`` (an ``NtStatusError`` carrying
INVALID_SECURITY_DESCR, which Windows answers for an unparsable descriptor).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..protocol.constants import NtStatusError, Status

# SECURITY_DESCRIPTOR control bits (MS-DTYP 2.4.6).
SE_OWNER_DEFAULTED = 0x0001
SE_GROUP_DEFAULTED = 0x0002
SE_DACL_PRESENT = 0x0004
SE_DACL_DEFAULTED = 0x0008
SE_SACL_PRESENT = 0x0010
SE_SACL_DEFAULTED = 0x0020
SE_DACL_TRUSTED = 0x0040
SE_SERVER_SECURITY = 0x0080
SE_DACL_AUTO_INHERIT_REQ = 0x0100
SE_SACL_AUTO_INHERIT_REQ = 0x0200
SE_DACL_AUTO_INHERITED = 0x0400
SE_SACL_AUTO_INHERITED = 0x0800
SE_DACL_PROTECTED = 0x1000
SE_SACL_PROTECTED = 0x2000
SE_RM_CONTROL_VALID = 0x4000
SE_SELF_RELATIVE = 0x8000
DACL_CONTROL = (
    SE_DACL_PRESENT | SE_DACL_DEFAULTED | SE_DACL_AUTO_INHERIT_REQ | SE_DACL_AUTO_INHERITED
    | SE_DACL_PROTECTED | SE_DACL_TRUSTED
)  # fmt: skip
SACL_CONTROL = (
    SE_SACL_PRESENT | SE_SACL_DEFAULTED | SE_SACL_AUTO_INHERIT_REQ | SE_SACL_AUTO_INHERITED
    | SE_SACL_PROTECTED
)  # fmt: skip

# ACE types (MS-DTYP 2.4.4.1).
ACCESS_ALLOWED = 0x00
ACCESS_DENIED = 0x01
SYSTEM_AUDIT = 0x02
SYSTEM_ALARM = 0x03
ACCESS_ALLOWED_COMPOUND = 0x04
ACCESS_ALLOWED_OBJECT = 0x05
ACCESS_DENIED_OBJECT = 0x06
SYSTEM_AUDIT_OBJECT = 0x07
SYSTEM_ALARM_OBJECT = 0x08
ACCESS_ALLOWED_CALLBACK = 0x09
ACCESS_DENIED_CALLBACK = 0x0A
ACCESS_ALLOWED_CALLBACK_OBJECT = 0x0B
ACCESS_DENIED_CALLBACK_OBJECT = 0x0C
SYSTEM_AUDIT_CALLBACK = 0x0D
SYSTEM_ALARM_CALLBACK = 0x0E
SYSTEM_AUDIT_CALLBACK_OBJECT = 0x0F
SYSTEM_ALARM_CALLBACK_OBJECT = 0x10
SYSTEM_MANDATORY_LABEL = 0x11
SYSTEM_RESOURCE_ATTRIBUTE = 0x12
SYSTEM_SCOPED_POLICY_ID = 0x13

# Laid out as header, mask, SID, application data.
_PLAIN_TYPES = frozenset({
    ACCESS_ALLOWED, ACCESS_DENIED, SYSTEM_AUDIT, SYSTEM_ALARM, ACCESS_ALLOWED_CALLBACK,
    ACCESS_DENIED_CALLBACK, SYSTEM_AUDIT_CALLBACK, SYSTEM_ALARM_CALLBACK,
    SYSTEM_MANDATORY_LABEL, SYSTEM_RESOURCE_ATTRIBUTE, SYSTEM_SCOPED_POLICY_ID,
})  # fmt: skip
# Laid out as header, mask, flags, [ObjectType], [InheritedObjectType], SID, data.
_OBJECT_TYPES = frozenset({
    ACCESS_ALLOWED_OBJECT, ACCESS_DENIED_OBJECT, SYSTEM_AUDIT_OBJECT, SYSTEM_ALARM_OBJECT,
    ACCESS_ALLOWED_CALLBACK_OBJECT, ACCESS_DENIED_CALLBACK_OBJECT,
    SYSTEM_AUDIT_CALLBACK_OBJECT, SYSTEM_ALARM_CALLBACK_OBJECT,
})  # fmt: skip
ACE_OBJECT_TYPE_PRESENT = 0x1
ACE_INHERITED_OBJECT_TYPE_PRESENT = 0x2

# ACE flags (MS-DTYP 2.4.4.2).
OBJECT_INHERIT_ACE = 0x01
CONTAINER_INHERIT_ACE = 0x02
NO_PROPAGATE_INHERIT_ACE = 0x04
INHERIT_ONLY_ACE = 0x08
INHERITED_ACE = 0x10

ACL_REVISION = 2
ACL_REVISION_DS = 4
SD_REVISION = 1

_SD_HEADER = struct.Struct("<BBHIIII")  # revision, sbz1, control, owner, group, sacl, dacl
_ACL_HEADER = struct.Struct("<BBHHH")  # revision, sbz1, size, count, sbz2
_ACE_HEADER = struct.Struct("<BBH")  # type, flags, size


class SdError(NtStatusError):
    """A descriptor, ACL or SID that cannot be decoded."""

    def __init__(self, message: str, status: int = Status.INVALID_SECURITY_DESCR) -> None:
        super().__init__(status, message)


# -- SIDs (MS-DTYP 2.4.2) ---------------------------------------------------------------------


def sid_bytes(sid: str) -> bytes:
    """The binary SID of its string form ``S-1-5-18``; ValueError if malformed."""
    parts = sid.split("-")
    if len(parts) < 3 or parts[0].upper() != "S" or len(parts) - 3 > 15:
        raise ValueError(f"bad SID {sid!r}")
    try:
        revision = int(parts[1])
        authority = int(parts[2], 16) if parts[2].lower().startswith("0x") else int(parts[2])
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


def parse_sid(data: bytes | memoryview, offset: int = 0) -> tuple[str, int]:
    """(string form, size in bytes) of the SID at ``offset``."""
    if offset + 8 > len(data):
        raise SdError("truncated SID", Status.INVALID_SID)
    revision, count = data[offset], data[offset + 1]
    size = 8 + 4 * count
    if revision != 1 or count > 15 or offset + size > len(data):
        raise SdError("bad SID", Status.INVALID_SID)
    authority = int.from_bytes(data[offset + 2 : offset + 8], "big")
    subs = struct.unpack_from(f"<{count}I", data, offset + 8)
    text = f"S-1-{authority:#x}" if authority >= 1 << 32 else f"S-1-{authority}"
    return text + "".join(f"-{s}" for s in subs), size


# -- ACEs and ACLs -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ace:
    """One ACE. ``sid`` is None only for an ACE of a type kept opaque (``raw`` body)."""

    type: int
    flags: int
    mask: int = 0
    sid: str | None = None
    object_type: bytes | None = None  # 16-byte GUID of an object ACE
    inherited_object_type: bytes | None = None
    app_data: bytes = b""  # callback conditions, resource attributes, trailing padding
    raw: bytes | None = None  # the body after the 4-byte header, for unknown types

    def encode(self) -> bytes:
        if self.raw is not None:
            body = self.raw
        else:
            assert self.sid is not None
            body = struct.pack("<I", self.mask)
            if self.type in _OBJECT_TYPES:
                oflags = (ACE_OBJECT_TYPE_PRESENT if self.object_type else 0) | (
                    ACE_INHERITED_OBJECT_TYPE_PRESENT if self.inherited_object_type else 0
                )
                body += struct.pack("<I", oflags)
                body += (self.object_type or b"") + (self.inherited_object_type or b"")
            body += sid_bytes(self.sid) + self.app_data
        body += b"\x00" * (-(len(body) + 4) % 4)  # AceSize is a multiple of 4
        return _ACE_HEADER.pack(self.type, self.flags, 4 + len(body)) + body

    @property
    def is_allow(self) -> bool:
        return self.type in (ACCESS_ALLOWED, ACCESS_ALLOWED_OBJECT, ACCESS_ALLOWED_CALLBACK,
                             ACCESS_ALLOWED_CALLBACK_OBJECT)  # fmt: skip

    @property
    def is_deny(self) -> bool:
        return self.type in (ACCESS_DENIED, ACCESS_DENIED_OBJECT, ACCESS_DENIED_CALLBACK,
                             ACCESS_DENIED_CALLBACK_OBJECT)  # fmt: skip


def parse_ace(data: bytes | memoryview, offset: int) -> tuple[Ace, int]:
    if offset + 4 > len(data):
        raise SdError("truncated ACE", Status.INVALID_ACL)
    ace_type, flags, size = _ACE_HEADER.unpack_from(data, offset)
    if size < 8 or offset + size > len(data):
        raise SdError("bad ACE size", Status.INVALID_ACL)
    body = bytes(data[offset + 4 : offset + size])
    if ace_type in _PLAIN_TYPES:
        (mask,) = struct.unpack_from("<I", body)
        sid, sid_len = parse_sid(body, 4)
        return Ace(ace_type, flags, mask, sid, app_data=body[4 + sid_len :]), size
    if ace_type in _OBJECT_TYPES:
        if len(body) < 8:
            raise SdError("truncated object ACE", Status.INVALID_ACL)
        mask, oflags = struct.unpack_from("<II", body)
        pos = 8
        guids: list[bytes | None] = []
        for bit in (ACE_OBJECT_TYPE_PRESENT, ACE_INHERITED_OBJECT_TYPE_PRESENT):
            if oflags & bit:
                if pos + 16 > len(body):
                    raise SdError("truncated object ACE", Status.INVALID_ACL)
                guids.append(body[pos : pos + 16])
                pos += 16
            else:
                guids.append(None)
        sid, sid_len = parse_sid(body, pos)
        return Ace(ace_type, flags, mask, sid, guids[0], guids[1],
                   app_data=body[pos + sid_len :]), size  # fmt: skip
    return Ace(ace_type, flags, raw=body), size


@dataclass(frozen=True, slots=True)
class Acl:
    aces: tuple[Ace, ...] = ()
    revision: int = ACL_REVISION

    def encode(self) -> bytes:
        body = b"".join(a.encode() for a in self.aces)
        return _ACL_HEADER.pack(self.revision, 0, 8 + len(body), len(self.aces), 0) + body


def parse_acl(data: bytes | memoryview, offset: int) -> Acl:
    if offset + 8 > len(data):
        raise SdError("truncated ACL", Status.INVALID_ACL)
    revision, _sbz, size, count, _sbz2 = _ACL_HEADER.unpack_from(data, offset)
    if revision not in (ACL_REVISION, ACL_REVISION_DS) or size < 8 or offset + size > len(data):
        raise SdError("bad ACL header", Status.INVALID_ACL)
    end = offset + size
    view = memoryview(data)[:end]
    pos = offset + 8
    aces: list[Ace] = []
    for _ in range(count):
        ace, ace_size = parse_ace(view, pos)
        aces.append(ace)
        pos += ace_size
    return Acl(tuple(aces), revision)


# -- the descriptor ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SecurityDescriptor:
    """A descriptor; ``dacl``/``sacl`` None with the PRESENT bit set is a NULL ACL."""

    control: int = SE_SELF_RELATIVE
    owner: str | None = None
    group: str | None = None
    sacl: Acl | None = None
    dacl: Acl | None = None
    revision: int = SD_REVISION
    # RM control byte (Sbz1), meaningful with SE_RM_CONTROL_VALID.
    rm_control: int = 0

    @property
    def dacl_present(self) -> bool:
        return bool(self.control & SE_DACL_PRESENT)

    @property
    def sacl_present(self) -> bool:
        return bool(self.control & SE_SACL_PRESENT)

    def encode(self) -> bytes:
        """Self-relative form: owner, group, SACL, DACL (Samba's order; any is valid)."""
        parts = bytearray()
        offsets = [0, 0, 0, 0]
        items = (
            sid_bytes(self.owner) if self.owner else None,
            sid_bytes(self.group) if self.group else None,
            self.sacl.encode() if self.sacl is not None and self.sacl_present else None,
            self.dacl.encode() if self.dacl is not None and self.dacl_present else None,
        )
        for i, item in enumerate(items):
            if item is not None:
                offsets[i] = _SD_HEADER.size + len(parts)
                parts += item
        control = self.control | SE_SELF_RELATIVE
        return _SD_HEADER.pack(self.revision, self.rm_control, control, *offsets) + bytes(parts)


def parse(data: bytes | memoryview) -> SecurityDescriptor:
    """Decode a self-relative SECURITY_DESCRIPTOR."""
    if len(data) < _SD_HEADER.size:
        raise SdError("descriptor shorter than its header")
    revision, rm_control, control, o_owner, o_group, o_sacl, o_dacl = _SD_HEADER.unpack_from(data)
    if revision != SD_REVISION:
        raise SdError(f"descriptor revision {revision}")
    for off in (o_owner, o_group, o_sacl, o_dacl):
        if off and (off < _SD_HEADER.size or off >= len(data)):
            raise SdError("descriptor offset outside the buffer")
    owner = parse_sid(data, o_owner)[0] if o_owner else None
    group = parse_sid(data, o_group)[0] if o_group else None
    sacl = parse_acl(data, o_sacl) if o_sacl and control & SE_SACL_PRESENT else None
    dacl = parse_acl(data, o_dacl) if o_dacl and control & SE_DACL_PRESENT else None
    return SecurityDescriptor(control | SE_SELF_RELATIVE, owner, group, sacl, dacl, revision,
                              rm_control)  # fmt: skip


def acl_of(*aces: Ace, revision: int = ACL_REVISION) -> Acl:
    return Acl(tuple(aces), revision)
