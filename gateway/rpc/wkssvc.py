"""The wkssvc interface (MS-WKST), sans-IO: NetrWkstaGetInfo (opnum 0, MS-WKST 3.2.4.1).

Levels 100 and 101 name the server, its workgroup and the version it claims
(6.1, as srvsvc's NetrServerGetInfo). Level 102 (101 plus the count of users
logged on) is for administrators only on Windows and smbd; no user of this
server is one, so it answers ERROR_ACCESS_DENIED. Other levels:
ERROR_INVALID_LEVEL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from impacket.dcerpc.v5 import wkst
from impacket.uuid import uuidtup_to_bin

from .dcerpc import level_error

__all__ = ["WKSSVC_SYNTAX", "Wkssvc"]

WKSSVC_SYNTAX = uuidtup_to_bin(("6BFFD098-A112-3610-9833-46C3F87E345A", "1.0"))

ERROR_SUCCESS = 0
ERROR_ACCESS_DENIED = 5
ERROR_INVALID_LEVEL = 124
_PLATFORM_ID_NT = 500


class Wkssvc:
    """The wkssvc interface of one pipe open."""

    name = "wkssvc"
    syntax = WKSSVC_SYNTAX

    def __init__(self, server_name: str, workgroup: str) -> None:
        self._server_name = server_name
        self._workgroup = workgroup
        self.ops: Mapping[int, Callable[[bytes], bytes]] = {0: self._get_info}

    def _get_info(self, stub: bytes) -> bytes:
        level = int(wkst.NetrWkstaGetInfo(stub)["Level"])
        if level == 102:
            return level_error(level, wkst.WKSTA_INFO.union, ERROR_ACCESS_DENIED)
        if level not in (100, 101):
            return level_error(level, wkst.WKSTA_INFO.union, ERROR_INVALID_LEVEL)
        resp = wkst.NetrWkstaGetInfoResponse()
        resp["WkstaInfo"]["tag"] = level
        info = resp["WkstaInfo"][f"WkstaInfo{level}"]
        p = f"wki{level}_"
        info[p + "platform_id"] = _PLATFORM_ID_NT
        info[p + "computername"] = self._server_name + "\x00"
        info[p + "langroup"] = self._workgroup + "\x00"
        info[p + "ver_major"] = 6
        info[p + "ver_minor"] = 1
        if level == 101:
            info["wki101_lanroot"] = "\x00"
        resp["ErrorCode"] = ERROR_SUCCESS
        data: bytes = resp.getData()
        return data
