"""One subscriber connection per store, shared by every wait of the process.

A :class:`Subscription` is local bookkeeping plus, the first time a channel
is wanted, a SUBSCRIBE on the shared connection; ``ready()`` returns once
Redis has confirmed it, so a publication after that point cannot be missed.
File channels stay subscribed for a while after their last local waiter
leaves (``linger``), so a busy file pays the SUBSCRIBE round trip once, not
per wait. A message that starts with ``=`` is news: the value it carries is
remembered and nobody is woken. After a reconnect every channel is
subscribed again and every local subscription is woken, since messages may
have been lost meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from redis.asyncio.connection import AbstractConnection

from . import redis_scripts
from .api import BusUnavailable
from .store import Subscription

log = logging.getLogger("oplock_bus.redis")

Connect = Callable[[], Awaitable[AbstractConnection]]
OnMessage = Callable[[str, bytes], None]
OnValue = Callable[[str, bytes], None]
NEWS = redis_scripts.NEWS.encode()  # how a message carrying a value as news starts


class RedisSubscription(Subscription):
    def __init__(self, hub: PubSubHub, channels: list[str]) -> None:
        self._hub = hub
        self.channels = channels
        self._notified = False
        # A bare future and a timer, not asyncio.wait_for on an Event: that
        # makes a task per wait, and its wake-up costs a turn of the event
        # loop on the way from a publication to the waiting open.
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        hub._attach(self)

    def notify(self) -> None:
        self._notified = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def ready(self) -> None:
        await self._hub._confirmed(self.channels)

    async def wait(self, timeout: float | None) -> bool:
        if not self._notified:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if not self._notified:
                return False
        self._notified = False
        return True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._hub._detach(self)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class PubSubHub:
    def __init__(
        self,
        connect: Connect,
        on_message: OnMessage,
        *,
        lingers: Callable[[str], bool],
        on_value: OnValue | None = None,
        linger_seconds: float = 30.0,
        linger_max: int = 4096,
        confirm_timeout: float = 2.0,
    ) -> None:
        self.confirm_timeout = confirm_timeout
        self._connect = connect
        self._on_message = on_message
        self._on_value = on_value
        self._lingers = lingers
        self._linger_seconds = linger_seconds
        self._linger_max = linger_max
        self._local: dict[str, set[RedisSubscription]] = {}
        self._permanent: set[str] = set()  # node channels
        self._idle: OrderedDict[str, float] = OrderedDict()  # lingering channels
        self._wanted: set[str] = set()  # subscribed, or about to be, at Redis
        # Per channel: SUBSCRIBEs sent and confirmations read on this connection.
        self._sent: dict[str, int] = {}
        self._acked: dict[str, int] = {}
        self._waiting: dict[str, list[tuple[int, asyncio.Future[None]]]] = {}
        self._outbox: list[tuple[str, str]] = []
        self._outbox_ready = asyncio.Event()
        self._conn: AbstractConnection | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.reconnects = 0
        self.last_error: BaseException | None = None

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="bus-pubsub")

    async def stop(self) -> None:
        self._stopping = True
        # Closing the socket first ends a read even where redis-py dropped
        # the cancellation (asyncio.wait_for on Python 3.11).
        await self._drop_connection()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=2.0)
            self._task = None
        for waits in self._waiting.values():
            for _, fut in waits:
                if not fut.done():
                    fut.cancel()
        self._waiting.clear()

    def reconnect(self) -> None:
        """Start over on a fresh connection (e.g. after Redis came back)."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            asyncio.get_running_loop().create_task(conn.disconnect(nowait=True))

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._connected.is_set()

    # -- channels -------------------------------------------------------------------

    def subscription(self, channels: Iterable[str]) -> RedisSubscription:
        return RedisSubscription(self, list(channels))

    def add_permanent(self, channel: str) -> None:
        self._permanent.add(channel)
        self._want(channel)

    async def confirm(self, channels: list[str]) -> None:
        await self._confirmed(channels)

    def confirmed(self, ch: str) -> bool:
        """Subscribed, and Redis confirmed it: every message from now on arrives."""
        return ch in self._wanted and self._all_acked(ch)

    def _all_acked(self, ch: str) -> bool:
        """Every SUBSCRIBE sent for ``ch`` on the live connection was answered."""
        return self.connected and self._acked.get(ch, 0) >= self._sent.get(ch, 0)

    def _attach(self, sub: RedisSubscription) -> None:
        for ch in sub.channels:
            subs = self._local.get(ch)
            if subs is None:
                subs = self._local[ch] = set()
                self._idle.pop(ch, None)
                self._want(ch)
            subs.add(sub)

    def _detach(self, sub: RedisSubscription) -> None:
        now = time.monotonic()
        for ch in sub.channels:
            subs = self._local.get(ch)
            if subs is None:
                continue
            subs.discard(sub)
            if subs:
                continue
            del self._local[ch]
            if ch in self._permanent:
                continue
            if self._lingers(ch):
                self._idle[ch] = now
                self._idle.move_to_end(ch)
            else:
                self._unwant(ch)
        self._expire_idle(now)

    def _expire_idle(self, now: float) -> None:
        while self._idle:
            ch, since = next(iter(self._idle.items()))
            if len(self._idle) <= self._linger_max and now - since < self._linger_seconds:
                break
            del self._idle[ch]
            self._unwant(ch)

    def _want(self, ch: str) -> None:
        if ch in self._wanted:
            return  # still subscribed (it was lingering)
        self._wanted.add(ch)
        self._sent[ch] = self._sent.get(ch, 0) + 1
        self._queue("SUBSCRIBE", ch)

    def _unwant(self, ch: str) -> None:
        self._wanted.discard(ch)
        self._queue("UNSUBSCRIBE", ch)
        self._forget_counts(ch)

    def _forget_counts(self, ch: str) -> None:
        if ch not in self._wanted and self._acked.get(ch, 0) >= self._sent.get(ch, 0):
            self._sent.pop(ch, None)
            self._acked.pop(ch, None)

    def _queue(self, command: str, ch: str) -> None:
        self._outbox.append((command, ch))
        self._outbox_ready.set()

    async def _confirmed(self, channels: list[str]) -> None:
        loop = asyncio.get_running_loop()
        pending: list[asyncio.Future[None]] = []
        for ch in channels:
            if self._all_acked(ch):
                continue
            target = self._sent.get(ch, 0)
            fut: asyncio.Future[None] = loop.create_future()
            self._waiting.setdefault(ch, []).append((target, fut))
            pending.append(fut)
        if pending:
            try:
                async with asyncio.timeout(self.confirm_timeout):
                    for fut in pending:
                        await fut
            except TimeoutError:
                raise BusUnavailable(f"no SUBSCRIBE confirmation: {self.last_error}") from None

    def _ack(self, ch: str) -> None:
        # Counted, not flagged: the reply to a SUBSCRIBE sent before an
        # UNSUBSCRIBE must not confirm the SUBSCRIBE sent after it.
        count = self._acked[ch] = self._acked.get(ch, 0) + 1
        waits = self._waiting.get(ch)
        if waits:
            keep = []
            for target, fut in waits:
                if count >= target:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    keep.append((target, fut))
            if keep:
                self._waiting[ch] = keep
            else:
                del self._waiting[ch]
        self._forget_counts(ch)

    # -- the connection ------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.05
        while not self._stopping:
            try:
                conn = await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis down: keep trying, waits time out meanwhile
                self.last_error = e
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.05
            if self._stopping:
                await conn.disconnect(nowait=True)
                return
            self._conn = conn
            await self._resubscribe(conn)
            writer = asyncio.get_running_loop().create_task(self._write_loop(conn))
            try:
                await self._read_loop(conn)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.last_error = e
                log.warning("bus subscriber connection lost: %s", e)
            finally:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writer
                self._connected.clear()
                if self._conn is conn:
                    self._conn = None
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
            self.reconnects += 1
            self._wake_all()

    async def _resubscribe(self, conn: AbstractConnection) -> None:
        self._outbox.clear()
        self._acked = {}
        self._sent = {ch: 1 for ch in self._wanted}
        # Waits counted on the old connection now wait for this one's replies.
        for ch in list(self._waiting):
            waits = self._waiting.pop(ch)
            if ch in self._wanted:
                self._waiting[ch] = [(1, fut) for _, fut in waits]
            else:
                for _, fut in waits:
                    if not fut.done():
                        fut.set_result(None)
        if self._wanted:
            await conn.send_command("SUBSCRIBE", *self._wanted)
        self._connected.set()

    async def _write_loop(self, conn: AbstractConnection) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            batch, self._outbox = self._outbox, []
            # Runs of one command go out as one command; order is kept, as
            # the confirmation counts rely on it.
            run: list[str] = []
            command = ""
            for cmd, ch in batch:
                if cmd != command and run:
                    await conn.send_command(command, *run)
                    run = []
                command = cmd
                run.append(ch)
            if run:
                await conn.send_command(command, *run)

    async def _read_loop(self, conn: AbstractConnection) -> None:
        while True:
            reply: Any = await conn.read_response(timeout=math.inf)
            if not isinstance(reply, list) or len(reply) < 3:
                continue
            kind = reply[0]
            channel = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
            if kind == b"message":
                data = reply[2] if isinstance(reply[2], bytes) else str(reply[2]).encode()
                self._deliver(channel, data)
            elif kind == b"subscribe":
                self._ack(channel)

    def _deliver(self, channel: str, data: bytes) -> None:
        if data[:1] == NEWS and channel not in self._permanent:
            # A value as news (redis_scripts.NEWS): remembered, nobody woken.
            if self._on_value is not None:
                self._on_value(channel, data[1:])
            return
        if data and self._on_value is not None and channel not in self._permanent:
            # A wake-up carrying the new value: known before the waiter runs.
            self._on_value(channel, data)
        for sub in self._local.get(channel, ()):
            sub.notify()
        if channel in self._permanent:
            try:
                self._on_message(channel, data)
            except Exception:  # a bad message must not stop the subscriber
                log.exception("bus message on %s could not be handled", channel)

    def _wake_all(self) -> None:
        for subs in self._local.values():
            for sub in subs:
                sub.notify()

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
