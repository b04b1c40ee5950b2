"""An oplock ack worked out while its client decides (Coordinator._prepare_ack)
must never be committed on a record that changed since.

Three bus instances (three nodes) on one real redis-server. A holds a Batch
oplock through node 1; B's open through node 2 breaks it, and node 1 works
out A's ack as the break leaves: it would grant B. Before A answers, B's
client gives up (its CREATE is cancelled) and B's request leaves the record.
A's ack must be decided again on the record as it now is: committing the
ack worked out before would grant B's open to nobody, and that phantom open
would refuse D, who later asks for the file with no sharing once A closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from oplock_bus import make_bus
from oplock_bus.api import OPLOCK_BATCH, OPLOCK_II, STATUS_SUCCESS
from oplock_bus.redis_bus import RedisBus
from tests.conftest_bus import Client, run, settle
from tests.redis_fixtures import isolated, shared_url


async def _bus(url: str) -> RedisBus:
    bus = make_bus(url, node_id="t", break_timeout=30.0)
    assert isinstance(bus, RedisBus)
    await bus.start()
    return bus


async def _until(check: Callable[[], object], what: str) -> None:
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


def test_ack_worked_out_ahead_is_not_used_on_a_changed_record() -> None:
    async def body() -> None:
        url = isolated(shared_url("redis"))
        one, two, three = await _bus(url), await _bus(url), await _bus(url)
        a = Client(one, "A", policy="ignore")  # A answers by hand, once B gave up
        b, d = Client(two, "B"), Client(three, "D")
        assert (await a.open("h", oplock=OPLOCK_BATCH)).oplock == OPLOCK_BATCH
        b_open = asyncio.ensure_future(b.open("h"))
        await _until(lambda: a.notices, "A got its break")
        await settle()  # node 1 has worked out the ack by now
        assert await _waiting(one) == 1
        b_open.cancel()
        for _ in range(200):
            if await _waiting(one) == 0:
                break
            await asyncio.sleep(0.01)
        assert await _waiting(one) == 0, "B's cancelled open stayed in the record"

        ack = await one.ack_oplock("vol:1", "A/h", OPLOCK_II)
        assert ack.status == STATUS_SUCCESS
        await one.close("vol:1", "A/h")
        alone = await asyncio.wait_for(d.open("h", share=0), 5.0)
        assert alone.status == STATUS_SUCCESS
        for bus in (one, two, three):
            await bus.stop()

    run(body())


async def _waiting(bus: RedisBus) -> int:
    """Opens waiting in the record of the one file."""
    files = (await bus.snapshot())["files"]
    return sum(len(doc.get("pending", {})) for doc in files.values())
