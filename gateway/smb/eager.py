"""Run a request's handler at once, in its task, without waiting for the loop.

Most requests (ECHO, READ, WRITE, QUERY_INFO, CLOSE) never wait on anything,
yet starting a task per request and awaiting it costs the connection two
trips round the event loop. Python 3.12's eager tasks do what this module
does; 3.11, the version we support, has none.

The handler's task is made first, then its first step runs here, at once,
with that task as the current one (``asyncio.current_task()``, cancellation
scopes and ``asyncio.timeout`` see it, as in any task) and in its context.
If the handler finishes, its result comes back now and the task only
records it on its first, empty, step. If the handler waits, the task's first
step hands the loop what the handler was waiting on, and the task carries it
on from there, cancellation included.
"""

from __future__ import annotations

import asyncio
import contextvars

# The private hooks Python 3.12's eager tasks use to make a task current.
from asyncio.tasks import _enter_task, _leave_task  # type: ignore[attr-defined]
from collections.abc import Coroutine, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_RUNNING = object()  # the first step has not come back yet
_FINISHED = object()  # the first step finished the handler (or raised)


class _Continuation(Coroutine[Any, Any, T], Generic[T]):
    """What the task runs: the handler's coroutine, past its first step."""

    __slots__ = ("_coro", "_first", "_result")

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self._coro = coro
        self._first: Any = _RUNNING
        self._result: Any = None

    def send(self, value: Any) -> Any:
        first = self._first
        if first is _RUNNING:
            return self._coro.send(value)
        self._first = _RUNNING
        if first is _FINISHED:
            raise StopIteration(self._result)
        return first  # what the handler waits on, to the task

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        finished = self._first is _FINISHED
        self._first = _RUNNING
        if finished:
            raise typ if val is None else val
        # A cancellation before the task's first step reaches the handler where it waits.
        return self._coro.throw(typ) if val is None else self._coro.throw(typ, val, tb)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, T]:
        raise TypeError("a continuation is run by its task, not awaited")


def start(coro: Coroutine[Any, Any, T]) -> tuple[T | None, asyncio.Task[T] | None]:
    """(result, None) if ``coro`` finished in its first step; else (None, task)
    with the task carrying it on. An exception from the first step propagates,
    as ``task.result()`` would raise it."""
    loop = asyncio.get_running_loop()
    cont = _Continuation(coro)
    context = contextvars.copy_context()
    task = loop.create_task(cont, context=context)
    caller = asyncio.current_task(loop)
    if caller is not None:
        _leave_task(loop, caller)
    _enter_task(loop, task)
    try:
        first = context.run(coro.send, None)
    except StopIteration as stop:
        cont._first, cont._result = _FINISHED, stop.value
        return stop.value, None
    except BaseException:
        cont._first = _FINISHED  # the caller gets the exception, not the task
        raise
    finally:
        _leave_task(loop, task)
        if caller is not None:
            _enter_task(loop, caller)
    cont._first = first
    return None, task
