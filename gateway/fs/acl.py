"""Who may do what to a file: tokens, access checks, inheritance, SET_INFO merges. Sans-IO.

Users. The users file has names, not SIDs, so every user gets a SID derived from
the name alone: the gateway's fixed domain ``S-1-5-21-3181326929-1419604367-2214718930``
plus a RID of 1000 + (the first four bytes of SHA-256 of the case-folded name,
little-endian, modulo 2^31 - 1000). Every node computes the same SID without
sharing anything, and renaming or reordering the users file changes nobody's SID.
Two names can collide (about n²/2^32 for n users: 1 in 4,000 for 1,000 users);
a node refuses to start when two users of its file do (``check_rid_collisions``).
A token holds the user SID, the domain's Domain Users group (RID 513) as primary
group, Everyone, NETWORK, Authenticated Users and BUILTIN\\Users. Guests and
anonymous sessions hold ANONYMOUS LOGON, Domain Guests (RID 514), Everyone,
NETWORK and BUILTIN\\Guests. Nobody holds a privilege: ACCESS_SYSTEM_SECURITY
(the SACL) is PRIVILEGE_NOT_HELD for everyone, and an owner can be set only to a
SID of the caller's own token (the current owner may always be kept).

Access checks follow MS-DTYP 2.5.3.2: a missing (NULL) DACL allows everything;
the owner gets READ_CONTROL and WRITE_DAC unless an OWNER RIGHTS ACE says
otherwise; ACEs are read in order and the first ACE naming a bit decides it.
Conditional (callback) ACEs are not evaluated: an allow is skipped and a deny is
honoured, which can only refuse more than Windows would. Object ACEs carrying an
object type only concern directory services objects; they are treated the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, replace

from ..protocol.constants import (
    FILE_ALL_ACCESS,
    FILE_GENERIC_EXECUTE,
    FILE_GENERIC_READ,
    FILE_GENERIC_WRITE,
    AccessMask,
    NtStatusError,
    Status,
)
from . import sd
from .sd import Ace, Acl, SecurityDescriptor

# SecurityInformation (MS-DTYP 2.4.7).
OWNER_SECURITY_INFORMATION = 0x00000001
GROUP_SECURITY_INFORMATION = 0x00000002
DACL_SECURITY_INFORMATION = 0x00000004
SACL_SECURITY_INFORMATION = 0x00000008
LABEL_SECURITY_INFORMATION = 0x00000010
ATTRIBUTE_SECURITY_INFORMATION = 0x00000020
SCOPE_SECURITY_INFORMATION = 0x00000040
BACKUP_SECURITY_INFORMATION = 0x00010000
UNPROTECTED_SACL_SECURITY_INFORMATION = 0x10000000
UNPROTECTED_DACL_SECURITY_INFORMATION = 0x20000000
PROTECTED_SACL_SECURITY_INFORMATION = 0x40000000
PROTECTED_DACL_SECURITY_INFORMATION = 0x80000000

EVERYONE = "S-1-1-0"
CREATOR_OWNER = "S-1-3-0"
CREATOR_GROUP = "S-1-3-1"
OWNER_RIGHTS = "S-1-3-4"
NETWORK = "S-1-5-2"
ANONYMOUS = "S-1-5-7"
AUTHENTICATED_USERS = "S-1-5-11"
LOCAL_SYSTEM = "S-1-5-18"
BUILTIN_ADMINISTRATORS = "S-1-5-32-544"
BUILTIN_USERS = "S-1-5-32-545"
BUILTIN_GUESTS = "S-1-5-32-546"
DOMAIN = "S-1-5-21-3181326929-1419604367-2214718930"
DOMAIN_USERS = f"{DOMAIN}-513"
DOMAIN_GUESTS = f"{DOMAIN}-514"
_FIRST_RID = 1000

OWNER_IMPLICIT = AccessMask.READ_CONTROL | AccessMask.WRITE_DAC
FILE_LIST_DIRECTORY = AccessMask.FILE_READ_DATA
FILE_ADD_FILE = AccessMask.FILE_WRITE_DATA
FILE_ADD_SUBDIRECTORY = AccessMask.FILE_APPEND_DATA


@dataclass(frozen=True, slots=True)
class Token:
    """The SIDs a session acts with (no privileges: see the module docstring)."""

    user: str
    primary_group: str
    groups: frozenset[str]

    @property
    def sids(self) -> frozenset[str]:
        return self.groups | {self.user, self.primary_group}


def user_rid(username: str) -> int:
    digest = hashlib.sha256(username.casefold().encode("utf-8")).digest()
    return _FIRST_RID + int.from_bytes(digest[:4], "little") % ((1 << 31) - _FIRST_RID)


def user_sid(username: str) -> str:
    return f"{DOMAIN}-{user_rid(username)}"


def token_for(username: str, *, guest: bool) -> Token:
    if guest or not username:
        return Token(ANONYMOUS, DOMAIN_GUESTS,
                     frozenset({EVERYONE, NETWORK, BUILTIN_GUESTS}))  # fmt: skip
    return Token(
        user_sid(username),
        DOMAIN_USERS,
        frozenset({EVERYONE, NETWORK, AUTHENTICATED_USERS, BUILTIN_USERS}),
    )


def check_rid_collisions(usernames: Iterable[str]) -> list[tuple[str, str]]:
    """Pairs of users of one users file that would share a SID."""
    seen: dict[int, str] = {}
    out: list[tuple[str, str]] = []
    for name in usernames:
        rid = user_rid(name)
        other = seen.setdefault(rid, name)
        if other is not name and other.casefold() != name.casefold():
            out.append((other, name))
    return out


def map_generic(mask: int) -> int:
    """Generic rights to file rights (MS-DTYP 2.4.3), the generic bits removed."""
    if mask & AccessMask.GENERIC_ALL:
        mask |= FILE_ALL_ACCESS
    if mask & AccessMask.GENERIC_READ:
        mask |= FILE_GENERIC_READ
    if mask & AccessMask.GENERIC_WRITE:
        mask |= FILE_GENERIC_WRITE
    if mask & AccessMask.GENERIC_EXECUTE:
        mask |= FILE_GENERIC_EXECUTE
    return mask & ~0xF0000000


# -- access checks -----------------------------------------------------------------------------


def maximal_access(desc: SecurityDescriptor, token: Token) -> int:
    """Every right ``token`` has on an object with descriptor ``desc`` (file rights only)."""
    if not desc.dacl_present or desc.dacl is None:
        return FILE_ALL_ACCESS
    sids = token.sids
    aces = [a for a in desc.dacl.aces if not a.flags & sd.INHERIT_ONLY_ACE and a.sid is not None]
    is_owner = desc.owner is not None and desc.owner in sids
    granted = denied = 0
    if is_owner and not any(a.sid == OWNER_RIGHTS for a in aces):
        granted = OWNER_IMPLICIT
    for ace in aces:
        if not (ace.sid in sids or (is_owner and ace.sid == OWNER_RIGHTS)):
            continue
        mask = map_generic(ace.mask)
        if ace.is_deny:
            denied |= mask & ~granted
        elif ace.is_allow and _evaluated_allow(ace):
            granted |= mask & ~denied
    return granted & FILE_ALL_ACCESS


def _evaluated_allow(ace: Ace) -> bool:
    """Allow ACEs this server can apply: not conditional, not for a DS object type."""
    if ace.type in (sd.ACCESS_ALLOWED_CALLBACK, sd.ACCESS_ALLOWED_CALLBACK_OBJECT):
        return False
    return ace.object_type is None


def check_privileges(desired: int) -> None:
    """ACCESS_SYSTEM_SECURITY needs SeSecurityPrivilege, which no session holds."""
    if desired & AccessMask.ACCESS_SYSTEM_SECURITY:
        raise NtStatusError(Status.PRIVILEGE_NOT_HELD, "no session holds SeSecurityPrivilege")


# -- inheritance (MS-DTYP 2.5.3.4) -------------------------------------------------------------


def _inheritable(ace: Ace, is_dir: bool) -> bool:
    if ace.sid is None:
        return False
    if is_dir:
        return bool(
            ace.flags & sd.CONTAINER_INHERIT_ACE
            or ace.flags & sd.OBJECT_INHERIT_ACE
            and not ace.flags & sd.NO_PROPAGATE_INHERIT_ACE
        )
    return bool(ace.flags & sd.OBJECT_INHERIT_ACE)


def inherited_aces(parent: SecurityDescriptor, is_dir: bool, owner: str, group: str) -> list[Ace]:
    """The ACEs a new child of ``parent`` inherits, in the parent's order.

    A file gets effective ACEs only. A directory keeps the inheritance flags so
    its own children inherit further: an ACE meant for files only becomes
    inherit-only here; NO_PROPAGATE makes it effective and final. CREATOR OWNER
    and CREATOR GROUP become the new owner and group in the effective ACE; a
    directory keeps the CREATOR ACE as inherit-only for its children. The
    INHERITED flag is set when the parent's DACL is marked auto-inherited, as
    Windows and Samba do.
    """
    if not parent.dacl_present or parent.dacl is None:
        return []
    mark = sd.INHERITED_ACE if parent.control & sd.SE_DACL_AUTO_INHERITED else 0
    creators = {CREATOR_OWNER: owner, CREATOR_GROUP: group}
    out: list[Ace] = []
    for ace in parent.dacl.aces:
        if not _inheritable(ace, is_dir):
            continue
        assert ace.sid is not None
        mapped = creators.get(ace.sid, ace.sid)
        if not is_dir:
            out.append(replace(ace, flags=mark, sid=mapped))
            continue
        flags = ace.flags & ~(sd.INHERIT_ONLY_ACE | sd.INHERITED_ACE)
        if not flags & sd.CONTAINER_INHERIT_ACE:
            flags |= sd.INHERIT_ONLY_ACE
        if flags & sd.NO_PROPAGATE_INHERIT_ACE:
            out.append(replace(ace, flags=mark, sid=mapped))
        elif ace.sid in creators and flags & sd.CONTAINER_INHERIT_ACE:
            out.append(replace(ace, flags=mark, sid=mapped))
            out.append(replace(ace, flags=flags | sd.INHERIT_ONLY_ACE | mark))
        else:
            out.append(replace(ace, flags=flags | mark))
    unique: list[Ace] = []
    for ace in out:
        if ace not in unique:
            unique.append(ace)
    return unique


def default_dacl(owner: str) -> Acl:
    """What a new object gets when nothing is inherited: Windows' default token DACL."""
    return sd.acl_of(
        Ace(sd.ACCESS_ALLOWED, 0, FILE_ALL_ACCESS, owner),
        Ace(sd.ACCESS_ALLOWED, 0, FILE_ALL_ACCESS, LOCAL_SYSTEM),
    )


