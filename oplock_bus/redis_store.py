"""The Redis ``Store``: versioned documents, wake-ups and break delivery.

Data model (every name starts with the URL's namespace, ``smbgw:`` by
default; ``{...}`` is the Redis Cluster hash tag):

- ``file:{<file>}``: a file's state, the string ``"<token> <json>"``. The
  token changes on every write and is never reused (random per store plus
  a counter), so the CAS script can tell the document it read from any
  later one, deleted-and-recreated included.
- ``lease:{<client-guid>:<lease-key>}``: which file a lease is bound to.
- channels ``file:{<file>}`` (a file changed), ``waiter:{<file>}:<id>`` (a
  blocking lock was decided) and ``node:<node-id>`` (break notices for
  that node). Payloads of the first two are empty.
- ``{nodes}:*``: node liveness, see :mod:`oplock_bus.liveness`;
  ``{nodes}:gen``, the bus generation, see :mod:`oplock_bus.recovery`;
  on Redis Cluster ``gen:{<tag>}``, its copy in a hash slot in use, and
  ``{nodes}:slots``, those slots, see :mod:`oplock_bus.redis_slots`.

Connection failures surface as :class:`~oplock_bus.api.BusUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import json
import logging
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    ReadOnlyError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import redis_scripts as scripts
from . import redis_slots
from .api import (
    BreakHandler,
    BreakNotice,
    BroadcastHandler,
    BusUnavailable,
    GenerationChanged,
    NodeId,
)
from .redis_messages import decode_message, encode_notice, message_prefix
from .redis_pipe import CommandPipe, NotSent
from .redis_pubsub import PubSubHub
from .redis_url import Connector, RedisTarget
from .store import ConflictRetriesExhausted, Doc, Store, Subscription

log = logging.getLogger("oplock_bus.redis")

T = TypeVar("T")

_UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterDownError,
    TryAgainError,
    ReadOnlyError,  # a failover demoted the server we still talk to
    BusyLoadingError,
    OSError,
)


@contextlib.contextmanager
def bus_errors() -> Iterator[None]:
    task = asyncio.current_task()
    cancels = task.cancelling() if task is not None else 0
    try:
        yield
    except _UNAVAILABLE as e:
        raise BusUnavailable(f"Redis unreachable: {e}") from e
    if task is not None and task.cancelling() > cancels:
        # A cancellation arrived while redis-py was inside asyncio.wait_for,
        # which (Python 3.11) returns the result and drops the cancellation
        # when both happen at once. Waiters rely on being cancellable.
        raise asyncio.CancelledError()


class LostReply(BusUnavailable):
    """A CAS was sent and its answer lost with the connection: it may or may
    not have been written. ``value`` is what it wrote (its token says whether
    the record holds it), ``result`` the caller's result had it landed."""

    def __init__(
        self, rkey: str, value: str, results: dict[int, Any], result: Any = None
    ) -> None:
        super().__init__(f"the answer to a write of {rkey} was lost with the connection")
        self.rkey = rkey
        self.value = value
        self.results = results  # by caller (its future's id), for the batch
        self.result = result


def _decode(raw: bytes | None) -> tuple[str | None, Doc | None]:
    if raw is None:
        return None, None
    token, _, text = raw.partition(b" ")
    doc: Doc = json.loads(text)
    return token.decode(), doc


# Set in the task of a node re-asserting what it holds during a bus
# recovery: its writes are the only ones the generation check lets through.
REASSERTING: contextvars.ContextVar[bool] = contextvars.ContextVar("reasserting", default=False)

# Documents remembered (their last value seen here) to try a CAS without
# reading first; a stale one only costs the failed CAS, which returns the
# current value.
CACHED_KEYS = 4096
# How long a disconnect waits for a replica to have the open (see persist).
PERSIST_WAIT_MS = 200
# How long a writer waits while another holds the key's turn (claims last 20 ms).
CLAIM_PAUSE = 0.001


@dataclass
class _Pending:
    fn: Callable[[Doc | None], tuple[Doc | None, Any]]
    publish: Callable[[Any], list[str]] | None
    send: Callable[[Any], list[BreakNotice]] | None
    future: asyncio.Future[Any]
    reassert: bool = False


def _resolve(results: list[tuple[_Pending, Any]]) -> None:
    for p, result in results:
        if not p.future.done():
            p.future.set_result(result)


