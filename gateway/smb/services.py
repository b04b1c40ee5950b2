"""What the SMB layer may ask of its node.

Handlers, sessions and opens need a few things that belong to the node as a
whole: its configuration and shares, the lock bus, the node-wide tables of
opens and sessions, parked durable handles, and change notification. They ask
for them through this Protocol, never through ``gateway.node.Node`` itself, so
the SMB layer sits below the node and a handler runs against a small fake in a
unit test (``tests/fakes.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from oplock_bus.api import LockBus

    from ..config import Config
    from ..fs.vfs import ShareFS
    from .breakclock import BreakClock
    from .busoutage import BusOutage
    from .durable import DurableTable
    from .notify import NotifyHub
    from .relay import Relays
    from .replay import ReplayCache
    from .state import Open, Session, TreeConnect


class NodeServices(Protocol):
    config: Config
    bus: LockBus
    node_id: str
    server_guid: bytes
    allows_guest: bool  # some share lets guests in, so the logon may end as guest
    share_fs: dict[str, ShareFS]  # by lower-case share name
    opens: dict[str, Open]  # every open of the node, by bus open id
    sessions: dict[int, Session]  # every session of the node, whatever its channels
    durable: DurableTable  # opens whose connection dropped, kept for a reconnect
    replays: ReplayCache  # DH2Q creates a replayed CREATE may get back
    notify_hub: NotifyHub
    break_clock: BreakClock  # breaks sent and acknowledged, for the node's metrics
    # BusUnavailable is expected while Redis is away: told once per outage.
    bus_outage: BusOutage
    relays: Relays | None  # binds to other nodes' sessions (relay.py); None without them

    def next_id(self) -> int:
        """A new number, unique on this node (FileIds, probe open ids)."""
        ...

    def vouched(self) -> bool:
        """Whether the bus still vouches for this node's grants (``LockBus.vouches``).

        Asked right before a request touches the volume: a node frozen or cut
        off for most of its TTL may have lost its grants to another node, and
        must not act on a request it had queued. False also starts dropping
        every client of the node (they reconnect, to another node if need be).
        """
        ...

    def notify_change(
        self, tree: TreeConnect, host_path: str, action: str, is_dir: bool, mask: int = 0
    ) -> None:
        """Report a change made through ``tree`` to watches here and on other nodes;
        ``mask`` 0 takes the action's usual CompletionFilter bits."""
        ...

    def notify_rename(
        self, tree: TreeConnect, old_path: str, new_path: str, is_dir: bool
    ) -> None: ...
