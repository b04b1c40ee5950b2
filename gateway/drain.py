"""Planned moves (issue 12, item 7): ``smbgw drain NODE``, and the node's side.

The command asks node NODE over the bus's broadcast facility (topic
``drain``, the node's id and epoch in the payload) and repeats the request
every second until the node answers: a broadcast is at most once (a node
whose subscriber is reconnecting misses it), a repeated one is not lost. The
node answers in a Redis hash, ``{nodes}:drain`` (``oplock_bus.liveness``),
because its state is not a message: the command, ``smbgw status`` and every
node's address takeover read it, and it must still hold when one of them
looks later.

The node, told to drain:

1. stops listening on every address, its own and any it took over (the
   takeover command's ``remove`` runs for those), keeping its connections;
2. enters itself as ``draining``: address takeover now treats it as a dead
   owner and no longer as a taker, so another takeover node listens on its
   addresses (``gateway/takeover.py``);
3. waits (at most ``HANDOVER_WAIT`` s) until those addresses are served by
   another node, so that the clients it drops next find them answered;
4. closes every client connection as a dropped transport: durable and
   persistent handles go to the bus, where their clients reclaim them
   through another node; handles only this node could give back are closed;
5. enters itself as ``drained``, and stays so: registered (its heartbeat
   goes on, so nobody reaps it), serving nobody, until it is stopped. A
   drained node that stops leaves its address entry behind, so the others
   go on serving its address while it is down; started again, it registers
   under a new epoch and gets its address back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from oplock_bus.api import BusUnavailable, NodeId
from oplock_bus.liveness import Liveness, read_drains, read_members
from oplock_bus.redis_store import RedisStore
from oplock_bus.status import tool_target

from .takeover import assignment

log = logging.getLogger("smbgw.drain")

DRAIN_TOPIC = "drain"
# Seconds a draining node waits for the others to serve its addresses before
# it drops its clients anyway: a taker's look (at most 0.5 s) and its takeover
# command (at most 10 s) fit in it.
HANDOVER_WAIT = 12.0
REQUEST_REPEAT = 1.0  # seconds between two requests while the node has not answered
POLL = 0.1  # seconds between two looks at the bus, on either side


# -- the node's side ----------------------------------------------------------------------


class Drainable(Protocol):
    """What a drain does to the node (``gateway.node.Node``)."""

    node_id: NodeId

    async def stop_listening(self) -> list[str]:
        """Close every listening socket, keep the connections; the addresses."""
        ...

    async def drop_clients(self) -> int:
        """Close every client connection as a dropped transport; how many."""
        ...


class NodeDrain:
    """Drains its node once when asked; asked again, lets the record answer."""

    def __init__(self, node: Drainable, liveness: Liveness, takeover: bool) -> None:
        self.node = node
        self.liveness = liveness
        self.takeover = takeover
        self.record: dict[str, Any] = {}  # as last entered on the bus
        self._gave_up: set[str] = set()  # addresses it stopped listening on
        self._task: asyncio.Task[None] | None = None

    def requested(self, payload: dict[str, Any]) -> None:
        """A drain request from the bus (any node's, any command's)."""
        node_id = self.node.node_id
        if payload.get("node") != node_id:
            return
        epoch = payload.get("epoch")
        if epoch is not None and epoch != self.liveness.epoch(node_id):
            return  # meant for an earlier life of this node id
        if self.record.get("state") == "drained":
            return
        if self._task is not None and not self._task.done():
            return  # the command repeats its request until it sees an answer
        self._task = asyncio.get_running_loop().create_task(self._run(), name="drain")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        try:
            await self._drain()
        except BusUnavailable as e:
            # Every step may be done again: the command's next request resumes it.
            log.error("node %s: drain interrupted: %s", self.node.node_id, e)
        except Exception:
            log.exception("node %s: drain failed", self.node.node_id)

    async def _drain(self) -> None:
        started = time.monotonic()
        node_id = self.node.node_id
        self._gave_up.update(await self.node.stop_listening())
        addresses = sorted(self._gave_up)
        if self.takeover:
            # Listening nowhere, as the others see (and status shows).
            await self.liveness.publish_serving(node_id, [])
        log.warning(
            "node %s drains: it accepts no new connections (stopped listening on %s)",
            node_id, ", ".join(addresses) or "nothing",
        )  # fmt: skip
        await self._enter(
            state="draining", since=self.record.get("since", time.time()),
            addresses=addresses, takeover=self.takeover,
        )  # fmt: skip
        handed = await self._hand_over(addresses) if self.takeover else {}
        closed = await self.node.drop_clients() + int(self.record.get("connections", 0))
        unserved = [a for a in addresses if a not in handed]
        await self._enter(state="drained", handed=handed, unserved=unserved, connections=closed)
        log.warning(
            "node %s drained in %.1f s: closed %d client connection(s); serving nobody "
            "until it is stopped", node_id, time.monotonic() - started, closed,
        )  # fmt: skip

    async def _enter(self, **changes: Any) -> None:
        record = {**self.record, **changes}
        await self.liveness.publish_drain(self.node.node_id, record)
        self.record = record

    async def _hand_over(self, addresses: list[str]) -> dict[str, NodeId]:
        """Wait until other nodes serve ``addresses`` (address -> node); not
        for those that no takeover node is left to take."""
        node_id = self.node.node_id
        deadline = time.monotonic() + HANDOVER_WAIT
        handed: dict[str, NodeId] = {}
        while True:
            view = await self.liveness.address_view()
            now = _served_by_others(view.served(), addresses, node_id)
            if now != handed:
                handed = now
                await self._enter(handed=handed)  # the command shows each as it moves
            expected = set(addresses) & set(assignment(view))
            if expected <= set(handed) or time.monotonic() > deadline:
                break
            await asyncio.sleep(POLL)
        for address in sorted(set(addresses) - set(handed)):
            why = "no time left" if address in expected else "no other takeover node to take it"
            log.warning("node %s: %s is not served by another node (%s)", node_id, address, why)
        return handed


def _served_by_others(
    served: dict[str, list[NodeId]], addresses: list[str], node_id: NodeId
) -> dict[str, NodeId]:
    out = {}
    for address in addresses:
        others = [n for n in served.get(address, []) if n != node_id]
        if others:
            out[address] = others[0]
    return out


# -- the command: smbgw drain --------------------------------------------------------------


class DrainFailed(Exception):
    """Ends the command with ``status`` and one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def main(url: str, node_id: str, password: str | None, timeout: float) -> int:
    """``smbgw drain``: 0 drained, 1 not in time (or the node went away),
    2 unknown node or unreachable bus; failures as one line on stderr."""
    try:
        asyncio.run(request(url, node_id, password, timeout, _say))
    except DrainFailed as e:
        print(f"smbgw drain: {e}", file=sys.stderr)
        return e.status
    except (ValueError, BusUnavailable) as e:
        print(f"smbgw drain: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("smbgw drain: interrupted; a request the node got stands", file=sys.stderr)
        return 130
    return 0


def _say(line: str) -> None:
    print(line, flush=True)  # one step at a time, also into a pipe


async def request(
    url: str, node_id: str, password: str | None, timeout: float, say: Callable[[str], None]
) -> None:
    """Ask ``node_id`` to drain and follow it until it is drained."""
    store = RedisStore(tool_target(url, password, "drain"))
    try:
        await store.start(subscriber=False)
        await _follow(store, node_id, timeout, say)
    finally:
        await store.stop()


async def _follow(
    store: RedisStore, node_id: str, timeout: float, say: Callable[[str], None]
) -> None:
    started = time.monotonic()
    epoch = await _epoch(store, node_id)
    progress = _Progress(node_id, say)
    next_ask = 0.0
    while True:
        record = (await read_drains(store)).get(node_id)
        if record is not None and record["epoch"] == epoch:
            progress.show(record)
            if record["state"] == "drained":
                say(
                    f"node {node_id} drained in {time.monotonic() - started:.1f} s; it stays "
                    "registered, serving nobody, until it is stopped"
                )
                return
        if time.monotonic() >= next_ask:
            # Again until drained: a lost request, or a drain the bus
            # interrupted half-way, goes on (the node ignores the repeats).
            await store.broadcast(DRAIN_TOPIC, {"node": node_id, "epoch": epoch})
            progress.asked(epoch)
            next_ask = time.monotonic() + REQUEST_REPEAT
        if time.monotonic() - started > timeout:
            raise DrainFailed(
                1, f"node {node_id} did not report drained within {timeout:g} s ({progress.last})"
            )
        await _still_there(store, node_id, epoch)
        await asyncio.sleep(POLL)


async def _epoch(store: RedisStore, node_id: str) -> int:
    """The epoch of live node ``node_id``; DrainFailed(2) if there is none."""
    members = await read_members(store)
    member = next((m for m in members if str(m["id"]) == node_id), None)
    if member is None:
        known = ", ".join(str(m["id"]) for m in members) or "none"
        raise DrainFailed(2, f"no node {node_id} on the bus (nodes: {known})")
    if not member["alive"]:
        raise DrainFailed(2, f"node {node_id} is dead (no heartbeat): nothing to drain")
    return int(member["epoch"])


async def _still_there(store: RedisStore, node_id: str, epoch: int) -> None:
    members = await read_members(store)
    member = next((m for m in members if str(m["id"]) == node_id), None)
    if member is None or not member["alive"]:
        raise DrainFailed(1, f"node {node_id} stopped before it reported drained")
    if int(member["epoch"]) != epoch:
        raise DrainFailed(1, f"node {node_id} registered again before it reported drained")


class _Progress:
    """Prints each step once, as the node's record shows it."""

    def __init__(self, node_id: str, say: Callable[[str], None]) -> None:
        self.node_id = node_id
        self.say = say
        self.seen: set[str] = set()
        # Why a timeout: a request stands, so a node that answers late drains then.
        self.last = "it did not answer; it drains if it still gets the request"

    def asked(self, epoch: int) -> None:
        self._once(f"asked node {self.node_id} (epoch {epoch}) to drain")

    def show(self, record: dict[str, Any]) -> None:
        for line in _steps(self.node_id, record):
            self._once(line)
        self.last = f"it is still {record['state']}"

    def _once(self, line: str) -> None:
        if line not in self.seen:
            self.seen.add(line)
            self.say(line)


def _steps(node_id: str, record: dict[str, Any]) -> Iterator[str]:
    """The lines a drain record stands for, in the order the node takes them."""
    closed = ", ".join(record.get("addresses", [])) or "nothing"
    yield f"node {node_id} is draining: no new connections (stopped listening on {closed})"
    for address, by in sorted(record.get("handed", {}).items()):
        yield f"{address} is served by node {by} now"
    if record["state"] != "drained":
        return
    without = "" if record.get("takeover") else f" (node {node_id} runs without --takeover)"
    for address in record.get("unserved", []):
        yield f"{address} is not served by another node{without}"
    yield (
        f"node {node_id} closed {record.get('connections', 0)} client connection(s); their "
        "durable and persistent handles wait on the bus for their clients"
    )