class RedisStore(Store):
    lazy_subscribe = True
    publishes_on_commit = True
    sends_on_commit = True

    def __init__(self, target: RedisTarget, *, local_delivery: bool = True) -> None:
        self.target = target
        self.ns = target.namespace
        # Deliver to a node living on this store in the caller's task, as
        # in-process (the gateway learns that the request now waits on a
        # client); False sends every notice through Redis (tests use it).
        self.local_delivery = local_delivery
        self.connector: Connector | None = None
        self.hub: PubSubHub | None = None
        self.handlers: dict[NodeId, BreakHandler] = {}
        self.broadcast_handlers: dict[str, list[BroadcastHandler]] = {}
        self._token_prefix = secrets.token_hex(6)
        self._own_token = f"{self._token_prefix}.".encode()
        self._tokens = itertools.count(1)
        self._pubsub_client: Redis | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sync_channel = f"{self.ns}sync:{self._token_prefix}"
        self._syncs: dict[bytes, asyncio.Future[None]] = {}
        self._queues: dict[str, list[_Pending]] = {}
        self._committers: set[asyncio.Future[None]] = set()
        self._cache: OrderedDict[str, bytes | None] = OrderedDict()
        self._pipe: CommandPipe | None = None
        self.running = False
        # The bus generation every write is checked against ('' : none yet),
        # and what a write refused for its generation waits on (the
        # recovery: it returns once the node may write again, or raises
        # BusUnavailable). On Redis Cluster (slot_gens) a script touches one
        # slot, so records are checked against the generation's copy in
        # their own slot (redis_slots.py).
        self.generation = ""
        self.gen_key = self.key("{nodes}:gen")
        self.slot_gens = False
        self.on_stale: Callable[[], Awaitable[None]] | None = None
        # Likewise when no connection to Redis could be made: returns to try
        # again, or raises the error once the node may no longer wait.
        self.on_unreachable: Callable[[BusUnavailable], Awaitable[None]] | None = None
        # Replicas of the master, as last seen (oplock_bus.recovery): a
        # durable open left disconnected waits until one has it (persist).
        self.replicas = 0
        # The last value seen of every file document in which a node of this
        # process holds something, for re-asserting it after a loss (the
        # cache above forgets; this keeps exactly what we hold).
        self.held: dict[str, bytes] = {}
        self._markers: list[bytes] = []
        self._file_prefix = self.key("file:")

    # -- lifecycle -----------------------------------------------------------------

    @property
    def client(self) -> Redis | RedisCluster:
        if self.connector is None:
            raise BusUnavailable("the bus is not started")
        return self.connector.client

    async def start(self, *, subscriber: bool = True) -> None:
        """Connect; ``subscriber=False`` (a read-only tool) skips pub/sub."""
        self.connector = Connector(self.target)
        if not isinstance(self.connector.client, RedisCluster):
            self._pipe = CommandPipe(self._connect_pipe, timeout=self.target.timeout)
        else:
            self.slot_gens = True
            redis_slots.slot_tags()  # computed once, before any request waits on it
        if not subscriber:
            with bus_errors():
                await self.client.ping()
            return
        self.hub = PubSubHub(
            self._connect_pubsub,
            self._on_message,
            lingers=lambda ch: ch.startswith(self.ns + "file:"),
            on_value=self._on_value,
            confirm_timeout=self.target.timeout,
        )
        for node_id in self.handlers:
            self.hub.add_permanent(self.node_channel(node_id))
        for topic in self.broadcast_handlers:
            self.hub.add_permanent(self.broadcast_channel(topic))
        self.hub.add_permanent(self._sync_channel)
        with bus_errors():
            await self.client.ping()
        self.hub.start()
        # Listening before serving: a break notice or broadcast published to
        # a channel not yet subscribed would be lost.
        await self.hub.confirm(
            [self.node_channel(n) for n in self.handlers]
            + [self.broadcast_channel(t) for t in self.broadcast_handlers]
        )
        self.running = True

    async def sync(self) -> None:
        """Return once every message published before this call has been
        dispatched here (one subscriber connection delivers in order)."""
        assert self.hub is not None
        await self.hub.confirm([self._sync_channel])
        client = self.client
        # On Redis Cluster a message published on another node comes over
        # that node's cluster bus link, behind what it published before: one
        # marker through each master (the scripts' notices come from them).
        if isinstance(client, RedisCluster):
            await client.initialize()
            senders: list[Any] = client.get_primaries()
        else:
            senders = [None]
        loop = asyncio.get_running_loop()
        markers = {secrets.token_hex(8).encode(): node for node in senders}
        futures = [self._syncs.setdefault(m, loop.create_future()) for m in markers]
        try:
            with bus_errors():
                for marker, node in markers.items():
                    if node is None:
                        await client.publish(self._sync_channel, marker)
                    else:
                        await client.execute_command(
                            "PUBLISH", self._sync_channel, marker, target_nodes=node
                        )
            await asyncio.wait_for(asyncio.gather(*futures), self.target.timeout)
        finally:
            for marker in markers:
                self._syncs.pop(marker, None)

    async def stop(self) -> None:
        self.running = False
        if self._committers:  # let queued transactions finish
            await asyncio.wait(set(self._committers), timeout=self.target.timeout)
        for task in list(self._tasks):
            task.cancel()
        if self.hub is not None:
            await self.hub.stop()
        if self._pubsub_client is not None:
            await self._pubsub_client.aclose()
            self._pubsub_client = None
        if self._pipe is not None:
            await self._pipe.aclose()
        if self.connector is not None:
            with contextlib.suppress(Exception):
                await self.connector.aclose()

    async def _connect_pipe(self) -> AbstractConnection:
        # The client's own settings (TLS, password, database; Sentinel's master).
        client = self.client
        assert not isinstance(client, RedisCluster)
        conn: AbstractConnection = client.connection_pool.make_connection()
        # The pipe times its commands itself; a write timeout would only add
        # a wait_for to every write.
        conn.socket_timeout = None
        await conn.connect()
        return conn

    async def _call(self, *command: Any) -> Any:
        """A document command: down the pipelined connection where there is one."""
        if self._pipe is not None:
            return await self._pipe.call(*command)
        return await self.client.execute_command(*command)

    async def _connect_pubsub(self) -> AbstractConnection:
        assert self.connector is not None
        host, port = await self.connector.pubsub_address()
        if self._pubsub_client is not None:
            await self._pubsub_client.aclose()
        self._pubsub_client = self.connector.pubsub_client(host, port)
        conn = self._pubsub_client.connection_pool.make_connection()
        await conn.connect()
        return conn

    # -- names -----------------------------------------------------------------------

    def key(self, name: str) -> str:
        return self.ns + name

    def node_channel(self, node_id: NodeId) -> str:
        return f"{self.ns}node:{node_id}"

    def broadcast_channel(self, topic: str) -> str:
        return f"{self.ns}bcast:{topic}"

    def _encode(self, doc: Doc) -> str:
        token = f"{self._token_prefix}.{next(self._tokens)}"
        return f"{token} {json.dumps(doc, separators=(',', ':'))}"

    # -- documents ---------------------------------------------------------------------

    async def load(self, key: str) -> tuple[str | None, Doc | None]:
        while True:
            try:
                with bus_errors():
                    raw = await self._get(self.ns + key)
                return _decode(raw)
            except GenerationChanged:
                if self.on_stale is None or REASSERTING.get():
                    raise
                await self.on_stale()  # what it would read is being rebuilt
            except BusUnavailable as e:
                # A read may be asked again, answered or not: wait for Redis
                # while this node may act.
                if self.on_unreachable is None or REASSERTING.get():
                    raise
                await self.on_unreachable(e)

    async def compare_and_set(self, key: str, token: str | None, doc: Doc | None) -> bool:
        value = "" if doc is None else self._encode(doc)
        rkey = self.ns + key
        with bus_errors():
            res = await self._cas(rkey, token, value, reassert=REASSERTING.get())
            if res in (-2, -3) and await self._claimed(rkey):
                res = await self._cas(rkey, token, value, reassert=REASSERTING.get())
        if res in (-2, -3):
            raise GenerationChanged("the bus is recovering its state")
        if res == 1:
            self._remember(rkey, value.encode() if value else None, ours=True)
        else:
            self._remember(rkey, res if isinstance(res, bytes) else None)
        return res == 1

    async def transact(
        self,
        key: str,
        fn: Callable[[Doc | None], tuple[Doc | None, T]],
        publish: Callable[[T], list[str]] | None = None,
        send: Callable[[T], list[BreakNotice]] | None = None,
    ) -> T:
        # As Store.transact, with four savings in round trips, the unit of
        # cost here (see docs/benchmarks.md):
        # - the last value seen of a key is cached, so a CAS is tried on it
        #   straight away (a stale one fails and returns the current value);
        # - transactions of this process on one key queue up, and the queue
        #   is committed as one CAS: the gateway's connections no longer
        #   race each other's CAS, and a busy file costs one round trip per
        #   batch, not several per operation;
        # - the wake-ups, and the break notices for other nodes, go out in
        #   the CAS script itself, each carrying the value just written so
        #   that the woken or notified node's next CAS needs no read.
        while True:
            try:
                return await self._transact(self.ns + key, fn, publish, send)
            except GenerationChanged:
                # Nothing was written: once the node may write again (the
                # recovery re-asserted what the nodes hold), the same
                # transaction runs on the rebuilt state.
                if self.on_stale is None or REASSERTING.get():
                    raise
                await self.on_stale()
            except LostReply as e:
                # Sent, and the connection went before the answer (a restart,
                # a failover). Once Redis answers again: if the record carries
                # this write's token it landed, and its result stands; if not,
                # nothing of it is there (lost with the old server, or already
                # replaced by a recovery), and it runs again.
                if self.on_unreachable is None or REASSERTING.get():
                    raise
                if await self._landed(e):
                    return e.result  # type: ignore[no-any-return]
            except BusUnavailable as e:
                # No Redis to send it to (restarting, or Sentinel between
                # masters): nothing was written, so wait while this node may
                # still act, rather than fail the client's request.
                if not isinstance(e.__cause__, NotSent) or self.on_unreachable is None:
                    raise
                await self.on_unreachable(e)

    async def _landed(self, lost: LostReply) -> bool:
        assert self.on_unreachable is not None
        while True:
            try:
                with bus_errors():
                    got: Any = await self._call("GET", lost.rkey)
            except BusUnavailable as e:
                await self.on_unreachable(e)  # raises once the node may not wait
                continue
            raw = got if isinstance(got, bytes) else None
            token = lost.value.split(" ", 1)[0].encode() + b" "
            landed = raw is None if lost.value == "" else raw is not None and raw.startswith(token)
            if landed:
                self._remember(lost.rkey, raw, ours=True)
            return landed

    async def _transact(
        self,
        rkey: str,
        fn: Callable[[Doc | None], tuple[Doc | None, T]],
        publish: Callable[[T], list[str]] | None,
        send: Callable[[T], list[BreakNotice]] | None,
    ) -> T:
        future = asyncio.get_running_loop().create_future()
        pending = _Pending(fn, publish, send, future, REASSERTING.get())
        queue = self._queues.get(rkey)
        if queue is not None:
            queue.append(pending)  # the key's committer takes it with its next batch
        else:
            self._queues[rkey] = [pending]
            committer = asyncio.ensure_future(self._commit_queue(rkey))
            self._committers.add(committer)
            committer.add_done_callback(self._committers.discard)
        try:
            result: T = await pending.future
        except LostReply as e:
            # The batch's error, shared by its callers: each gets its own result.
            mine = e.results.get(id(future))
            raise LostReply(e.rkey, e.value, {}, mine) from e.__cause__
        return result

    async def _commit_queue(self, rkey: str) -> None:
        try:
            while True:
                queued = [p for p in self._queues[rkey] if not p.future.done()]
                if not queued:
                    self._queues[rkey] = []
                    return
                # One CAS carries one kind of write: a recovery's re-assertion
                # must not fail with the ordinary writes it would wait behind.
                n = next(
                    (i for i, p in enumerate(queued) if p.reassert != queued[0].reassert),
                    len(queued),
                )
                batch, self._queues[rkey] = queued[:n], queued[n:]
                try:
                    await self._commit(rkey, batch)
                except asyncio.CancelledError:
                    for p in batch:
                        p.future.cancel()
                    raise
                except Exception as e:  # BusUnavailable, retries exhausted
                    for p in batch:
                        if not p.future.done():
                            p.future.set_exception(e)
        finally:
            for p in self._queues.pop(rkey, []):
                if not p.future.done():
                    p.future.set_exception(BusUnavailable("the bus is stopping"))

    async def _commit(self, rkey: str, batch: list[_Pending]) -> None:
        """Apply the batch in order to the document and write the result with
        one CAS; on a conflict apply it again to the value the CAS returned."""
        fresh = rkey not in self._cache
        raw = self._cache.get(rkey)
        with bus_errors():
            if fresh:
                raw = await self._get(rkey)
            attempt = 0
            while attempt < self.max_retries:
                attempt += 1
                token, doc = _decode(raw)
                cur = doc
                results: list[tuple[_Pending, Any]] = []
                channels: list[str] = []
                messages: list[tuple[str, bytes]] = []
                for p in batch:
                    if p.future.done():
                        continue  # its caller gave up (or its fn failed): never committed
                    try:
                        new, result = p.fn(cur)
                    except Exception as e:  # this caller's bug; the others go on
                        if not p.future.done():
                            p.future.set_exception(e)
                        continue
                    if p.publish is not None:
                        channels += (self.ns + c for c in p.publish(result))
                    if p.send is not None:
                        messages += self._messages(rkey, p.send(result))
                    results.append((p, result))
                    cur = new
                if cur == doc:
                    if not fresh:
                        # Nothing to write, so nothing proved the cached value
                        # current: read it, and decide again if it moved on.
                        current = await self._get(rkey)
                        fresh = True
                        if current != raw:
                            raw = current
                            continue
                    if channels or messages:
                        await self._publish_raw(list(dict.fromkeys(channels)), messages, raw)
                    _resolve(results)
                    return
                value = "" if cur is None else self._encode(cur)
                wake = list(dict.fromkeys(channels))
                if rkey not in wake and rkey.startswith(self._file_prefix):
                    # A node that keeps the file's channel (it opened the file
                    # lately) learns the value without being woken: its next
                    # open there commits on it instead of failing once.
                    wake.append(scripts.NEWS)
                # From the third try on, a failure claims the next turn (see
                # the CAS script): another node whose every commit starts on
                # the value it just wrote would otherwise win every time.
                try:
                    res = await self._cas(
                        rkey, token, value, attempt >= 3, wake, messages, batch[0].reassert
                    )
                except _UNAVAILABLE as e:
                    if isinstance(e, NotSent):
                        raise
                    answers = {id(p.future): r for p, r in results}
                    raise LostReply(rkey, value, answers) from e
                if res == 1:
                    self._remember(rkey, value.encode() if value else None, ours=True)
                    _resolve(results)
                    return
                if res in (-2, -3) and await self._claimed(rkey):
                    continue  # nothing was written: the same value, once more
                if res in (-2, -3):
                    raise GenerationChanged("the bus is recovering its state")
                if res == -1:
                    # Another writer's turn: let it write, then try on its value.
                    attempt -= 1
                    await asyncio.sleep(CLAIM_PAUSE)
                    raw, fresh = await self._get(rkey), True
                    continue
                raw, fresh = (res if isinstance(res, bytes) else None), True
                self._remember(rkey, raw)
        raise ConflictRetriesExhausted(rkey[len(self.ns) :])

    async def _cas(
        self,
        rkey: str,
        token: str | None,
        value: str,
        claim: bool = False,
        wake: Sequence[str] = (),
        messages: Sequence[tuple[str, bytes]] = (),
        reassert: bool = False,
    ) -> Any:
        """The CAS script (redis_scripts.CAS): 1 written, -1 another writer's
        turn, -2 refused for its generation (-3: the generation key is
        missing), else the current value (0: absent)."""
        args: list[str | bytes | int] = [
            token or "",
            value,
            self._token_prefix,
            "1" if claim else "0",
            self.generation,
            "1" if reassert else "0",
            len(wake),
            *wake,
        ]
        args += [part for pair in messages for part in pair]
        keys = [rkey, rkey + ":claim"]
        if self.generation:
            keys.append(self.guard_key(rkey))
        return await scripts.cas.run(self._call, keys, args)

    def guard_key(self, rkey: str) -> str:
        """The generation key a write or read of ``rkey`` is checked against."""
        if self.slot_gens:
            return redis_slots.gen_key(self.ns, rkey)
        return self.gen_key

    async def _claimed(self, rkey: str) -> bool:
        """The CAS or read of ``rkey`` was refused for its generation: on
        Redis Cluster, True if its slot's copy could be made the caller's
        (try again), False if it was lost (redis_slots.claim)."""
        client = self.client
        if not isinstance(client, RedisCluster):
            return False  # {nodes}:gen itself is gone
        want = self.generation + (" r" if REASSERTING.get() else "")
        return await redis_slots.claim(client, self.ns, rkey, want)

    async def mark_slots(self, value: str, *, held: str = "", never: str = "") -> None:
        """On Redis Cluster, set the generation copy of every slot in use
        (redis_slots.mark)."""
        client = self.client
        if isinstance(client, RedisCluster):
            with bus_errors():
                await redis_slots.mark(client, self.ns, value, held=held, never=never)

    async def persist(self) -> None:
        # WAIT covers the writes of the connection it runs on: the pipe, where
        # the documents go. Bounded: a lagging replica costs 0.2 s, not more.
        if self.replicas > 0:
            with bus_errors():
                await self._call("WAIT", 1, PERSIST_WAIT_MS)

    def peek(self, key: str) -> Doc | None:
        return _decode(self._cache.get(self.ns + key))[1]

    def knows(self, key: str) -> bool:
        return self.ns + key in self._cache

    async def prefetch(self, key: str) -> None:
        await self.load(key)

    async def _get(self, rkey: str) -> bytes | None:
        try:
            return await self._get_once(rkey)
        except _UNAVAILABLE as e:
            # A read changes nothing: whether or not it left, it may be asked
            # again, as one that never left (see transact).
            if isinstance(e, NotSent):
                raise
            raise NotSent(f"a read's answer was lost: {e}") from e

    async def _get_once(self, rkey: str) -> bytes | None:
        got: Any
        if self.generation:
            # Read with the generation, in one command: a Redis that lost its
            # state answers nothing a decision may rest on (a lock check, a
            # grant) until the nodes rebuilt it.
            want = self.generation + (" r" if REASSERTING.get() else "")
            gen, got = await self._call("MGET", self.guard_key(rkey), rkey)
            if gen != want.encode() and await self._claimed(rkey):
                gen, got = await self._call("MGET", self.guard_key(rkey), rkey)
            if gen != want.encode():
                raise GenerationChanged("the bus is recovering its state")
        else:
            got = await self._call("GET", rkey)
        raw = got if isinstance(got, bytes) else None
        self._remember(rkey, raw)
        return raw

    def _remember(self, rkey: str, raw: bytes | None, *, ours: bool = False) -> None:
        # What this process holds (for a recovery) changes only when it writes
        # itself or sees a record naming one of its nodes: only its own close
        # removes its last open from a record (others remove one only from a
        # node that lapsed), and a read from a Redis that lost its state must
        # not make it forget.
        if raw is not None and rkey.startswith(self._file_prefix) and any(
            m in raw for m in self._markers
        ):
            self.held[rkey] = raw
        elif ours:
            self.held.pop(rkey, None)
        cache = self._cache
        cache[rkey] = raw
        cache.move_to_end(rkey)
        if len(cache) > CACHED_KEYS:
            cache.popitem(last=False)

    async def keys(self, prefix: str) -> list[str]:
        pattern = f"{self.ns}{prefix}*"
        found: set[bytes] = set()
        client = self.client
        with bus_errors():
            if isinstance(client, RedisCluster):
                await client.initialize()
                for node in client.get_primaries():
                    found.update(await _scan_node(client, node, pattern))
            else:
                async for k in client.scan_iter(match=pattern, count=1000):
                    found.add(k)
        n = len(self.ns)
        return sorted(k.decode()[n:] for k in found)

    # -- wake-ups ------------------------------------------------------------------------

    def subscribe(self, channels: Iterable[str]) -> Subscription:
        if self.hub is None:
            raise BusUnavailable("the bus is not started")
        return self.hub.subscription(self.ns + c for c in channels)

    def subscribed(self, channel: str) -> bool:
        # A file's channel lingers after use: a busy file's stays subscribed.
        return self.hub is not None and self.hub.confirmed(self.ns + channel)

    def prepare_subscribe(self, channels: Iterable[str]) -> None:
        if self.hub is not None:
            # Subscribed and released at once: the channel lingers, so the
            # SUBSCRIBE is on its way while the caller sends its notices.
            self.hub.subscription(self.ns + c for c in channels).close()

    async def publish(self, channels: Iterable[str]) -> None:
        with bus_errors():
            await self._publish_raw([self.ns + c for c in channels])

    async def _publish_raw(
        self,
        names: list[str],
        messages: Sequence[tuple[str, bytes]] = (),
        value: bytes | None = None,
    ) -> None:
        """Empty wake-ups to ``names``; ``messages`` (channel, prefix) get ``value``."""
        pairs = [(c, b"") for c in names] + [(c, m + (value or b"")) for c, m in messages]
        # Issued together, they leave in one write on the pipelined connection.
        await asyncio.gather(*(self._call("PUBLISH", c, m) for c, m in pairs))

    def _messages(self, rkey: str, notices: list[BreakNotice]) -> list[tuple[str, bytes]]:
        """(channel, message prefix) of the notices other nodes must get."""
        key = rkey[len(self.ns) :]
        return [
            (self.node_channel(n.node_id), message_prefix(n, key))
            for n in notices
            if not self.is_local(n.node_id)
        ]

    # -- break delivery ------------------------------------------------------------------

    def register_node(self, node_id: NodeId, handler: BreakHandler) -> None:
        self.handlers[node_id] = handler
        # How a document names an open (or a waiting open) of this node.
        self._markers.append(b'"node_id":' + json.dumps(node_id).encode())
        if self.hub is not None:
            self.hub.add_permanent(self.node_channel(node_id))

    def is_local(self, node_id: NodeId) -> bool:
        return self.local_delivery and node_id in self.handlers

    async def deliver(self, notice: BreakNotice) -> None:
        # The coordinator sends notices for other nodes with its commit
        # (transact(send=...)), carrying the document; this is the rest.
        handler = self.handlers.get(notice.node_id)
        if handler is not None and self.local_delivery:
            await _run_handler(handler, notice)
            return
        with bus_errors():
            await self._call("PUBLISH", self.node_channel(notice.node_id), encode_notice(notice))

    # -- broadcasts ----------------------------------------------------------------------

    def on_broadcast(self, topic: str, handler: BroadcastHandler) -> None:
        first = topic not in self.broadcast_handlers
        self.broadcast_handlers.setdefault(topic, []).append(handler)
        if first and self.hub is not None:
            self.hub.add_permanent(self.broadcast_channel(topic))

    async def broadcast(self, topic: str, payload: dict[str, Any]) -> None:
        # The origin lets this store skip its own message when it comes back.
        message = json.dumps({"origin": self._token_prefix, "data": payload})
        with bus_errors():
            await self.client.publish(self.broadcast_channel(topic), message)

    def _on_broadcast(self, topic: str, data: bytes) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            log.warning("malformed broadcast on %s", topic)
            return
        if message.get("origin") == self._token_prefix:
            return
        for handler in self.broadcast_handlers.get(topic, []):
            try:
                handler(message.get("data", {}))
            except Exception:  # one faulty listener must not stop the others
                log.exception("broadcast handler for %s failed", topic)

    def _on_value(self, channel: str, data: bytes) -> None:
        # A file's channel is named as its document (see the CAS script).
        # Our own writes are remembered from the CAS's answer; the copy on
        # the subscriber connection may arrive after a later write of ours.
        if channel.startswith(self.ns + "file:") and not data.startswith(self._own_token):
            self._remember(channel, None if data == b"-" else data)

    def _on_message(self, channel: str, data: bytes) -> None:
        if channel.startswith(self.ns + "bcast:"):
            self._on_broadcast(channel.removeprefix(self.ns + "bcast:"), data)
            return
        if channel == self._sync_channel:
            fut = self._syncs.get(data)
            if fut is not None and not fut.done():
                fut.set_result(None)
            return
        node_id = channel.removeprefix(self.ns + "node:")
        handler = self.handlers.get(node_id)
        if handler is None:
            return
        notice, key, value = decode_message(data)
        if key is not None and value is not None:
            self._remember(self.ns + key, value)  # the ack's CAS goes straight on it
        # Tasks start in arrival order, and a handler returns at once.
        task = asyncio.get_running_loop().create_task(_run_handler(handler, notice))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _run_handler(handler: BreakHandler, notice: BreakNotice) -> None:
    try:
        await handler(notice)
    except Exception:  # one faulty node must not fail another's request
        log.exception("break handler of node %s failed", notice.node_id)


async def _scan_node(client: RedisCluster, node: Any, pattern: str) -> set[bytes]:
    found: set[bytes] = set()
    cursor = 0
    while True:
        reply = await client.execute_command(
            "SCAN", cursor, "MATCH", pattern, "COUNT", 1000, target_nodes=node
        )
        raw_cursor, batch = reply[0], reply[1]
        if isinstance(raw_cursor, dict):  # redis-py keys a cluster cursor by node
            raw_cursor = next(iter(raw_cursor.values()))
        cursor = int(raw_cursor)
        found.update(batch)
        if cursor == 0:
            return found
