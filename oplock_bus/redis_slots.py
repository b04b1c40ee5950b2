"""Per-slot bus generation keys, for bus recovery on Redis Cluster.

On Redis Cluster a script may touch keys of one hash slot only (Redis
Cluster specification, "Keys distribution model" and "Hash tags"), and the
bus generation ``{nodes}:gen`` lives in the slot of ``{nodes}``. So there
the CAS script, and every read of a record, checks a copy of the
generation kept in the record's own slot: ``gen:{<tag>}``, ``<tag>`` a
short string whose CRC16 lands on that slot. A master that lost its data
(restarted empty, or a failover to a replica that missed writes) lost
those copies too, so nothing is granted in its slots before a recovery has
rebuilt them; a clean failover keeps them, and nothing happens beyond the
reconnect.

A slot gets its copy when a record there is first used (:func:`claim`):
the bit of the slot in ``{nodes}:slots`` is set first, under the open
generation, then the copy. So a copy missing where the bit is set was lost
(or is being made this instant: :func:`claim` looks again for a moment),
and only the slots in use cost a key. A recovery marks the copies of the
slots in use ``"<gen> r"`` after ``BEGIN_RECOVERY`` (re-assertions pass,
ordinary writes wait) and ``"<gen>"`` once every node has re-asserted,
before ``{nodes}:gen`` itself opens (:mod:`oplock_bus.recovery`).

A failover to a replica that has the copies but missed the master's last
writes leaves them intact, so it is told by who serves the slots instead
(:class:`Topology`, one CLUSTER NODES per heartbeat; Redis Cluster
specification, "Replica election and promotion" and "Configuration
handling, propagation, and failovers"): a node that was a replica and now
serves slots as a master was promoted, and a recovery rebuilds what it may
lack.
"""

from __future__ import annotations

import asyncio
import functools
from binascii import crc_hqx
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ResponseError

from . import redis_scripts as scripts

SLOTS = 16384
# How long a claim whose slot another node has just claimed waits for that
# node's copy before calling the copy lost.
CLAIM_RACE = 0.05


@functools.cache
def slot_tags() -> tuple[str, ...]:
    """For each slot, the first hex number (as text) whose CRC16 lands on it
    (about 0.1 s, once per process)."""
    tags: list[str] = [""] * SLOTS
    left, n = SLOTS, 0
    while left:
        text = format(n, "x")
        slot = crc_hqx(text.encode(), 0) % SLOTS
        if not tags[slot]:
            tags[slot] = text
            left -= 1
        n += 1
    return tuple(tags)


def slot_of(rkey: str) -> int:
    return int(key_slot(rkey.encode()))


def gen_key(namespace: str, rkey: str) -> str:
    """The generation key in the slot of ``rkey`` (a full key name)."""
    return f"{namespace}gen:{{{slot_tags()[slot_of(rkey)]}}}"


async def claim(client: RedisCluster, namespace: str, rkey: str, want: str) -> bool:
    """A write or read of ``rkey`` found its slot's copy missing, or not
    ``want`` (the generation key's value the caller works under). True if
    it is ``want`` now (try again): the slot's first use under the open
    generation, a recovery's mark left behind, or a re-assertion meeting an
    older generation's copy (every slot it touches is the recovery's).
    False: the copy was lost, or the generation is not ``want``."""
    slot = slot_of(rkey)
    copy = gen_key(namespace, rkey)
    keys = [namespace + "{nodes}:gen", namespace + "{nodes}:slots"]
    before = int(await scripts.claim_slot(client, keys, [want, slot]))
    if before < 0:
        return False
    base = want.removesuffix(" r")
    if want != base:
        return await _set_slots(client, namespace, [slot], want, "", base) == 1
    if before == 0:
        await client.set(copy, want)
        return True
    # In use: lost, unless another node is making it this instant.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CLAIM_RACE
    while True:
        got = await client.get(copy)
        if got == f"{want} r".encode():  # the recovery ended, this mark stayed
            return await _set_slots(client, namespace, [slot], want, "=" + want + " r", "") == 1
        if got is not None or loop.time() > deadline:
            return bool(got == want.encode())
        await asyncio.sleep(CLAIM_RACE / 5)


