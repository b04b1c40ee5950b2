"""Security descriptors: the codec (gateway.fs.sd), access checks and inheritance
(gateway.fs.acl), their storage on a share (gateway.fs.descriptors, ShareFS), and
what handles may do with them (gateway.smb.security)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from impacket.ldap import ldaptypes

from gateway.fs import acl, descriptors, sd
from gateway.fs.acl import AUTHENTICATED_USERS, CREATOR_OWNER, EVERYONE, OWNER_RIGHTS, Token
from gateway.fs.sd import Ace, Acl, SecurityDescriptor
from gateway.fs.vfs import ShareFS
from gateway.protocol.constants import (
    FILE_ALL_ACCESS,
    FILE_GENERIC_READ,
    AccessMask,
    NtStatusError,
    Status,
)
from gateway.smb import security
from gateway.smb.state import Open, Session, TreeConnect

ALICE = acl.token_for("alice", guest=False)
BOB = acl.token_for("bob", guest=False)
GUID_A = bytes(range(16))
GUID_B = bytes(range(16, 32))
RC_WD = AccessMask.READ_CONTROL | AccessMask.WRITE_DAC


def allow(sid: str, mask: int, flags: int = 0) -> Ace:
    return Ace(sd.ACCESS_ALLOWED, flags, mask, sid)


def deny(sid: str, mask: int, flags: int = 0) -> Ace:
    return Ace(sd.ACCESS_DENIED, flags, mask, sid)


def desc(owner: str | None, *aces: Ace, control: int = 0) -> SecurityDescriptor:
    return SecurityDescriptor(
        sd.SE_SELF_RELATIVE | sd.SE_DACL_PRESENT | control, owner, None, None, Acl(aces)
    )


def null_dacl(owner: str | None = None) -> SecurityDescriptor:
    return SecurityDescriptor(sd.SE_SELF_RELATIVE | sd.SE_DACL_PRESENT, owner)


def status_of(fn: Any, *args: Any, **kwargs: Any) -> int:
    with pytest.raises(NtStatusError) as e:
        fn(*args, **kwargs)
    return e.value.status


# -- codec ----------------------------------------------------------------------------------------


def test_sid_round_trip() -> None:
    for text in ("S-1-1-0", "S-1-5-18", "S-1-5-21-1-2-3-500", ALICE.user, "S-1-0x123456789abc-7"):
        raw = sd.sid_bytes(text)
        assert sd.parse_sid(raw) == (text, len(raw))
    assert sd.sid_bytes("S-1-5-18") == bytes.fromhex("010100000000000512000000")
    with pytest.raises(NtStatusError):
        sd.parse_sid(bytes.fromhex("0102000000000005"))  # two sub-authorities announced, none sent


def test_every_ace_kind_round_trips() -> None:
    aces = (
        allow(EVERYONE, FILE_ALL_ACCESS, sd.OBJECT_INHERIT_ACE | sd.CONTAINER_INHERIT_ACE),
        deny("S-1-5-21-1-2-3-1001", AccessMask.DELETE),
        Ace(sd.ACCESS_ALLOWED_OBJECT, 0, 0x10, AUTHENTICATED_USERS, GUID_A, GUID_B),
        Ace(sd.ACCESS_DENIED_OBJECT, 0, 0x20, EVERYONE, None, GUID_B),
        Ace(sd.ACCESS_ALLOWED_CALLBACK, 0, 0x1, EVERYONE, app_data=b"artx\x00\x00\x00\x00"),
        Ace(sd.ACCESS_ALLOWED_COMPOUND, 0, raw=b"\x01\x02\x03\x04\x05\x06\x07\x08"),
    )
    sacl = sd.acl_of(Ace(sd.SYSTEM_AUDIT, 0x40, FILE_ALL_ACCESS, EVERYONE), revision=4)
    original = SecurityDescriptor(
        sd.SE_SELF_RELATIVE | sd.SE_DACL_PRESENT | sd.SE_SACL_PRESENT | sd.SE_DACL_PROTECTED,
        ALICE.user, acl.DOMAIN_USERS, sacl, Acl(aces),
    )  # fmt: skip
    raw = original.encode()
    back = sd.parse(raw)
    assert back == original
    assert back.encode() == raw
    # impacket reads the same thing (it has no compound ACE, an obsolete type).
    known = SecurityDescriptor(original.control, original.owner, None, sacl, Acl(aces[:-1]))
    other = ldaptypes.SR_SECURITY_DESCRIPTOR(data=known.encode())
    assert other["OwnerSid"].formatCanonical() == ALICE.user
    assert len(other["Dacl"].aces) == len(aces) - 1
    assert other["Dacl"].aces[0]["Ace"]["Mask"]["Mask"] == FILE_ALL_ACCESS


def test_null_and_empty_dacl_differ() -> None:
    null = sd.parse(null_dacl().encode())
    assert null.dacl_present and null.dacl is None
    empty = sd.parse(desc(None).encode())
    assert empty.dacl_present and empty.dacl == Acl(())
    absent = sd.parse(SecurityDescriptor().encode())
    assert not absent.dacl_present and absent.dacl is None
    assert len(SecurityDescriptor().encode()) == 20


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"\x01\x00\x04\x80", Status.INVALID_SECURITY_DESCR),  # shorter than the header
        (bytes.fromhex("02000480") + bytes(16), Status.INVALID_SECURITY_DESCR),  # revision 2
        (bytes.fromhex("01000480") + (200).to_bytes(4, "little") + bytes(12),
         Status.INVALID_SECURITY_DESCR),  # owner offset outside
        (bytes.fromhex("01000480") + bytes(12) + (20).to_bytes(4, "little")
         + bytes.fromhex("0200ff000000 0000"), Status.INVALID_ACL),  # ACL size too big
        (bytes.fromhex("01000480") + bytes(12) + (20).to_bytes(4, "little")
         + bytes.fromhex("02001000 01000000") + bytes.fromhex("00000400 00000000"),
         Status.INVALID_ACL),  # ACE of 4 bytes
    ],
)  # fmt: skip
def test_malformed_descriptors_are_refused(raw: bytes, status: int) -> None:
    assert status_of(sd.parse, raw) == status


def test_ace_size_stays_a_multiple_of_four() -> None:
    ace = Ace(sd.ACCESS_ALLOWED_CALLBACK, 0, 1, EVERYONE, app_data=b"abc")
    assert len(ace.encode()) % 4 == 0


# -- tokens ---------------------------------------------------------------------------------------


def test_user_sids_are_stable_and_distinct() -> None:
    assert acl.token_for("Alice", guest=False).user == ALICE.user
    assert ALICE.user != BOB.user
    assert ALICE.user.startswith(acl.DOMAIN + "-")
    assert 1000 <= acl.user_rid("alice") < 1 << 31
    assert {EVERYONE, AUTHENTICATED_USERS, acl.DOMAIN_USERS} <= ALICE.sids
    guest = acl.token_for("", guest=True)
    assert guest.user == acl.ANONYMOUS and AUTHENTICATED_USERS not in guest.sids
    assert acl.check_rid_collisions(["alice", "bob", "ALICE"]) == []


# -- access checks --------------------------------------------------------------------------------


def test_null_dacl_allows_everything() -> None:
    assert acl.maximal_access(null_dacl(), BOB) == FILE_ALL_ACCESS


def test_empty_dacl_leaves_the_owner_its_implicit_rights() -> None:
    assert acl.maximal_access(desc(ALICE.user), ALICE) == RC_WD
    assert acl.maximal_access(desc(ALICE.user), BOB) == 0


def test_first_ace_naming_a_bit_decides() -> None:
    r, w = AccessMask.FILE_READ_DATA, AccessMask.FILE_WRITE_DATA
    d = desc(None, deny(EVERYONE, w), allow(BOB.user, r | w))
    assert acl.maximal_access(d, BOB) == r
    d = desc(None, allow(BOB.user, r | w), deny(EVERYONE, w))
    assert acl.maximal_access(d, BOB) == r | w
    # An ACE for someone else, or inherit-only, does nothing.
    d = desc(None, allow(ALICE.user, w), allow(BOB.user, r, sd.INHERIT_ONLY_ACE))
    assert acl.maximal_access(d, BOB) == 0


def test_generic_rights_in_aces_count_as_file_rights() -> None:
    d = desc(None, allow(EVERYONE, AccessMask.GENERIC_READ))
    assert acl.maximal_access(d, BOB) == FILE_GENERIC_READ


def test_owner_rights_ace_replaces_the_implicit_rights() -> None:
    d = desc(ALICE.user, allow(OWNER_RIGHTS, AccessMask.FILE_READ_DATA))
    assert acl.maximal_access(d, ALICE) == AccessMask.FILE_READ_DATA
    d = desc(ALICE.user, deny(OWNER_RIGHTS, AccessMask.WRITE_DAC), allow(EVERYONE, RC_WD))
    assert acl.maximal_access(d, ALICE) == AccessMask.READ_CONTROL


def test_conditional_aces_only_ever_refuse() -> None:
    d = desc(None, Ace(sd.ACCESS_ALLOWED_CALLBACK, 0, FILE_ALL_ACCESS, EVERYONE))
    assert acl.maximal_access(d, BOB) == 0
    d = desc(
        None,
        Ace(sd.ACCESS_DENIED_CALLBACK, 0, AccessMask.DELETE, EVERYONE),
        allow(EVERYONE, FILE_ALL_ACCESS),
    )
    assert acl.maximal_access(d, BOB) == FILE_ALL_ACCESS & ~AccessMask.DELETE


def test_system_security_needs_a_privilege_nobody_has() -> None:
    assert status_of(acl.check_privileges, AccessMask.ACCESS_SYSTEM_SECURITY) == (
        Status.PRIVILEGE_NOT_HELD
    )
    acl.check_privileges(FILE_ALL_ACCESS)


# -- inheritance ----------------------------------------------------------------------------------

OI, CI = sd.OBJECT_INHERIT_ACE, sd.CONTAINER_INHERIT_ACE
NP, IO = sd.NO_PROPAGATE_INHERIT_ACE, sd.INHERIT_ONLY_ACE


def test_a_file_inherits_object_inherit_aces_as_effective_ones() -> None:
    parent = desc(
        None,
        allow(EVERYONE, 1, OI | CI),
        allow(BOB.user, 2, CI),  # directories only
        allow(CREATOR_OWNER, 4, OI | IO),
        allow(AUTHENTICATED_USERS, 8),  # not inheritable
    )
    got = acl.inherited_aces(parent, False, ALICE.user, ALICE.primary_group)
    assert got == [allow(EVERYONE, 1), allow(ALICE.user, 4)]


def test_a_directory_keeps_passing_aces_down() -> None:
    parent = desc(
        None,
        allow(EVERYONE, 1, OI | CI),
        allow(BOB.user, 2, OI),  # files only: inherit-only here
        allow(AUTHENTICATED_USERS, 8, CI | NP),  # this level only
        allow(CREATOR_OWNER, 4, OI | CI | IO),
        control=sd.SE_DACL_AUTO_INHERITED,
    )
    got = acl.inherited_aces(parent, True, ALICE.user, ALICE.primary_group)
    inh = sd.INHERITED_ACE
    assert got == [
        allow(EVERYONE, 1, OI | CI | inh),
        allow(BOB.user, 2, OI | IO | inh),
        allow(AUTHENTICATED_USERS, 8, inh),
        allow(ALICE.user, 4, inh),
        allow(CREATOR_OWNER, 4, OI | CI | IO | inh),
    ]


def test_create_descriptor() -> None:
    parent = desc(None, allow(EVERYONE, FILE_ALL_ACCESS, OI | CI))
    new = acl.create_descriptor(parent, None, ALICE, is_dir=False)
    assert (new.owner, new.group) == (ALICE.user, acl.DOMAIN_USERS)
    assert new.dacl == Acl((allow(EVERYONE, FILE_ALL_ACCESS),))
    # Nothing to inherit: the default DACL (owner and SYSTEM).
    new = acl.create_descriptor(desc(None), None, ALICE, is_dir=True)
    assert new.dacl == acl.default_dacl(ALICE.user)
    # A creator's DACL wins, generic rights mapped; a NULL one stays NULL.
    creator = desc(None, allow(BOB.user, AccessMask.GENERIC_ALL))
    new = acl.create_descriptor(parent, creator, ALICE, is_dir=False)
    assert new.dacl == Acl((allow(BOB.user, FILE_ALL_ACCESS),))
    new = acl.create_descriptor(parent, null_dacl(), ALICE, is_dir=False)
    assert new.dacl_present and new.dacl is None
    # An owner from the token (a group of it, too) is fine; anyone else's is not.
    assert acl.create_descriptor(parent, null_dacl(EVERYONE), ALICE, is_dir=False).owner == (
        EVERYONE
    )
    assert status_of(acl.create_descriptor, parent, null_dacl(BOB.user), ALICE, is_dir=False) == (
        Status.INVALID_OWNER
    )


def test_auto_inherit_request_appends_the_parents_aces() -> None:
    parent = desc(None, allow(EVERYONE, 1, OI))
    creator = desc(None, allow(BOB.user, 2), control=sd.SE_DACL_AUTO_INHERIT_REQ)
    new = acl.create_descriptor(parent, creator, ALICE, is_dir=False)
    assert new.dacl == Acl((allow(BOB.user, 2), allow(EVERYONE, 1, sd.INHERITED_ACE)))
    assert new.control & sd.SE_DACL_AUTO_INHERITED


# -- SET_INFO merges and QUERY_INFO filters -------------------------------------------------------


def test_merge_replaces_only_the_parts_named() -> None:
    old = SecurityDescriptor(
        sd.SE_SELF_RELATIVE | sd.SE_DACL_PRESENT, ALICE.user, acl.DOMAIN_USERS, None,
        Acl((allow(EVERYONE, 1),)),
    )  # fmt: skip
    new = desc(BOB.user, allow(BOB.user, AccessMask.GENERIC_READ))
    merged = acl.merge(old, new, acl.DACL_SECURITY_INFORMATION, ALICE)
    assert merged.owner == ALICE.user and merged.group == acl.DOMAIN_USERS
    assert merged.dacl == Acl((allow(BOB.user, FILE_GENERIC_READ),))
    # Giving the file away is not allowed; keeping the owner, or taking a group of one's own, is.
    own = acl.OWNER_SECURITY_INFORMATION
    assert status_of(acl.merge, old, new, own, ALICE) == Status.INVALID_OWNER
    assert acl.merge(old, desc(ALICE.user), own, ALICE).owner == ALICE.user
    assert acl.merge(old, desc(AUTHENTICATED_USERS), own, ALICE).owner == AUTHENTICATED_USERS
    # A NULL DACL; the protected bit from SecurityInformation.
    merged = acl.merge(
        old, null_dacl(),
        acl.DACL_SECURITY_INFORMATION | acl.PROTECTED_DACL_SECURITY_INFORMATION, ALICE,
    )  # fmt: skip
    assert merged.dacl_present and merged.dacl is None
    assert merged.control & sd.SE_DACL_PROTECTED


def test_auto_inherited_is_kept_only_with_the_request() -> None:
    both = sd.SE_DACL_AUTO_INHERITED | sd.SE_DACL_AUTO_INHERIT_REQ
    assert acl.canonical_dacl_control(both | sd.SE_DACL_PRESENT) == (
        sd.SE_DACL_AUTO_INHERITED | sd.SE_DACL_PRESENT
    )
    assert acl.canonical_dacl_control(sd.SE_DACL_AUTO_INHERITED) == 0
    assert acl.canonical_dacl_control(sd.SE_DACL_AUTO_INHERIT_REQ) == 0


def test_filter_parts_and_required_access() -> None:
    full = SecurityDescriptor(
        sd.SE_SELF_RELATIVE | sd.SE_DACL_PRESENT | sd.SE_DACL_PROTECTED, ALICE.user,
        acl.DOMAIN_USERS, None, Acl((allow(EVERYONE, 1),)),
    )  # fmt: skip
    only_owner = acl.filter_parts(full, acl.OWNER_SECURITY_INFORMATION)
    assert only_owner == SecurityDescriptor(sd.SE_SELF_RELATIVE, ALICE.user)
    assert acl.filter_parts(full, 0x7) == full
    assert acl.required_access(0x7, setting=False) == AccessMask.READ_CONTROL
    assert acl.required_access(0x1, setting=True) == AccessMask.WRITE_OWNER
    assert acl.required_access(0x4, setting=True) == AccessMask.WRITE_DAC
    assert acl.required_access(0x8, setting=False) == AccessMask.ACCESS_SYSTEM_SECURITY


# -- storage on a share ---------------------------------------------------------------------------


@pytest.fixture
def fs(tmp_path: Path) -> ShareFS:
    share = ShareFS(str(tmp_path))
    if not share.keeps_xattrs:
        pytest.skip("no user xattrs on this filesystem")
    return share


def test_descriptors_are_stored_and_read_back(fs: ShareFS, tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"")
    assert fs.read_sd(str(path)) is None
    data = desc(ALICE.user, allow(ALICE.user, 1)).encode()
    fs.write_sd(str(path), data)
    assert fs.read_sd(str(path)) == data
    fd = os.open(path, os.O_PATH)
    try:
        assert fs.read_sd(fd) == data
    finally:
        os.close(fd)


def test_a_read_only_file_still_takes_its_descriptor(fs: ShareFS, tmp_path: Path) -> None:
    path = tmp_path / "ro"
    path.write_bytes(b"")
    os.chmod(path, 0o444)
    data = null_dacl(ALICE.user).encode()
    fs.write_sd(str(path), data)
    assert fs.read_sd(str(path)) == data
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o444


def test_default_descriptor_when_none_stored(fs: ShareFS, tmp_path: Path) -> None:
    path = tmp_path / "host-made"
    path.write_bytes(b"")
    got = descriptors.load(fs, str(path), False)
    st = os.stat(path)
    assert got.owner == f"S-1-22-1-{st.st_uid}" and got.group == f"S-1-22-2-{st.st_gid}"
    assert acl.maximal_access(got, BOB) == FILE_ALL_ACCESS


def _open(fs: ShareFS, path: Path, access: int, user: str = "alice") -> Open:
    session = Session(session_id=1, dialect=0x311, username=user)
    tree = TreeConnect(1, session, None, fs, FILE_ALL_ACCESS)  # type: ignore[arg-type]
    return Open(1, 1, tree, path.name, str(path), path.is_dir(), access, 7, 0)


def test_create_set_and_query_through_a_share(fs: ShareFS, tmp_path: Path) -> None:
    top = tmp_path / "top"
    top.mkdir()
    # Only alice may add files to top, and files made there inherit her ACE only.
    top_sd = desc(ALICE.user, allow(ALICE.user, FILE_ALL_ACCESS, OI | CI))
    fs.write_sd(str(top), top_sd.encode())
    child = top / "c.txt"
    assert status_of(descriptors.new_descriptor, fs, BOB, str(child), False, None, 0) == (
        Status.ACCESS_DENIED
    )
    data = descriptors.new_descriptor(fs, ALICE, str(child), False, None, 0)
    child.write_bytes(b"")
    descriptors.store_new(fs, str(child), data)
    op = _open(fs, child, RC_WD)
    got = sd.parse(security.query_security(op, 0x7))
    assert got.owner == ALICE.user and got.dacl == Acl((allow(ALICE.user, FILE_ALL_ACCESS),))
    # Bob may not open it; alice may, and may hand it over with a NULL DACL.
    bob_rights = descriptors.open_maximal_access(
        fs, BOB, str(child), str(child), False, FILE_ALL_ACCESS
    )
    assert bob_rights == 0
    security.set_security(op, acl.DACL_SECURITY_INFORMATION, null_dacl().encode())
    assert descriptors.open_maximal_access(
        fs, BOB, str(child), str(child), False, FILE_ALL_ACCESS
    ) == (FILE_ALL_ACCESS)
    # Without WRITE_DAC on the handle, or READ_CONTROL for a query: refused.
    weak = _open(fs, child, AccessMask.FILE_READ_DATA)
    assert status_of(security.set_security, weak, 0x4, null_dacl().encode()) == (
        Status.ACCESS_DENIED
    )
    assert status_of(security.query_security, weak, 0x4) == Status.ACCESS_DENIED
    assert status_of(security.query_security, op, 0x8) == Status.ACCESS_DENIED


def test_delete_child_on_the_parent_grants_delete(fs: ShareFS, tmp_path: Path) -> None:
    top = tmp_path / "top2"
    top.mkdir()
    fs.write_sd(str(top), desc(None, allow(BOB.user, AccessMask.FILE_DELETE_CHILD)).encode())
    child = top / "f"
    child.write_bytes(b"")
    fs.write_sd(str(child), desc(None, allow(BOB.user, AccessMask.FILE_READ_DATA)).encode())
    got = descriptors.open_maximal_access(fs, BOB, str(child), str(child), False, FILE_ALL_ACCESS)
    assert got == AccessMask.FILE_READ_DATA | AccessMask.DELETE


def test_overwrite_needs_write_data(fs: ShareFS, tmp_path: Path) -> None:
    f = tmp_path / "ow"
    f.write_bytes(b"x")
    fs.write_sd(str(f), desc(None, allow(EVERYONE, AccessMask.FILE_READ_DATA)).encode())
    session = Session(session_id=1, dialect=0x311, username="bob")
    args = (fs, session, str(f), False, AccessMask.FILE_READ_DATA, False, None, FILE_ALL_ACCESS)
    assert security.check_open(*args)[0] & AccessMask.FILE_READ_DATA
    assert status_of(security.check_open, *args, overwrite=True) == Status.ACCESS_DENIED


def test_a_token_is_cached_per_user() -> None:
    s = Session(session_id=1, dialect=0x311, username="alice")
    assert security.token_of(s) is security.token_of(s)
    assert security.token_of(s) == ALICE
    assert isinstance(ALICE, Token)


def test_users_sharing_a_rid_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(acl, "user_rid", lambda name: 1000)
    assert acl.check_rid_collisions(["alice", "bob"]) == [("alice", "bob")]


def test_rename_needs_add_file_on_the_target_and_delete_on_the_replaced(
    fs: ShareFS, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"")
    closed = tmp_path / "closed"
    closed.mkdir()
    fs.write_sd(str(closed), desc(None, allow(EVERYONE, AccessMask.FILE_READ_DATA)).encode())
    op = _open(fs, src, AccessMask.DELETE, user="bob")
    assert status_of(security.check_rename, op, str(closed / "x"), False) == Status.ACCESS_DENIED
    security.check_rename(op, str(tmp_path / "x"), False)
    kept = tmp_path / "kept"
    kept.write_bytes(b"")
    fs.write_sd(str(kept), desc(None, allow(EVERYONE, AccessMask.FILE_READ_DATA)).encode())
    # The root's default lets everyone delete children, so bob may replace it...
    security.check_rename(op, str(kept), True)
    # ...unless the parent says otherwise.
    fs.write_sd(str(tmp_path), desc(None, allow(EVERYONE, AccessMask.FILE_WRITE_DATA)).encode())
    assert status_of(security.check_rename, op, str(kept), True) == Status.ACCESS_DENIED