def create_descriptor(
    parent: SecurityDescriptor,
    creator: SecurityDescriptor | None,
    token: Token,
    *,
    is_dir: bool,
) -> SecurityDescriptor:
    """The descriptor of a new object (CreateSecurityDescriptor, MS-DTYP 2.5.3.4.1).

    Owner and group come from the creator's descriptor (the SecD create context)
    when it has them, else from the token. A DACL in the creator's descriptor is
    taken as given (NULL included); with SE_DACL_AUTO_INHERIT_REQ and without
    SE_DACL_PROTECTED the parent's inheritable ACEs follow its explicit ones.
    Without one, the DACL is inherited from the parent, or, when the parent has
    nothing to inherit, the default of ``default_dacl``. A SACL is only taken
    from the creator (the caller checked the privilege).
    """
    owner = creator.owner if creator is not None and creator.owner else token.user
    group = creator.group if creator is not None and creator.group else token.primary_group
    if creator is not None and creator.owner and creator.owner not in token.sids:
        raise NtStatusError(Status.INVALID_OWNER, f"owner {creator.owner} not in the token")
    control = sd.SE_SELF_RELATIVE | sd.SE_DACL_PRESENT
    dacl: Acl | None
    if creator is not None and creator.dacl_present:
        control |= canonical_dacl_control(creator.control)
        dacl = map_acl_generic(creator.dacl)
        auto = creator.control & sd.SE_DACL_AUTO_INHERIT_REQ
        if auto and not creator.control & sd.SE_DACL_PROTECTED:  # MS-DTYP 2.5.3.4.2
            explicit = [a for a in (dacl.aces if dacl else ()) if not a.flags & sd.INHERITED_ACE]
            inherited = [
                replace(a, flags=a.flags | sd.INHERITED_ACE)
                for a in inherited_aces(parent, is_dir, owner, group)
            ]
            dacl = Acl(tuple(explicit + inherited), dacl.revision if dacl else sd.ACL_REVISION)
            control |= sd.SE_DACL_AUTO_INHERITED
    else:
        aces = inherited_aces(parent, is_dir, owner, group)
        if aces:
            dacl = Acl(tuple(aces))
            control |= parent.control & sd.SE_DACL_AUTO_INHERITED
        else:
            dacl = default_dacl(owner)
    sacl = None
    if creator is not None and creator.sacl_present:
        control |= creator.control & sd.SACL_CONTROL
        sacl = creator.sacl
    return SecurityDescriptor(control, owner, group, sacl, dacl)


