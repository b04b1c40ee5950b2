"""Address takeover (issue 12, item 6): a live node serves a dead node's listen
address until that node registers again, as CTDB moves public addresses.

Every node started with ``takeover`` enters its listen address on the bus
(``oplock_bus.liveness``, ``{nodes}:addresses``). When such a node's heartbeat
lapses, its address is an orphan; each live takeover node computes the same
assignment from the same bus state (rendezvous hashing over the live takeover
nodes), and the one chosen runs the takeover command (``add ADDRESS PORT``),
then listens on the address with the same port. Clients that reconnect to the
dead node's address reach the cluster through it. When the owner registers
again the address is no longer an orphan: the taker stops listening on it,
closes the connections it accepted there and runs ``remove ADDRESS PORT``;
the owner, which may have started meanwhile, waits for that before it
listens (``listen_own``). A node drained on purpose (``gateway/drain.py``)
counts as a dead owner and is no taker: its addresses go to the others
while it is still registered.

Two nodes never mean to serve one address: the assignment is deterministic.
While views differ for a moment (a node sees a death one tick before
another), or the dead node's socket is still open (a frozen process keeps its
listener on one host), binding fails: that is logged once and tried again
at the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import shlex
import time
from typing import Protocol

from oplock_bus.api import BusUnavailable, NodeId
from oplock_bus.liveness import AddressView, Liveness

log = logging.getLogger("smbgw.takeover")

COMMAND_TIMEOUT = 10.0  # seconds a takeover command may run before it counts as failed
COMMAND_RETRY = 2.0  # seconds before a command that failed is run again for that address
OWN_ADDRESS_GRACE = 2.0  # seconds an owner retries a busy address nobody says it holds


class Listeners(Protocol):
    """What the node lets takeover do with its listening sockets."""

    async def listen(self, host: str, port: int) -> None: ...

    async def unlisten(self, host: str, port: int, drop_clients: bool = True) -> int:
        """Stop listening and (unless told not to) close the connections
        accepted there; how many were closed."""
        ...

    def listening(self) -> list[str]: ...


def split_address(address: str) -> tuple[str, int]:
    """``"127.0.0.1:445"`` (or ``"::1:445"``, as a node enters it) -> host, port."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def watch_interval(ttl: float) -> float:
    """As often as the bus's own watcher looks for dead nodes."""
    return min(0.5, ttl / 8)


# -- who serves what: the same answer on every node ---------------------------------------


def orphans(view: AddressView) -> dict[str, NodeId]:
    """address -> its dead (or drained) owner, for each takeover node's
    address that no serving node has as its own."""
    active = view.active()
    owned = {rec["address"] for rec in active.values()}
    return {
        entry["address"]: node
        for node, entry in sorted(view.entries.items())
        if node not in active and entry["address"] not in owned
    }


def rendezvous(address: str, nodes: list[NodeId]) -> NodeId:
    """The node of ``nodes`` with the highest hash of (address, node): every
    node picks the same one, addresses spread evenly, and one moves only when
    its node goes or a node joins that outranks it."""
    return max(nodes, key=lambda n: hashlib.sha256(f"{address}\0{n}".encode()).digest())


def assignment(view: AddressView) -> dict[str, NodeId]:
    """address -> the serving takeover node that is to serve it."""
    takers = sorted(node for node, rec in view.active().items() if rec.get("takeover"))
    if not takers:
        return {}
    return {address: rendezvous(address, takers) for address in orphans(view)}


# -- the takeover command -----------------------------------------------------------------


