"""What a backend must provide: versioned documents, wake-ups, break delivery.

The coordinator (``oplock_bus.coordinator``) holds every rule and every
wait; a backend only stores JSON-able documents and moves small messages.

A Redis backend maps these one to one:

- ``load``/``compare_and_set``: GET plus a Lua script that writes (or
  deletes) only if the stored version token still matches. Keys of one file
  carry one hash tag, so the script works on Redis Cluster.
- ``subscribe``/``publish``: pub/sub channels. Subscribe *before* reading
  state, so a change committed in between is not missed.
- ``register_node``/``deliver``: one channel (or stream) per node; the node
  runs its handler for each message.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from .api import BreakHandler, BreakNotice, NodeId

T = TypeVar("T")
Doc = dict[str, Any]


class ConflictRetriesExhausted(RuntimeError):
    """A document kept changing under us; treat the bus as unavailable."""


class Subscription(abc.ABC):
    """Wake-ups on some channels, counted from the moment it was made."""

    @abc.abstractmethod
    async def wait(self, timeout: float | None) -> bool:
        """True if a channel was published since the last wait (or creation)."""

    async def ready(self) -> None:
        """Return once publications are certain to reach this subscription.

        In-process that is at once; over Redis it is the SUBSCRIBE reply.
        """
        return None

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Unsubscribed(Subscription):
    """Stands in while the coordinator evaluates before subscribing."""

    async def wait(self, timeout: float | None) -> bool:
        raise AssertionError("evaluate again after subscribing instead of waiting")

    def close(self) -> None:
        return None


UNSUBSCRIBED: Subscription = _Unsubscribed()


class Store(abc.ABC):
    max_retries = 100
    # True where subscribing costs a round trip: the coordinator then first
    # evaluates without listening and subscribes only when it has to wait,
    # evaluating once more after the subscription is confirmed (a change
    # committed before it would otherwise be missed).
    lazy_subscribe = False
    # True where transact(publish=...) publishes in the commit's round trip.
    publishes_on_commit = False
    # True where transact(send=...) sends the notices for other nodes in the
    # commit's round trip; the caller then delivers only those is_local().
    sends_on_commit = False
    # True where a transaction never yields to the event loop: a
    # cancellation cannot then land between its commit and its caller.
    commits_without_yielding = False

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    # -- documents -------------------------------------------------------------

    @abc.abstractmethod
    async def load(self, key: str) -> tuple[str | None, Doc | None]:
        """The document and its version token; (None, None) if absent."""

    @abc.abstractmethod
    async def compare_and_set(self, key: str, token: str | None, doc: Doc | None) -> bool:
        """Write ``doc`` (None deletes) if the stored token is still ``token``.

        Tokens are opaque and never reused for a key, so a document deleted
        and re-created in between does not pass for the one that was read.
        """

    @abc.abstractmethod
    async def keys(self, prefix: str) -> list[str]: ...

    def peek(self, key: str) -> Doc | None:
        """The last value of ``key`` seen here, at no cost; it may be stale
        (None: nothing known). Only for facts that, once true, stay true."""
        return None

    def knows(self, key: str) -> bool:
        """Whether a transaction on ``key`` can start without reading it first."""
        return True

    async def prefetch(self, key: str) -> None:
        """Read ``key`` now, so that a transaction on it need not."""
        return None

    async def transact(
        self,
        key: str,
        fn: Callable[[Doc | None], tuple[Doc | None, T]],
        publish: Callable[[T], list[str]] | None = None,
        send: Callable[[T], list[BreakNotice]] | None = None,
    ) -> T:
        """Read, apply the pure ``fn``, write back if the version held; retry otherwise.

        ``fn`` may run several times and must not have side effects. A
        result that leaves the document unchanged writes nothing.
        ``publish`` is only honoured by stores that set ``publishes_on_commit``,
        ``send`` by those that set ``sends_on_commit``.
        """
        for _ in range(self.max_retries):
            token, doc = await self.load(key)
            new_doc, result = fn(doc)
            if _same(doc, new_doc):
                return result
            if await self.compare_and_set(key, token, new_doc):
                return result
        raise ConflictRetriesExhausted(key)

    # -- wake-ups --------------------------------------------------------------

    @abc.abstractmethod
    def subscribe(self, channels: Iterable[str]) -> Subscription: ...

    @abc.abstractmethod
    async def publish(self, channels: Iterable[str]) -> None: ...

    async def persist(self) -> None:
        """Make what was just written survive the loss of this server as far
        as the backend can (a disconnected durable open lives nowhere else).
        Nothing to do for a store in this process's memory."""
        return None

    def subscribed(self, channel: str) -> bool:
        """Whether a subscription to ``channel`` would be ready at once (a
        lazy subscriber then subscribes before evaluating: it costs nothing)."""
        return not self.lazy_subscribe

    def prepare_subscribe(self, channels: Iterable[str]) -> None:
        """A subscription to these channels is coming: start it now, so its
        round trip overlaps whatever the caller does next."""
        return None

    # -- break delivery ----------------------------------------------------------

    @abc.abstractmethod
    def register_node(self, node_id: NodeId, handler: BreakHandler) -> None: ...

    def is_local(self, node_id: NodeId) -> bool:
        """Whether deliver() runs this node's handler in the caller's task."""
        return True

    @abc.abstractmethod
    async def deliver(self, notice: BreakNotice) -> None:
        """Hand the notice to its node (whose handler returns at once).

        In-process this runs the handler in the calling task; a shared
        store sends a message to the node, which runs its handler there.
        Notices about one open or lease never race: the next one only
        arises from the state change that answered the previous one.
        """


def _same(a: Doc | None, b: Doc | None) -> bool:
    if a is None or b is None:
        return a is b
    # Structural equality of JSON-able data: no serialisation on the hot path.
    return a == b
