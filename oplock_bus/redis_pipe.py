"""One pipelined connection for the bus's hot commands (CAS, GET, PUBLISH).

redis-py's client takes a pooled connection, wraps the command in retries
and timeouts and writes it on its own, for every command; on this path that
costs about as much CPU as Redis takes to answer. Here every command of the
store goes down one connection: commands issued while others are in flight
leave in one write, and one reader task hands the replies, which Redis
sends in order, to their callers. A lost connection, or a reply that does
not come within the timeout (after which the order can no longer be
trusted), fails every command in flight; the next command reconnects.

The per-command costs that remain are kept small on purpose, as they
are most of a break round trip's CPU (docs/benchmarks.md): commands are
packed here (redis-py's packer took about 30 us a command), and one timer
watches the oldest command in flight instead of a timeout per call.

Used for a single server or a Sentinel-managed one; Redis Cluster spreads
keys over servers and keeps redis-py's client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("oplock_bus.redis")

Connect = Callable[[], Awaitable[AbstractConnection]]
RoundTripObserver = Callable[[float], None]

# Told each command's round trip in seconds, from the call to its reply. A
# plain callback, so that the bus stays free of any metrics library (the
# gateway's metrics register one). Kept for the whole process, as the pipe is
# made inside the store's start and a node process runs one bus: a process
# with several buses (tests, benches) would see all their commands here.
_round_trip_observers: list[RoundTripObserver] = []


def observe_round_trips(observer: RoundTripObserver) -> Callable[[], None]:
    """Call ``observer`` with each command's round trip; returns its remover."""
    _round_trip_observers.append(observer)

    def remove() -> None:
        with contextlib.suppress(ValueError):
            _round_trip_observers.remove(observer)

    return remove


def _observe(seconds: float) -> None:
    for observer in _round_trip_observers:
        try:
            observer(seconds)
        except Exception as e:  # noqa: BLE001 - a metric must never break the bus
            log.warning("round-trip observer failed: %s: %s", type(e).__name__, e)


def pack(args: tuple[Any, ...]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            b = a.encode()
        elif isinstance(a, bytes):
            b = a
        elif isinstance(a, int | float) and not isinstance(a, bool):
            b = repr(a).encode()
        else:
            raise TypeError(f"cannot send {type(a).__name__} to Redis")
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


class NotSent(RedisConnectionError):
    """The command never left: no connection could be made. Unlike a reply
    lost in flight, the caller knows it was not executed, so it may retry."""


class CommandPipe:
    def __init__(self, connect: Connect, *, timeout: float) -> None:
        self._connect_fn = connect
        self.timeout = timeout
        self._conn: AbstractConnection | None = None
        self._connecting: asyncio.Future[AbstractConnection] | None = None
        # Each command's future, the loop time by which its reply is due and,
        # while someone observes round trips, when it was sent (perf_counter:
        # uvloop's loop time moves in whole milliseconds, more than a round trip).
        self._in_flight: deque[tuple[asyncio.Future[Any], float, float]] = deque()
        self._outbox: list[bytes] = []
        self._wake_writer = asyncio.Event()
        self._watchdog: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    async def call(self, *args: Any) -> Any:
        """Send one command; its reply, or the error Redis answered with.

        A cancelled caller leaves its command in flight: its reply is read
        and dropped, which keeps the order."""
        packed = pack(args)
        if self._conn is None:
            try:
                await self._connection()
            except NotSent:
                raise
            except (OSError, RedisConnectionError, TimeoutError) as e:
                raise NotSent(f"{e}") from e
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        sent = time.perf_counter() if _round_trip_observers else 0.0
        self._in_flight.append((fut, loop.time() + self.timeout, sent))
        self._outbox.append(packed)
        self._wake_writer.set()
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout, self._watch)
        return await fut

    def _watch(self) -> None:
        """Fail everything once the oldest command is overdue; else look again
        when it will be."""
        self._watchdog = None
        if not self._in_flight:
            return
        loop = asyncio.get_running_loop()
        due = self._in_flight[0][1]
        if loop.time() >= due:
            self._broken(RedisTimeoutError(f"no reply within {self.timeout} s"))
        else:
            self._watchdog = loop.call_at(due, self._watch)

    async def aclose(self) -> None:
        self._closed = True
        self._broken(RedisConnectionError("the bus is stopping"))

    async def _connection(self) -> AbstractConnection:
        if self._closed:
            raise NotSent("the bus is stopping")
        if self._conn is not None:
            return self._conn
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _open(self) -> AbstractConnection:
        conn = await asyncio.wait_for(self._connect_fn(), self.timeout)
        self._conn = conn
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._write_loop(conn), name="bus-pipe-writer"),
            loop.create_task(self._read_loop(conn), name="bus-pipe-reader"),
        ]
        return conn

    async def _write_loop(self, conn: AbstractConnection) -> None:
        try:
            while True:
                await self._wake_writer.wait()
                self._wake_writer.clear()
                batch, self._outbox = self._outbox, []
                if batch:
                    await conn.send_packed_command(batch, check_health=False)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - every caller learns of it
            self._broken(e)

    async def _read_loop(self, conn: AbstractConnection) -> None:
        try:
            while True:
                try:
                    reply: Any = await conn.read_response(timeout=math.inf)
                except ResponseError as e:  # an error reply: its caller's, the rest go on
                    reply = e
                if not self._in_flight:
                    raise RedisConnectionError("a reply nobody asked for")
                fut, _due, sent = self._in_flight.popleft()
                if sent and _round_trip_observers:
                    _observe(time.perf_counter() - sent)
                if fut.done():
                    continue  # its caller was cancelled
                if isinstance(reply, ResponseError):
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - every caller learns of it
            self._broken(e)

    def _broken(self, error: BaseException) -> None:
        conn, self._conn = self._conn, None
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        self._tasks = []
        self._outbox = []
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self._in_flight:
            fut = self._in_flight.popleft()[0]
            if not fut.done():
                fut.set_exception(
                    error if isinstance(error, RedisConnectionError | RedisTimeoutError)
                    else RedisConnectionError(str(error))
                )  # fmt: skip
        if conn is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().create_task(_disconnect(conn))


async def _disconnect(conn: AbstractConnection) -> None:
    with contextlib.suppress(Exception):
        await conn.disconnect(nowait=True)
