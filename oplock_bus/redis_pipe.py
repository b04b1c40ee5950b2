"""One pipelined connection for the bus's hot commands (CAS, GET, PUBLISH).

redis-py's client takes a pooled connection, wraps the command in retries
and timeouts and writes it on its own, for every command; on this path that
costs about as much CPU as Redis takes to answer. Here every command of the
store goes down one connection: commands issued while others are in flight
leave in one write, and one reader task hands the replies, which Redis
sends in order, to their callers. A lost connection, or a reply that does
not come within the timeout (after which the order can no longer be
trusted), fails every command in flight; the next command reconnects.

Used for a single server or a Sentinel-managed one; Redis Cluster spreads
keys over servers and keeps redis-py's client.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Connect = Callable[[], Awaitable[AbstractConnection]]


class CommandPipe:
    def __init__(self, connect: Connect, *, timeout: float) -> None:
        self._connect_fn = connect
        self.timeout = timeout
        self._conn: AbstractConnection | None = None
        self._connecting: asyncio.Future[AbstractConnection] | None = None
        self._in_flight: deque[asyncio.Future[Any]] = deque()
        self._outbox: list[tuple[Any, ...]] = []
        self._wake_writer = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    async def call(self, *args: Any) -> Any:
        """Send one command; its reply, or the error Redis answered with."""
        await self._connection()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._in_flight.append(fut)
        self._outbox.append(args)
        self._wake_writer.set()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.timeout)
        except TimeoutError:
            self._broken(RedisTimeoutError(f"no reply within {self.timeout} s"))
            raise RedisTimeoutError(f"no reply within {self.timeout} s") from None

    async def aclose(self) -> None:
        self._closed = True
        self._broken(RedisConnectionError("the bus is stopping"))

    async def _connection(self) -> AbstractConnection:
        if self._closed:
            raise RedisConnectionError("the bus is stopping")
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
                    await conn.send_packed_command(conn.pack_commands(batch), check_health=False)
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
                fut = self._in_flight.popleft()
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
        while self._in_flight:
            fut = self._in_flight.popleft()
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
