"""Waiting on the bus without stalling the connection.

A bus call may have to wait for another client's break acknowledgement. If
that client is on this same connection, its acknowledgement can only be read
once this request has gone async, so a break delivered while a request is
waiting sends the interim reply at once; any other slow call goes async after
a short grace period.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Awaitable, Callable
from typing import TypeVar

from oplock_bus.api import STATUS_SUCCESS, LockBus, OpenRequest, OpenResult

from .context import Disconnect, RequestContext

T = TypeVar("T")

# The request whose bus call is running in this task, if any.
current_request: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "current_request", default=None
)

GRACE_SECONDS = 0.05


async def run_bus_call(
    ctx: RequestContext,
    call: Awaitable[T],
    undo: Callable[[T], Awaitable[None]] | None = None,
) -> T:
    """Run ``call``, going async after the grace period.

    If this request is cancelled (CANCEL, disconnect), the call is cancelled
    too; the bus undoes what it committed meanwhile. ``undo`` covers the one
    case the bus cannot see: the call had already returned its result.
    """
    token = current_request.set(ctx)
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait({task}, timeout=GRACE_SECONDS)
        if not done:
            ctx.go_async()
        result = await asyncio.shield(task) if not done else task.result()
        # The caller touches the volume next: the wait may have outlasted
        # the node's grants (see NodeServices.vouched).
        if not ctx.node.vouched():
            if undo is not None:
                await undo(result)
            raise Disconnect("the bus no longer vouches for this node")
        return result
    except asyncio.CancelledError:
        task.cancel()
        if undo is not None:
            task.add_done_callback(functools.partial(_undo_result, undo))
        raise
    finally:
        current_request.reset(token)


async def run_bus_open(ctx: RequestContext, bus: LockBus, req: OpenRequest) -> OpenResult:
    """``bus.open`` as a CREATE runs it: cancelled with the request, and a
    grant that arrives just as the request is cancelled is given back."""

    async def give_back(result: OpenResult) -> None:
        if result.status == STATUS_SUCCESS:
            await bus.close(req.file, req.open_id)

    return await run_bus_call(ctx, bus.open(req), give_back)


def _undo_result(undo: Callable[[T], Awaitable[None]], task: asyncio.Future[T]) -> None:
    if task.cancelled() or task.exception() is not None:
        return
    cleanup = asyncio.ensure_future(undo(task.result()))
    _cleanups.add(cleanup)
    cleanup.add_done_callback(_cleanups.discard)


_cleanups: set[asyncio.Future[None]] = set()


def request_is_waiting_on_break() -> None:
    """Called when a break is sent: the request that caused it must not block reads."""
    ctx = current_request.get()
    if ctx is not None:
        ctx.go_async()
