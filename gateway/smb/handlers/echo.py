"""ECHO (MS-SMB2 2.2.28-2.2.29)."""

from __future__ import annotations

import struct

from ...protocol.constants import Status
from ...protocol.wire import check_size
from ..context import Reply, RequestContext

_RESP = struct.pack("<HH", 4, 0)


async def handle_echo(ctx: RequestContext) -> Reply:
    check_size(ctx.body, 4, 4)
    return Reply(Status.SUCCESS, _RESP)
