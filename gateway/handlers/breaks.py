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
from collections.abc import Awaitable
from typing import TypeVar

from ..context import RequestContext

T = TypeVar("T")

# The request whose bus call is running in this task, if any.
current_request: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "current_request", default=None
)

GRACE_SECONDS = 0.05


async def run_bus_call(ctx: RequestContext, call: Awaitable[T]) -> T:
    token = current_request.set(ctx)
    try:
        task = asyncio.ensure_future(call)
        done, _ = await asyncio.wait({task}, timeout=GRACE_SECONDS)
        if not done:
            ctx.go_async()
        try:
            return await asyncio.shield(task) if not done else task.result()
        except asyncio.CancelledError:
            task.cancel()
            raise
    finally:
        current_request.reset(token)


def request_is_waiting_on_break() -> None:
    """Called when a break is sent: the request that caused it must not block reads."""
    ctx = current_request.get()
    if ctx is not None:
        ctx.go_async()
