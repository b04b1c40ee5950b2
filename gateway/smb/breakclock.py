"""Breaks this node sent and how long their clients took to acknowledge them.

``breaks.deliver`` notes each break it sends, the OPLOCK_BREAK handler each
acknowledgement it receives; the node's metrics (gateway/metrics.py) read the
counts and get each latency through ``on_ack``. Plain numbers and a callback:
the SMB layer needs no metrics library, and a fake node keeps one for free.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

OPLOCK = "oplock"
LEASE = "lease"
KINDS = (OPLOCK, LEASE)

# A break whose acknowledgement never comes (the client went away, the bus
# forced it to none at its deadline) is forgotten after this long, so the
# table stays bounded; the longest break timeout worth measuring fits in it.
MAX_AGE = 600.0


class BreakClock:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.sent: dict[str, int] = dict.fromkeys(KINDS, 0)
        # Told each acknowledged break: its kind and the seconds from the
        # notification to the acknowledgement.
        self.on_ack: Callable[[str, float], None] | None = None
        # Breaks that wait for an acknowledgement, oldest first: key -> (kind, sent at).
        self._waiting: OrderedDict[Hashable, tuple[str, float]] = OrderedDict()

    @property
    def awaiting_ack(self) -> int:
        self._forget_old(self._clock())
        return len(self._waiting)

    def sent_oplock(self, open_id: str, ack_required: bool) -> None:
        self._sent(OPLOCK, (OPLOCK, open_id), ack_required)

    def sent_lease(self, client_guid: bytes, lease_key: bytes, ack_required: bool) -> None:
        self._sent(LEASE, (LEASE, client_guid, lease_key), ack_required)

    def acked_oplock(self, open_id: str) -> None:
        self._acked((OPLOCK, open_id))

    def acked_lease(self, client_guid: bytes, lease_key: bytes) -> None:
        self._acked((LEASE, client_guid, lease_key))

    def _sent(self, kind: str, key: Hashable, ack_required: bool) -> None:
        self.sent[kind] += 1
        if not ack_required:  # II to none, or a lease losing only R: nothing to time
            return
        now = self._clock()
        self._forget_old(now)
        # A break sent again to the same holder restarts its clock: the
        # latency measured is that of the notification the client answers.
        self._waiting.pop(key, None)
        self._waiting[key] = (kind, now)

    def _acked(self, key: Hashable) -> None:
        entry = self._waiting.pop(key, None)
        if entry is None:  # an ack for a break we did not time (or forgot)
            return
        kind, sent_at = entry
        if self.on_ack is not None:
            self.on_ack(kind, self._clock() - sent_at)

    def _forget_old(self, now: float) -> None:
        while self._waiting:
            key, (_kind, sent_at) = next(iter(self._waiting.items()))
            if now - sent_at <= MAX_AGE:
                return
            del self._waiting[key]