async def used(client: RedisCluster, namespace: str) -> list[int]:
    """The slots whose copy was made (``{nodes}:slots``)."""
    raw = await client.get(namespace + "{nodes}:slots")
    bits = raw if isinstance(raw, bytes) else b""
    return [
        i * 8 + j
        for i, byte in enumerate(bits) if byte
        for j in range(8) if byte & (0x80 >> j)
    ]  # fmt: skip


async def mark(
    client: RedisCluster, namespace: str, value: str, *, held: str = "", never: str = ""
) -> int:
    """Set the copy of every slot in use to ``value`` where it holds
    ``held`` ('' : any) and not ``never``; how many hold ``value`` now. Conditional,
    so that a node late to a recovery neither reopens nor closes again what
    others moved on."""
    slots = await used(client, namespace)
    return await _set_slots(client, namespace, slots, value, "=" + held if held else "", never)


async def _set_slots(
    client: RedisCluster, namespace: str, slots: list[int], value: str, only: str, never: str
) -> int:
    if not slots:
        return 0
    tags = slot_tags()
    await client.initialize()
    attempt = 0
    while True:
        by_master: dict[str, tuple[Any, list[str]]] = {}
        for slot in slots:
            node = client.nodes_manager.get_node_from_slot(slot)
            by_master.setdefault(node.name, (node, []))[1].append(
                f"{namespace}gen:{{{tags[slot]}}}"
            )
        try:
            # One script per master over its slots: one command per slot
            # would cost about 30 µs of this process's CPU each.
            done = 0
            for node, keys in by_master.values():

                async def call(*command: Any, node: Any = node) -> Any:
                    return await client.execute_command(*command, target_nodes=node)

                done += int(await scripts.slot_gens.run(call, [], [value, only, never, *keys]))
            return done
        except ResponseError as e:
            # A slot moved meanwhile ("non local key"): read the map again.
            attempt += 1
            if "non local key" not in str(e) or attempt == 3:
                raise
            await client.nodes_manager.initialize()


@dataclass(frozen=True)
class Topology:
    """Who serves the slots, as one server's CLUSTER NODES tells it."""

    masters: frozenset[str]  # node ids of the masters that serve slots
    replica_of: Mapping[str, str]  # replica node id -> its master's
    # The highest config epoch among those masters. A promotion always
    # takes a config epoch above every other (the spec's failover), so a
    # view with a lower one is older than the last one taken (a server
    # that has not heard of the promotion yet) and is not taken.
    epoch: int

    @classmethod
    def parse(cls, nodes: Mapping[str, Mapping[str, Any]]) -> Topology:
        """From CLUSTER NODES as redis-py parses it (address -> fields)."""
        masters: set[str] = set()
        replica_of: dict[str, str] = {}
        epoch = 0
        for node in nodes.values():
            flags = str(node["flags"]).split(",")
            if "master" in flags and node["slots"]:
                masters.add(str(node["node_id"]))
                epoch = max(epoch, int(node["epoch"]))
            elif "slave" in flags and node["master_id"] != "-":
                replica_of[str(node["node_id"])] = str(node["master_id"])
        return cls(frozenset(masters), replica_of, epoch)

    def newer(self, other: Topology) -> bool:
        """Whether this view may be taken after ``other`` (not older)."""
        return self.epoch >= other.epoch

    def promoted(self, before: Topology) -> dict[str, str]:
        """Masters of this view that ``before`` knew as replicas: promoted
        node id -> the master it replaced. Slots moved between masters
        (resharding migrates the keys with them) are no promotion."""
        return {n: before.replica_of[n] for n in sorted(self.masters) if n in before.replica_of}


async def read_topology(client: RedisCluster, rkey: str) -> Topology:
    """CLUSTER NODES from the master serving ``rkey``'s slot (the one the
    caller has just reached: a stopped server elsewhere cannot hold it up)."""
    await client.initialize()
    node = client.nodes_manager.get_node_from_slot(slot_of(rkey))
    nodes = await client.execute_command("CLUSTER NODES", target_nodes=node)
    return Topology.parse(nodes)


__all__ = [
    "SLOTS", "Topology", "claim", "gen_key", "mark", "read_topology", "slot_tags", "used",
]  # fmt: skip
