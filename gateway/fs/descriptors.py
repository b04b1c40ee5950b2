"""Security descriptors of files: where they come from and how they are kept.

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

import os

from ..protocol.constants import FILE_ALL_ACCESS, AccessMask, NtStatusError, Status
from . import acl, sd
from .acl import EVERYONE, LOCAL_SYSTEM, Token
from .sd import SE_DACL_PRESENT, SE_SELF_RELATIVE, Ace, SecurityDescriptor
from .vfs import ShareFS

UNIX_USER = "S-1-22-1-"  # + uid
UNIX_GROUP = "S-1-22-2-"  # + gid


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