async def run_command(argv: list[str], action: str, host: str, port: int) -> str | None:
    """Run ``argv action host port``; None if it succeeded, else why not (one line)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, action, host, str(port),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    except OSError as e:
        return f"cannot run {argv[0]}: {e.strerror or e}"
    try:
        _, err = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return f"{argv[0]} {action} timed out after {COMMAND_TIMEOUT:.0f} s"
    if proc.returncode == 0:
        return None
    lines = err.decode(errors="replace").strip().splitlines()
    said = f": {lines[-1]}" if lines else ""
    return f"{argv[0]} {action} exited with status {proc.returncode}{said}"


# -- the node's side ---------------------------------------------------------------------


class AddressTakeover:
    """Takes and gives back other nodes' addresses, one tick at a time."""

    def __init__(
        self, node_id: NodeId, liveness: Liveness, listeners: Listeners, command: str | None
    ) -> None:
        self.node_id = node_id
        self.liveness = liveness
        self.listeners = listeners
        self.command = shlex.split(command) if command else None
        self.interval = watch_interval(liveness.ttl)
        self.held: dict[str, NodeId] = {}  # address -> the node it was taken from
        # Addresses the command added: kept while binding is retried, so that
        # the command runs once per takeover, not once per tick.
        self._added: set[str] = set()
        self._failed: dict[str, str] = {}  # address -> the failure logged last
        self._retry_at: dict[str, float] = {}  # address -> monotonic time of the next try
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="takeover")

    async def stop(self, why: str = "this node stops", drop_clients: bool = True) -> None:
        """Take nothing more and give back what we hold; ``drop_clients``
        False leaves the connections accepted there to the caller (a drain
        closes them once the addresses are served again)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for address in sorted(self.held):
            await self._give_back(address, why, drop_clients)
        for address in sorted(self._added):
            await self._remove(address)

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except BusUnavailable as e:
                log.debug("address takeover: %s", e)
            except Exception:
                log.exception("address takeover failed")
            await asyncio.sleep(self.interval)

    async def tick(self) -> None:
        if not self.liveness.vouches(self.node_id):
            # Cut off or frozen: the others count us dead and are about to
            # take what we hold, our own address aside.
            for address in sorted(self.held):
                await self._give_back(address, "the bus cannot vouch for this node")
            return
        view = await self.liveness.address_view()
        assigned = assignment(view)
        want = {address for address, node in assigned.items() if node == self.node_id}
        for address in sorted(set(self.held) - want):
            await self._give_back(address, _why_not(address, view, assigned))
        owners = orphans(view)
        for address in sorted(want - set(self.held)):
            gone = "drained" if owners[address] in view.draining else "no heartbeat"
            await self._take(address, owners[address], gone)
        for address in sorted(self._added - want):
            await self._remove(address)  # added, never bound, no longer ours to take
        for address in set(self._failed) - want:
            self._forget_failure(address)
        await self.liveness.publish_serving(self.node_id, self.listeners.listening())

    async def _take(self, address: str, owner: NodeId, gone: str) -> None:
        if time.monotonic() < self._retry_at.get(address, 0.0):
            return
        host, port = split_address(address)
        if self.command is not None and address not in self._added:
            failed = await run_command(self.command, "add", host, port)
            if failed is not None:
                self._failure(address, owner, f"takeover command failed: {failed}", COMMAND_RETRY)
                return
            self._added.add(address)
        try:
            await self.listeners.listen(host, port)
        except OSError as e:
            why = "address in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
            self._failure(address, owner, f"cannot listen: {why}", 0.0)
            return
        self.held[address] = owner
        self._forget_failure(address)
        log.warning("node %s took over %s of node %s (%s)", self.node_id, address, owner, gone)

    async def _give_back(self, address: str, why: str, drop_clients: bool = True) -> None:
        owner = self.held.pop(address)
        host, port = split_address(address)
        closed = await self.listeners.unlisten(host, port, drop_clients)
        await self._remove(address)
        log.warning(
            "node %s gave %s back (node %s's), %s; closed %d connection(s) accepted on it",
            self.node_id, address, owner, why, closed,
        )  # fmt: skip

    async def _remove(self, address: str) -> None:
        """Run the command's ``remove`` for an address it added."""
        if self.command is None or address not in self._added:
            return
        self._added.discard(address)
        host, port = split_address(address)
        failed = await run_command(self.command, "remove", host, port)
        if failed is not None:
            log.error("node %s: takeover command failed: %s", self.node_id, failed)

    def _failure(self, address: str, owner: NodeId, why: str, retry_after: float) -> None:
        """One line per kind of failure, not one per tick."""
        self._retry_at[address] = time.monotonic() + retry_after
        if self._failed.get(address) != why:
            self._failed[address] = why
            log.error(
                "node %s cannot take over %s of node %s: %s; trying again",
                self.node_id, address, owner, why,
            )  # fmt: skip

    def _forget_failure(self, address: str) -> None:
        self._failed.pop(address, None)
        self._retry_at.pop(address, None)


