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

    The call runs in the request's own task (a task of its own would cost a
    turn of the event loop before it starts and another after it ends, on
    every CREATE that waits on a break); a timer sends the interim reply if
    it outlasts the grace period. If this request is cancelled (CANCEL,
    disconnect), the call is cancelled with it, and the bus undoes what it
    committed meanwhile. ``undo`` gives back a result the node must not
    keep: one that arrives after the bus stopped vouching for the node.
    """
    token = current_request.set(ctx)
    timer = asyncio.get_running_loop().call_later(GRACE_SECONDS, ctx.go_async)
    try:
        result = await call
    finally:
        timer.cancel()
        current_request.reset(token)
    # The caller touches the volume next: the wait may have outlasted
    # the node's grants (see NodeServices.vouched).
    if not ctx.node.vouched():
        if undo is not None:
            await undo(result)
        raise Disconnect("the bus no longer vouches for this node")
    return result


async def run_bus_open(ctx: RequestContext, bus: LockBus, req: OpenRequest) -> OpenResult:
    """``bus.open`` as a CREATE runs it: cancelled with the request (the bus
    gives back what it granted meanwhile), and a grant the node may no
    longer keep is given back."""

    async def give_back(result: OpenResult) -> None:
        if result.status == STATUS_SUCCESS:
            await bus.close(req.file, req.open_id)

    return await run_bus_call(ctx, bus.open(req), give_back)


def request_is_waiting_on_break() -> None:
    """Called when a break is sent: the request that caused it must not block reads."""
    ctx = current_request.get()
    if ctx is not None:
        ctx.go_async()
