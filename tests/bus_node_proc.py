"""A bus node in a process of its own, for the node-death test.

``python -m tests.bus_node_proc URL NODE_ID TTL`` opens file ``vol:oplock``
with a batch oplock and file ``vol:lock`` with an exclusive lock on bytes
0-99, prints READY and then lives until killed. Its client never answers a
break: only its death can free what it holds.
"""

from __future__ import annotations

import asyncio
import sys

from oplock_bus import make_bus
from oplock_bus.api import OPLOCK_BATCH, STATUS_SUCCESS, BreakNotice, LockRange, OpenRequest


async def main(url: str, node: str, ttl: float) -> None:
    bus = make_bus(url, node_id=node, node_ttl=ttl)
    await bus.start()

    async def ignore(notice: BreakNotice) -> None:
        print(f"BREAK {notice.open_id}", flush=True)

    bus.register_node(node, ignore)
    opened = await bus.open(
        OpenRequest(f"{node}/o", node, "vol:oplock", 0x3, 0x7, oplock=OPLOCK_BATCH)
    )
    assert opened.status == STATUS_SUCCESS and opened.oplock == OPLOCK_BATCH, opened
    locked = await bus.open(OpenRequest(f"{node}/l", node, "vol:lock", 0x3, 0x7))
    assert locked.status == STATUS_SUCCESS, locked
    status = await bus.lock("vol:lock", f"{node}/l", [LockRange(0, 100, True)], wait=False)
    assert status == STATUS_SUCCESS, hex(status)
    print("READY", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
