"""Joining a bus: one live process per node id, and probes the nodes compare.

``LockBus.joined`` refuses a node id a live node holds; ``publish_probe``
returns what the other live nodes entered under a name. Run on every
backend (the Redis ones on real servers, one fresh namespace per test).
"""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from oplock_bus import make_bus
from oplock_bus.api import BreakNotice, LockBus, NodeIdInUse
from oplock_bus.redis_bus import RedisBus
from tests.conftest_bus import BACKENDS, REDIS_BACKENDS, run
from tests.redis_fixtures import isolated, shared_url


async def _ignore(notice: BreakNotice) -> None:
    return None


async def _node(url: str, node_id: str, address: str) -> LockBus:
    """A started bus with one node on it, as a gateway process has."""
    bus = make_bus(url, node_id=node_id, node_address=address, node_ttl=5.0)
    bus.register_node(node_id, _ignore)
    await bus.start()
    return bus


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_probe_returns_what_the_other_live_nodes_entered(backend: str) -> None:
    async def body() -> None:
        if backend == "memory":
            # Nodes sharing one in-process bus (one process, as in tests).
            bus = make_bus("memory://")
            await bus.start()
            assert await bus.publish_probe("n1", "share:data", "5eed:2") == {}
            assert await bus.publish_probe("n2", "share:data", "5eed:2") == {"n1": "5eed:2"}
            assert await bus.publish_probe("n3", "share:data", "5eee:2") == {
                "n1": "5eed:2", "n2": "5eed:2",
            }  # fmt: skip
            assert await bus.publish_probe("n3", "share:other", "1:2") == {}
            await bus.stop()
            return
        url = isolated(shared_url(backend))
        one = await _node(url, "n1", "192.0.2.1:445")
        two = await _node(url, "n2", "192.0.2.2:445")
        await one.joined("n1")
        await two.joined("n2")
        assert await one.publish_probe("n1", "share:data", "5eed:2") == {}
        assert await two.publish_probe("n2", "share:data", "5eee:2") == {"n1": "5eed:2"}
        assert await one.publish_probe("n1", "share:other", "1:2") == {}
        # A node that stopped counts no more: a changed setting is not held
        # against the nodes that come after it.
        await one.stop()
        assert await two.publish_probe("n2", "share:data", "5eee:2") == {}
        three = await _node(url, "n1", "192.0.2.1:445")  # n1 again, another process
        await three.joined("n1")
        assert await three.publish_probe("n1", "share:data", "5eee:2") == {"n2": "5eee:2"}
        await two.stop()
        await three.stop()

    run(body(), 30)


@pytest.mark.parametrize("backend", REDIS_BACKENDS)
def test_a_live_nodes_id_is_refused_and_left_alone(backend: str) -> None:
    async def body() -> None:
        url = isolated(shared_url(backend))
        first = await _node(url, "n1", "192.0.2.1:445")
        await first.joined("n1")
        assert isinstance(first, RedisBus)
        await first.liveness.publish_serving("n1", ["192.0.2.1:445"])  # as with --takeover
        await first.publish_probe("n1", "share:data", "5eed:2")

        second = await _node(url, "n1", "192.0.2.9:445")
        with pytest.raises(NodeIdInUse) as refused:
            await second.joined("n1")
        assert refused.value.address == "192.0.2.1:445"
        assert str(refused.value) == "node id n1 is in use by a live node at 192.0.2.1:445"
        await second.stop()

        # The refused process took nothing of the live node's with it.
        members = await first.liveness.address_view()
        assert set(members.alive) == {"n1"}
        assert members.alive["n1"]["address"] == "192.0.2.1:445"
        assert "n1" in members.entries
        assert first.vouches("n1")
        other = await _node(url, "n2", "192.0.2.2:445")
        await other.joined("n2")
        assert await other.publish_probe("n2", "share:data", "5eed:2") == {"n1": "5eed:2"}

        # Stopped cleanly, its id is free at once.
        await first.stop()
        again = await _node(url, "n1", "192.0.2.9:445")
        await again.joined("n1")
        await again.stop()
        await other.stop()

    run(body(), 30)


def test_a_registration_whose_reply_was_lost_is_not_refused() -> None:
    """Redis ran the registration but its reply never came: the retry finds
    the record of this same process, not another one holding the id."""

    async def body() -> None:
        url = isolated(shared_url("redis"))
        bus = await _node(url, "n1", "192.0.2.1:445")
        await bus.joined("n1")
        assert isinstance(bus, RedisBus)
        reg = bus.liveness.nodes["n1"]
        before = reg.epoch
        await bus.liveness._register_once(reg)  # as the retry after a lost reply
        assert reg.epoch > before and reg.refused is None
        await bus.stop()
        target = bus.redis_store.target
        (host, port), *_ = target.hosts
        client = Redis(host=host, port=port)
        assert await client.hlen(f"{target.namespace}{{nodes}}:members") == 0
        await client.aclose()

    run(body(), 30)
