"""Broadcasts: small messages from one node to the others over the bus."""

from __future__ import annotations

import asyncio
from typing import Any

from oplock_bus import make_bus

from .conftest_bus import run
from .redis_fixtures import isolated, shared_url


def test_a_broadcast_reaches_the_other_nodes_but_not_its_sender() -> None:
    async def body() -> None:
        url = isolated(shared_url("redis"))
        buses = [make_bus(url, node_id=f"n{i}") for i in range(3)]
        got: list[list[dict[str, Any]]] = [[], [], []]
        for i, bus in enumerate(buses):
            bus.on_broadcast("notify", got[i].append)
            await bus.start()
        await buses[0].broadcast("notify", {"path": "a/b.txt", "action": 1})
        await buses[0].broadcast("other-topic", {"ignored": True})
        for _ in range(100):
            if got[1] and got[2]:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # time enough for a wrong delivery to show up
        assert got[1] == got[2] == [{"path": "a/b.txt", "action": 1}]
        assert got[0] == []
        for bus in buses:
            await bus.stop()

    run(body())


def test_the_in_process_bus_has_nobody_to_tell() -> None:
    async def body() -> None:
        bus = make_bus(None, node_id="solo")
        got: list[dict[str, Any]] = []
        bus.on_broadcast("notify", got.append)
        await bus.start()
        await bus.broadcast("notify", {"x": 1})
        await asyncio.sleep(0.05)
        assert got == []
        await bus.stop()

    run(body())