# -- SET_INFO and QUERY_INFO -----------------------------------------------------------------


def map_acl_generic(acl: Acl | None) -> Acl | None:
    """Generic rights in written ACEs become file rights, as Windows stores them."""
    if acl is None:
        return None
    aces = tuple(
        replace(a, mask=map_generic(a.mask)) if a.sid is not None and a.mask & 0xF0000000 else a
        for a in acl.aces
    )
    return Acl(aces, acl.revision)


def canonical_dacl_control(control: int) -> int:
    """The DACL control bits Windows keeps from a written descriptor.

    AUTO_INHERIT_REQ is a request, never stored; AUTO_INHERITED is kept only
    when the writer sent both (it decides whether children mark inherited ACEs).
    """
    both = sd.SE_DACL_AUTO_INHERITED | sd.SE_DACL_AUTO_INHERIT_REQ
    keep = control & sd.DACL_CONTROL & ~both
    if control & both == both:
        keep |= sd.SE_DACL_AUTO_INHERITED
    return keep


def required_access(secinfo: int, *, setting: bool) -> int:
    """The handle rights a query (or, with ``setting``, a set) of ``secinfo`` needs."""
    need = 0
    if secinfo & (OWNER_SECURITY_INFORMATION | GROUP_SECURITY_INFORMATION
                  | LABEL_SECURITY_INFORMATION):  # fmt: skip
        need |= AccessMask.WRITE_OWNER if setting else AccessMask.READ_CONTROL
    if secinfo & DACL_SECURITY_INFORMATION:
        need |= AccessMask.WRITE_DAC if setting else AccessMask.READ_CONTROL
    if secinfo & SACL_SECURITY_INFORMATION:
        need |= AccessMask.ACCESS_SYSTEM_SECURITY
        if setting:
            need |= AccessMask.WRITE_DAC  # as Windows (smbtorture3 SMB2-SACL)
    if not setting and secinfo & (ATTRIBUTE_SECURITY_INFORMATION | SCOPE_SECURITY_INFORMATION):
        need |= AccessMask.READ_CONTROL
    return need


