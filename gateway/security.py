"""Security descriptors of files: where they come from, who may read or change them.

Stored descriptors. What a client writes (the SecD create context, SET_INFO with
SecurityInformation) is kept in the file's ``user.smbgw.sd`` xattr (see
``ShareFS.read_sd``) and returned as written, owner, group and DACL alike. A
new file or directory without a SecD context gets one from its parent's
inheritable ACEs (``acl.create_descriptor``), owned by the creating user.

The default descriptor, for a file nothing was ever written to (made on the
host, or before descriptors were kept): owner and group are the file's Unix ids
in Samba's unix-mapping form (S-1-22-1-uid, S-1-22-2-gid); the DACL gives that
owner, SYSTEM and Everyone full control, object and container inherit on a
directory. So until someone writes a descriptor, the share's own settings
(``read_only``, ``guest_ok``) are the only limit, as before descriptors were
kept; set a DACL on the share root to restrict what is created below it. There
is no SACL: no session holds SeSecurityPrivilege, so none can be read or set.

Access checks run against the authenticated user's token (``acl.token_for``) at
every CREATE, on every node, from the descriptor on the volume: granted rights
are those of the descriptor, bounded by the share's. DELETE is also granted by
FILE_DELETE_CHILD on the parent directory and FILE_READ_ATTRIBUTES by
FILE_LIST_DIRECTORY on it (MS-FSA 2.1.5.1.2.1, as NTFS does). Creating needs
FILE_ADD_FILE (a file) or FILE_ADD_SUBDIRECTORY (a directory) on the parent;
the creator then gets the access it asked for, whatever the new descriptor says.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

from . import acl, sd
from .acl import (
    DACL_SECURITY_INFORMATION,
    EVERYONE,
    GROUP_SECURITY_INFORMATION,
    LOCAL_SYSTEM,
    OWNER_SECURITY_INFORMATION,
    SACL_SECURITY_INFORMATION,
    Token,
)
from .protocol.constants import FILE_ALL_ACCESS, AccessMask, NtStatusError, Status
from .sd import SE_DACL_PRESENT, SE_SACL_PRESENT, SE_SELF_RELATIVE, Ace, SecurityDescriptor
from .vfs import ShareFS

if TYPE_CHECKING:
    from .state import Open, Session

__all__ = [
    "DACL_SECURITY_INFORMATION", "GROUP_SECURITY_INFORMATION", "OWNER_SECURITY_INFORMATION",
    "SACL_SECURITY_INFORMATION", "SE_DACL_PRESENT", "SE_SACL_PRESENT", "SE_SELF_RELATIVE",
    "check_open", "check_rename", "default_descriptor", "handle_maximal_access", "load",
    "new_descriptor", "open_maximal_access", "query_security", "set_security", "sid_bytes",
    "store_new", "token_of",
]  # fmt: skip

UNIX_USER = "S-1-22-1-"  # + uid
UNIX_GROUP = "S-1-22-2-"  # + gid
sid_bytes = sd.sid_bytes


@functools.lru_cache(maxsize=1024)
def _token(username: str, guest: bool) -> Token:
    return acl.token_for(username, guest=guest)


def token_of(session: Session) -> Token:
    return _token(session.username, session.is_guest or session.is_anonymous)


def default_sd(uid: int, gid: int, is_dir: bool) -> SecurityDescriptor:
    flags = sd.OBJECT_INHERIT_ACE | sd.CONTAINER_INHERIT_ACE if is_dir else 0
    owner = f"{UNIX_USER}{uid}"
    dacl = sd.acl_of(
        Ace(sd.ACCESS_ALLOWED, flags, FILE_ALL_ACCESS, owner),
        Ace(sd.ACCESS_ALLOWED, flags, FILE_ALL_ACCESS, LOCAL_SYSTEM),
        Ace(sd.ACCESS_ALLOWED, flags, FILE_ALL_ACCESS, EVERYONE),
    )
    return SecurityDescriptor(SE_SELF_RELATIVE | SE_DACL_PRESENT, owner, f"{UNIX_GROUP}{gid}",
                              None, dacl)  # fmt: skip


def default_descriptor(uid: int, gid: int, is_dir: bool, additional: int) -> bytes:
    """The default descriptor, encoded, with only the parts ``additional`` asks for."""
    return acl.filter_parts(default_sd(uid, gid, is_dir), additional).encode()


def load(fs: ShareFS, target: str | int, is_dir: bool) -> SecurityDescriptor:
    """The stored descriptor of a file, or its default. A corrupt one refuses access."""
    raw = fs.read_sd(target)
    if raw is None:
        return default_sd(*fs.owner_of(target), is_dir)
    try:
        return sd.parse(raw)
    except sd.SdError:
        # Unreadable means unknown rights: deny rather than fall back to the open default.
        return SecurityDescriptor(SE_SELF_RELATIVE | SE_DACL_PRESENT, None, None, None,
                                  sd.acl_of())  # fmt: skip


def _parent(fs: ShareFS, path: str) -> str | None:
    return None if path == fs.root else os.path.dirname(path)


def _parent_maximal(fs: ShareFS, token: Token, path: str) -> int:
    parent = _parent(fs, path)
    if parent is None:
        return 0
    return acl.maximal_access(load(fs, parent, True), token)


def open_maximal_access(
    fs: ShareFS, token: Token, target: str | int, path: str, is_dir: bool, share_max: int
) -> int:
    """Every right ``token`` may open an existing object with (before READONLY)."""
    rights = acl.maximal_access(load(fs, target, is_dir), token) & share_max
    from_parent = (AccessMask.DELETE | AccessMask.FILE_READ_ATTRIBUTES) & share_max
    if rights & from_parent != from_parent:
        parent = _parent_maximal(fs, token, path)
        if parent & AccessMask.FILE_DELETE_CHILD:
            rights |= AccessMask.DELETE & share_max
        if parent & acl.FILE_LIST_DIRECTORY:
            rights |= AccessMask.FILE_READ_ATTRIBUTES & share_max
    return rights


def new_descriptor(
    fs: ShareFS, token: Token, path: str, is_dir: bool, secd: bytes | None, desired: int
) -> bytes:
    """The encoded descriptor of an object about to be created at ``path``.

    Refuses (ACCESS_DENIED) when the parent does not let the user add it, and
    checks the SecD context: parsable, an owner from the user's token, and no
    SACL or ACCESS_SYSTEM_SECURITY (no session holds the privilege).
    """
    acl.check_privileges(desired)
    creator = sd.parse(secd) if secd else None
    if creator is not None and creator.sacl_present:
        raise NtStatusError(Status.PRIVILEGE_NOT_HELD, "a SACL needs SeSecurityPrivilege")
    if creator is not None and not fs.keeps_xattrs:
        raise NtStatusError(Status.NOT_SUPPORTED, "no xattrs: descriptors cannot be kept")
    parent_path = _parent(fs, path) or fs.root
    parent = load(fs, parent_path, True)
    need = acl.FILE_ADD_SUBDIRECTORY if is_dir else acl.FILE_ADD_FILE
    if not acl.maximal_access(parent, token) & need:
        raise NtStatusError(Status.ACCESS_DENIED, "the parent refuses to add this")
    return acl.create_descriptor(parent, creator, token, is_dir=is_dir).encode()


def store_new(fs: ShareFS, path: str, data: bytes) -> None:
    """Keep the descriptor of a just-created object (nothing where xattrs are missing)."""
    if fs.keeps_xattrs:
        fs.write_sd(path, data)


def _target(op: Open) -> str | int:
    return op.meta_target


def query_security(op: Open, additional: int) -> bytes:
    """The descriptor of an open file for QUERY_INFO (SMB2_0_INFO_SECURITY)."""
    fs = op.tree.fs
    if fs is None:
        raise NtStatusError(Status.INVALID_PARAMETER)
    if acl.required_access(additional, setting=False) & ~op.access:
        raise NtStatusError(Status.ACCESS_DENIED)
    return acl.filter_parts(load(fs, _target(op), op.is_dir), additional).encode()


def set_security(op: Open, additional: int, data: bytes) -> None:
    """SET_INFO (SMB2_0_INFO_SECURITY): merge the parts named into the stored descriptor."""
    fs = op.tree.fs
    if fs is None:
        raise NtStatusError(Status.INVALID_PARAMETER)
    new = sd.parse(data)
    # An owner or group named but not sent is no change, so it needs no right.
    if new.owner is None:
        additional &= ~OWNER_SECURITY_INFORMATION
    if new.group is None:
        additional &= ~GROUP_SECURITY_INFORMATION
    if acl.required_access(additional, setting=True) & ~op.access:
        raise NtStatusError(Status.ACCESS_DENIED)
    old = load(fs, _target(op), op.is_dir)
    merged = acl.merge(old, new, additional, token_of(op.tree.session))
    fs.write_sd(_target(op), merged.encode())


def check_open(
    fs: ShareFS,
    session: Session,
    path: str,
    exists_as_dir: bool | None,
    desired: int,
    make_dir: bool,
    secd: bytes | None,
    share_max: int,
    *,
    overwrite: bool = False,
) -> tuple[int, bytes | None]:
    """CREATE's access check: (maximal rights, descriptor to store if it creates).

    ``exists_as_dir`` is None when the object does not exist yet. The maximal
    rights of a creation are the share's: the creator gets what it asks for.
    Overwriting (``overwrite``: SUPERSEDE, OVERWRITE, OVERWRITE_IF) an existing
    file needs FILE_WRITE_DATA on it, asked for or not (smb2.acls.OVERWRITE_READ_ONLY_FILE).
    """
    acl.check_privileges(desired)
    token = token_of(session)
    if exists_as_dir is None:
        return share_max, new_descriptor(fs, token, path, make_dir, secd, desired)
    maximal = open_maximal_access(fs, token, path, path, exists_as_dir, share_max)
    if overwrite and not maximal & AccessMask.FILE_WRITE_DATA:
        raise NtStatusError(Status.ACCESS_DENIED, "overwrite without FILE_WRITE_DATA")
    return maximal, None


def handle_maximal_access(op: Open) -> int:
    """The MxAc answer: what the handle's user could open the object with now."""
    fs = op.tree.fs
    if fs is None:
        return op.tree.maximal_access
    token = token_of(op.tree.session)
    return open_maximal_access(fs, token, _target(op), op.host_path, op.is_dir,
                               op.tree.maximal_access)  # fmt: skip


def check_rename(op: Open, new_path: str, replacing: bool) -> None:
    """A rename adds a name to the target directory and, replacing, deletes the old
    target: the user needs FILE_ADD_FILE (FILE_ADD_SUBDIRECTORY for a directory)
    there, and DELETE on what it replaces (MS-FSA 2.1.5.14.11)."""
    fs = op.tree.fs
    if fs is None:
        return
    token = token_of(op.tree.session)
    parent = os.path.dirname(new_path)
    need = acl.FILE_ADD_SUBDIRECTORY if op.is_dir else acl.FILE_ADD_FILE
    if not acl.maximal_access(load(fs, parent, True), token) & need:
        raise NtStatusError(Status.ACCESS_DENIED, "the target directory refuses the name")
    if replacing:
        rights = open_maximal_access(fs, token, new_path, new_path, False, op.tree.maximal_access)
        if not rights & AccessMask.DELETE:
            raise NtStatusError(Status.ACCESS_DENIED, "the replaced file refuses DELETE")
