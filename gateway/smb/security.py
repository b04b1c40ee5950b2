"""Security descriptors as SMB handles see them: who may read or change a file's
descriptor, and CREATE's and rename's access checks, for the session's user.

Where descriptors come from and how they are kept is the filesystem layer's
(``gateway.fs.descriptors``); this module ties them to sessions and opens.
"""

from __future__ import annotations

import functools
import os

from ..fs import acl, sd
from ..fs.acl import GROUP_SECURITY_INFORMATION, OWNER_SECURITY_INFORMATION, Token
from ..fs.descriptors import load, new_descriptor, open_maximal_access
from ..fs.vfs import ShareFS
from ..protocol.constants import AccessMask, NtStatusError, Status
from .state import Open, Session


@functools.lru_cache(maxsize=1024)
def _token(username: str, guest: bool) -> Token:
    return acl.token_for(username, guest=guest)


def token_of(session: Session) -> Token:
    return _token(session.username, session.is_guest or session.is_anonymous)


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
