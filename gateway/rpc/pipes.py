"""Which interface a named pipe of IPC$ serves, and what an open of it is given. Sans-IO.

The pipe names are those Windows and smbd accept on IPC$ for these
interfaces: ``srvsvc``, ``wkssvc``, and both ``lsarpc`` and ``lsass`` for
lsarpc (MS-LSAT 2.1 names ``\\PIPE\\lsarpc``; both answer a BIND with the
secondary address ``\\PIPE\\lsass``).  An open takes what it answers from
at that moment: the server's shares and users, the session's user.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from ..config import CSC_MODES, Config, ShareConfig
from ..fs import sd
from ..fs.acl import EVERYONE
from ..protocol.constants import FILE_ALL_ACCESS, FILE_GENERIC_EXECUTE, FILE_GENERIC_READ
from .dcerpc import DcerpcPipe
from .lsarpc import Lsarpc
from .names import Directory
from .srvsvc import STYPE_DISKTREE, ShareEntry, Srvsvc
from .wkssvc import Wkssvc

__all__ = ["PIPE_NAMES", "Caller", "ServerView", "open_pipe", "server_view"]

PIPE_NAMES = frozenset({"srvsvc", "wkssvc", "lsarpc", "lsass"})

SHI1005_FLAGS_ENCRYPT_DATA = 0x00008000
# csc manual, documents, programs, none: CSC_CACHE_MANUAL_REINT .. CSC_CACHE_NONE
# (MS-SRVS 2.2.4.29)
_CSC_FLAGS = dict(zip(CSC_MODES, (0x00, 0x10, 0x20, 0x30), strict=True))

# The NetBIOS domain NTLM announces (gateway.auth): a standalone server's workgroup.
WORKGROUP = "WORKGROUP"


@dataclass(frozen=True)
class ServerView:
    """What the pipes say about the server."""

    server_name: str
    comment: str
    shares: Sequence[ShareEntry]
    users: Sequence[str]  # the users file's names


@dataclass(frozen=True)
class Caller:
    """The session that opens the pipe."""

    username: str  # as the users file spells it; "" for anonymous
    guest: bool  # guest or anonymous


def open_pipe(name: str, server: ServerView, caller: Caller) -> DcerpcPipe | None:
    """A new open of pipe ``name`` (lower case, no leading backslash); None: no such pipe."""
    if name == "srvsvc":
        return DcerpcPipe(Srvsvc(server.shares, server.server_name, server.comment),
                          "\\PIPE\\srvsvc")  # fmt: skip
    if name == "wkssvc":
        return DcerpcPipe(Wkssvc(server.server_name, WORKGROUP), "\\PIPE\\wkssvc")
    if name in ("lsarpc", "lsass"):
        directory = Directory(server.server_name, server.users)
        user = directory.user_account(caller.username, caller.guest)
        return DcerpcPipe(Lsarpc(directory, WORKGROUP, user), "\\PIPE\\lsass")
    return None


def windows_path(path: str) -> str:
    """A share's directory as Windows shows a path, and smbd a POSIX one: ``C:\\srv\\share``."""
    return "C:" + os.path.abspath(path).replace("/", "\\")


def share_descriptor(read_only: bool) -> bytes:
    """The share's own permissions as a descriptor (SHARE_INFO_502): the gateway
    keeps no share ACL, so what its settings allow, to Everyone: full control,
    or read and execute on a read-only share. Files' own descriptors decide the rest."""
    mask = FILE_GENERIC_READ | FILE_GENERIC_EXECUTE if read_only else FILE_ALL_ACCESS
    dacl = sd.acl_of(sd.Ace(sd.ACCESS_ALLOWED, 0, mask, EVERYONE))
    return sd.SecurityDescriptor(control=sd.SE_DACL_PRESENT | sd.SE_SELF_RELATIVE,
                                 dacl=dacl).encode()  # fmt: skip


def _share_entry(share: ShareConfig) -> ShareEntry:
    flags = _CSC_FLAGS[share.csc] | (SHI1005_FLAGS_ENCRYPT_DATA if share.encrypt else 0)
    return ShareEntry(share.name, STYPE_DISKTREE, share.comment, windows_path(share.path),
                      flags, share_descriptor(share.read_only))  # fmt: skip


def server_view(config: Config) -> ServerView:
    return ServerView(
        config.server_name,
        config.server_comment,
        [_share_entry(s) for s in config.shares],
        tuple(config.users),
    )