def _why_not(address: str, view: AddressView, assigned: dict[str, NodeId]) -> str:
    owner = view.owners().get(address)
    if owner in view.active():
        return f"node {owner} is registered again"
    if address in assigned:
        return f"node {assigned[address]} serves it now"
    return "nobody asks for it any more"


async def release_own(command: str, node_id: NodeId, host: str, port: int) -> None:
    """A drained node's own address leaves its host (``remove``), so that the
    node taking it over can add it on another host without a duplicate."""
    failed = await run_command(shlex.split(command), "remove", host, port)
    if failed is not None:
        log.error("node %s: takeover command failed: %s", node_id, failed)


async def _add_own(command: str | None, node_id: NodeId, host: str, port: int) -> bool:
    """Put our own address back on this host (``add``), as a drain removed
    it; whether the command did."""
    if command is None:
        return False
    failed = await run_command(shlex.split(command), "add", host, port)
    if failed is not None:
        log.error("node %s: takeover command failed: %s", node_id, failed)
        return False
    log.warning("node %s: %s:%d was not on this host; the takeover command added it",
                node_id, host, port)  # fmt: skip
    return True


async def listen_own(
    listeners: Listeners, liveness: Liveness, node_id: NodeId, host: str, port: int,
    command: str | None = None,
) -> None:  # fmt: skip
    """Listen on our own address. A node that took it over while we were down
    gives it back once it sees us registered; until then binding fails, and
    we try again (one log line), for at most as long as that can take. An
    address not on this host (a drain with a ``command`` removed it) is added
    with the command, once."""
    address = f"{host}:{port}"
    # Entered as movable before serving: a node that dies right after it
    # started must not leave its address unknown to the others.
    if await liveness.wait_registered(node_id):
        with contextlib.suppress(BusUnavailable):
            await liveness.publish_serving(node_id, [])
    started = time.monotonic()
    limit = liveness.ttl + 2 * COMMAND_TIMEOUT + 5.0
    holder: str | None = None
    while True:
        try:
            await listeners.listen(host, port)
        except OSError as e:
            waited = time.monotonic() - started
            if e.errno == errno.EADDRNOTAVAIL and await _add_own(command, node_id, host, port):
                command = None  # once
                continue
            if e.errno != errno.EADDRINUSE or waited > limit:
                raise
            found = await _holder(liveness, node_id, address)
            if found is None and waited > OWN_ADDRESS_GRACE:
                raise  # nobody of the cluster has it: another program does
            if found is not None and holder is None:
                log.warning(
                    "node %s: %s is still served by node %s, which took it over; "
                    "waiting for it to give the address back", node_id, address, found,
                )  # fmt: skip
            holder = holder or found
            await asyncio.sleep(0.1)
            continue
        if holder is not None:
            log.warning(
                "node %s: node %s gave %s back after %.1f s",
                node_id, holder, address, time.monotonic() - started,
            )  # fmt: skip
        return


async def _holder(liveness: Liveness, node_id: NodeId, address: str) -> str | None:
    """The live node that says it listens on ``address`` (``"?"`` if the bus
    cannot tell now), or None."""
    try:
        view = await liveness.address_view()
    except BusUnavailable:
        return "?"
    return next((n for n in view.served().get(address, []) if n != node_id), None)