def filter_parts(desc: SecurityDescriptor, secinfo: int) -> SecurityDescriptor:
    """Only the parts ``secinfo`` asks for, with the control bits that go with them."""
    want_dacl = bool(secinfo & DACL_SECURITY_INFORMATION)
    want_sacl = bool(secinfo & SACL_SECURITY_INFORMATION)
    control = sd.SE_SELF_RELATIVE
    if secinfo & OWNER_SECURITY_INFORMATION:
        control |= desc.control & sd.SE_OWNER_DEFAULTED
    if secinfo & GROUP_SECURITY_INFORMATION:
        control |= desc.control & sd.SE_GROUP_DEFAULTED
    if want_dacl:
        control |= desc.control & sd.DACL_CONTROL
    if want_sacl:
        control |= desc.control & sd.SACL_CONTROL
    return SecurityDescriptor(
        control,
        desc.owner if secinfo & OWNER_SECURITY_INFORMATION else None,
        desc.group if secinfo & GROUP_SECURITY_INFORMATION else None,
        desc.sacl if want_sacl else None,
        desc.dacl if want_dacl else None,
    )


def merge(
    old: SecurityDescriptor, new: SecurityDescriptor, secinfo: int, token: Token
) -> SecurityDescriptor:
    """The stored descriptor after SET_INFO of ``new``'s ``secinfo`` parts (Windows' rules).

    A part named in ``secinfo`` but absent from ``new`` is an absent (NULL) ACL,
    or, for owner and group, left unchanged. The PROTECTED/UNPROTECTED bits of
    ``secinfo`` set or clear SE_DACL_PROTECTED/SE_SACL_PROTECTED.
    """
    owner, group, control = old.owner, old.group, old.control
    dacl, sacl = old.dacl, old.sacl
    if secinfo & OWNER_SECURITY_INFORMATION and new.owner:
        if new.owner != old.owner and new.owner not in token.sids:
            raise NtStatusError(Status.INVALID_OWNER, f"owner {new.owner} not in the token")
        owner = new.owner
    if secinfo & GROUP_SECURITY_INFORMATION and new.group:
        group = new.group
    if secinfo & DACL_SECURITY_INFORMATION:
        control = (control & ~sd.DACL_CONTROL) | canonical_dacl_control(new.control)
        control |= sd.SE_DACL_PRESENT
        dacl = map_acl_generic(new.dacl) if new.dacl_present else None
        if secinfo & PROTECTED_DACL_SECURITY_INFORMATION:
            control |= sd.SE_DACL_PROTECTED
        elif secinfo & UNPROTECTED_DACL_SECURITY_INFORMATION:
            control &= ~sd.SE_DACL_PROTECTED
    if secinfo & SACL_SECURITY_INFORMATION:
        control = (control & ~sd.SACL_CONTROL) | (new.control & sd.SACL_CONTROL)
        sacl = map_acl_generic(new.sacl) if new.sacl_present else None
        if sacl is None:
            control &= ~sd.SE_SACL_PRESENT
        if secinfo & PROTECTED_SACL_SECURITY_INFORMATION:
            control |= sd.SE_SACL_PROTECTED
        elif secinfo & UNPROTECTED_SACL_SECURITY_INFORMATION:
            control &= ~sd.SE_SACL_PROTECTED
    return SecurityDescriptor(control | sd.SE_SELF_RELATIVE, owner, group, sacl, dacl)
