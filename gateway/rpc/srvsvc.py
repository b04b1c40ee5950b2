"""The srvsvc interface (MS-SRVS), sans-IO: what ``smbclient -L``, ``net view``,
rpcclient and Explorer ask about the server and its shares.

* NetrShareEnum (opnum 15), levels 0, 1, 2, 501 and 502 (MS-SRVS 3.1.4.8);
* NetrShareGetInfo (opnum 16), levels 0, 1, 2, 501, 502, 1004 and 1005 (3.1.4.10);
* NetrServerGetInfo (opnum 21), levels 100, 101 and 102 (3.1.4.17).

A share's path is given as Windows (and smbd) show it, ``C:`` and the path with
backslashes; levels 501 and 1005 carry the share's flags (client-side caching,
SHI1005_FLAGS_ENCRYPT_DATA), level 502 its security descriptor.

NDR through impacket's ``srvs`` structures; the PDUs are ``dcerpc.DcerpcPipe``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from impacket.dcerpc.v5 import srvs
from impacket.dcerpc.v5.dtypes import NULL
from impacket.uuid import uuidtup_to_bin

from .dcerpc import level_error

__all__ = ["IPC_SHARE_TYPE", "SRVSVC_SYNTAX", "STYPE_DISKTREE", "ShareEntry", "Srvsvc"]

SRVSVC_SYNTAX = uuidtup_to_bin(("4B324FC8-1670-01D3-1278-5A47BF6EE188", "3.0"))

STYPE_DISKTREE = 0x00000000
STYPE_IPC = 0x00000003
STYPE_SPECIAL = 0x80000000
IPC_SHARE_TYPE = STYPE_IPC | STYPE_SPECIAL

# Win32 / NERR results carried in the stubs
ERROR_SUCCESS = 0
ERROR_INVALID_PARAMETER = 87
ERROR_INVALID_LEVEL = 124
NERR_NET_NAME_NOT_FOUND = 2310

# SV_TYPE_WORKSTATION | SERVER | SERVER_UNIX | SERVER_NT | POTENTIAL_BROWSER
_SV_TYPE = 0x00000001 | 0x00000002 | 0x00000800 | 0x00001000 | 0x00008000
_PLATFORM_ID_NT = 500


class ShareEntry(NamedTuple):
    """A share as srvsvc shows it. ``flags``: SHI1005 flags (caching mode, encryption);
    ``security_descriptor``: self-relative, for level 502 (none when empty)."""

    name: str
    type: int
    comment: str
    path: str = ""
    flags: int = 0
    security_descriptor: bytes = b""


class Srvsvc:
    """The srvsvc interface: shares and server information, fixed at pipe open.

    IPC$ is listed too (added with type STYPE_IPC|STYPE_SPECIAL if absent).
    """

    name = "srvsvc"
    syntax = SRVSVC_SYNTAX

    def __init__(self, shares: Iterable[ShareEntry], server_name: str, comment: str = "") -> None:
        self._shares = list(shares)
        if not any(s.name.upper() == "IPC$" for s in self._shares):
            self._shares.append(ShareEntry("IPC$", IPC_SHARE_TYPE, "IPC Service"))
        self._server_name = server_name
        self._comment = comment
        self.ops: Mapping[int, Callable[[bytes], bytes]] = {
            15: self._share_enum,
            16: self._share_get_info,
            21: self._server_get_info,
        }

    def _find_share(self, name: str) -> ShareEntry | None:
        key = name.rstrip("\x00").upper()
        for share in self._shares:
            if share.name.upper() == key:
                return share
        return None

    @staticmethod
    def _share_info(level: int, share: ShareEntry) -> Any:
        if level == 0:
            e = srvs.SHARE_INFO_0()
            e["shi0_netname"] = share.name + "\x00"
        elif level in (1, 501):
            e = srvs.SHARE_INFO_1() if level == 1 else srvs.SHARE_INFO_501()
            p = f"shi{level}_"
            e[p + "netname"] = share.name + "\x00"
            e[p + "type"] = share.type
            e[p + "remark"] = share.comment + "\x00"
            if level == 501:
                e["shi501_flags"] = share.flags
        elif level in (2, 502):
            e = srvs.SHARE_INFO_2() if level == 2 else srvs.SHARE_INFO_502()
            p = f"shi{level}_"
            e[p + "netname"] = share.name + "\x00"
            e[p + "type"] = share.type
            e[p + "remark"] = share.comment + "\x00"
            e[p + "permissions"] = 0
            e[p + "max_uses"] = 0xFFFFFFFF
            e[p + "current_uses"] = 0
            e[p + "path"] = share.path + "\x00"
            e[p + "passwd"] = "\x00"  # no share-level password: empty, as smbd answers
            if level == 502:
                sd = share.security_descriptor
                e["shi502_reserved"] = len(sd)
                e["shi502_security_descriptor"] = list(sd) if sd else NULL
        elif level == 1004:
            e = srvs.SHARE_INFO_1004()
            e["shi1004_remark"] = share.comment + "\x00"
        elif level == 1005:
            e = srvs.SHARE_INFO_1005()
            e["shi1005_flags"] = share.flags
        else:
            return None
        return e

    def _share_enum(self, stub: bytes) -> bytes:
        req = srvs.NetrShareEnum(stub)
        level = int(req["InfoStruct"]["Level"])
        tag = int(req["InfoStruct"]["ShareInfo"]["tag"])
        resp = srvs.NetrShareEnumResponse()
        resp["InfoStruct"]["Level"] = level
        resp["InfoStruct"]["ShareInfo"]["tag"] = tag
        arm = f"Level{tag}"
        error = ERROR_SUCCESS
        if tag != level:
            error = ERROR_INVALID_PARAMETER
        elif level not in (0, 1, 2, 501, 502):
            error = ERROR_INVALID_LEVEL
        if error:
            resp["InfoStruct"]["ShareInfo"][arm] = NULL
            resp["TotalEntries"] = 0
        else:
            container = resp["InfoStruct"]["ShareInfo"][arm]
            container["EntriesRead"] = len(self._shares)
            for share in self._shares:
                container["Buffer"].append(self._share_info(level, share))
            resp["TotalEntries"] = len(self._shares)
        # All entries are always returned, so a resume handle (if asked for) is 0.
        resume_asked = req.fields["ResumeHandle"].fields["ReferentID"] != 0
        resp["ResumeHandle"] = 0 if resume_asked else NULL
        resp["ErrorCode"] = error
        data: bytes = resp.getData()
        return data

    def _share_get_info(self, stub: bytes) -> bytes:
        req = srvs.NetrShareGetInfo(stub)
        level = int(req["Level"])
        share = self._find_share(str(req["NetName"]))
        if share is None:
            return level_error(level, srvs.SHARE_INFO.union, NERR_NET_NAME_NOT_FOUND)
        info = self._share_info(level, share)
        if info is None or level not in srvs.SHARE_INFO.union:
            return level_error(level, srvs.SHARE_INFO.union, ERROR_INVALID_LEVEL)
        resp = srvs.NetrShareGetInfoResponse()
        resp["InfoStruct"]["tag"] = level
        resp["InfoStruct"][srvs.SHARE_INFO.union[level][0]] = info
        resp["ErrorCode"] = ERROR_SUCCESS
        data: bytes = resp.getData()
        return data

    def _server_get_info(self, stub: bytes) -> bytes:
        req = srvs.NetrServerGetInfo(stub)
        level = int(req["Level"])
        if level == 100:
            info = srvs.SERVER_INFO_100()
        elif level == 101:
            info = srvs.SERVER_INFO_101()
        elif level == 102:
            info = srvs.SERVER_INFO_102()
        else:
            return level_error(level, srvs.SERVER_INFO.union, ERROR_INVALID_LEVEL)
        p = f"sv{level}_"
        info[p + "platform_id"] = _PLATFORM_ID_NT
        info[p + "name"] = self._server_name + "\x00"
        if level >= 101:
            info[p + "version_major"] = 6
            info[p + "version_minor"] = 1
            info[p + "type"] = _SV_TYPE
            info[p + "comment"] = self._comment + "\x00"
        if level == 102:
            info["sv102_users"] = 0xFFFFFFFF
            info["sv102_disc"] = 15
            info["sv102_hidden"] = 0
            info["sv102_announce"] = 240
            info["sv102_anndelta"] = 3000
            info["sv102_licenses"] = 0
            info["sv102_userpath"] = "C:\\\x00"
        resp = srvs.NetrServerGetInfoResponse()
        resp["InfoStruct"]["tag"] = level
        resp["InfoStruct"][f"ServerInfo{level}"] = info
        resp["ErrorCode"] = ERROR_SUCCESS
        data: bytes = resp.getData()
        return data
