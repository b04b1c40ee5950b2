"""Requests the bus cannot decide (``BusUnavailable``: Redis out of reach,
or this node's registration lapsed) are an expected state on a Redis bus,
not a bug: they are answered with the exception's status, and the log says
so once when they start failing and once when the bus answers again, not
with a traceback per request (``gateway/busstate.py`` has the rest of the
node's side of a bus outage)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from oplock_bus.api import BusUnavailable, LockBus, NodeId

log = logging.getLogger("smbgw.bus")


class BusOutage:
    """Tells the log once when requests start failing for want of the bus,
    and once when the bus answers again, with how many were refused."""

    def __init__(self, node_id: NodeId, bus: LockBus) -> None:
        self.node_id = node_id
        self._confirmed = _confirmation(node_id, bus)
        self.since: float | None = None  # monotonic time the outage began
        self.last_failure = 0.0
        self.refused = 0  # requests refused in this outage
        self.outages = 0  # for tests and metrics

    def failed(self, error: BusUnavailable, what: str) -> None:
        """``what`` (a request, a close) could not be done: ``error``."""
        self.check()
        now = time.monotonic()
        self.last_failure = now
        if self.since is None:
            self.since = now
            self.refused = 0
            self.outages += 1
            log.warning(
                "node %s: the bus is unavailable (%s): %s and what else needs it fails "
                "(STATUS_INTERNAL_ERROR to clients) until it answers again",
                self.node_id, error, what,
            )  # fmt: skip
        else:
            log.debug("node %s: %s failed, the bus still unavailable: %s",
                      self.node_id, what, error)  # fmt: skip
        self.refused += 1

    def check(self) -> None:
        """End the outage once the bus confirmed this node after its last failure."""
        if self.since is not None and self._confirmed(self.last_failure):
            log.warning(
                "node %s: the bus answers again after %.1f s; %d request(s) failed meanwhile",
                self.node_id, time.monotonic() - self.since, self.refused,
            )  # fmt: skip
            self.since = None


def _confirmation(node_id: NodeId, bus: LockBus) -> Callable[[float], bool]:
    """Whether the bus has shown it works since a (monotonic) time: on Redis,
    a heartbeat of this node renewed after it (a real round trip); elsewhere
    (nothing there fails for want of a network) the bus vouching for it."""
    from oplock_bus.redis_bus import RedisBus

    liveness = bus.liveness if isinstance(bus, RedisBus) else None
    if liveness is None:
        return lambda _since: bus.vouches(node_id)

    def confirmed(since: float) -> bool:
        reg = liveness.nodes.get(node_id)
        renewed = reg.last_renewed if reg is not None else float("-inf")
        return renewed > since and liveness.vouches(node_id)

    return confirmed
