"""gateway.smb.eager: a handler's first step runs at once, as its own task."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from gateway.smb import eager

_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="caller's")

LOOPS = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Callable[[], Coroutine[Any, Any, Any]]], Any]:
    return lambda main: LOOPS[request.param](main())


def test_a_handler_that_does_not_wait_needs_no_loop_trip(run: Any) -> None:
    seen: list[Any] = []

    async def handler() -> int:
        seen.append(asyncio.current_task())
        _VAR.set("handler's")
        return 6

    async def main() -> None:
        caller = asyncio.current_task()
        result, task = eager.start(handler())
        assert (result, task) == (6, None)
        # The handler ran as a task of its own and in a context of its own.
        assert seen[0] is not None and seen[0] is not caller
        assert asyncio.current_task() is caller
        assert _VAR.get() == "caller's"

    run(main)


def test_a_handler_that_waits_goes_on_in_the_task_it_started_in(run: Any) -> None:
    async def handler() -> bool:
        first = asyncio.current_task()
        await asyncio.sleep(0.01)
        return asyncio.current_task() is first

    async def main() -> None:
        result, task = eager.start(handler())
        assert result is None and task is not None
        assert await task is True

    run(main)


def test_a_timeout_in_the_first_step_cancels_the_handler_not_its_caller(run: Any) -> None:
    async def handler() -> None:
        async with asyncio.timeout(0.02):
            await asyncio.sleep(5)

    async def main() -> None:
        _, task = eager.start(handler())
        assert task is not None
        with pytest.raises(TimeoutError):
            await task
        await asyncio.sleep(0.05)  # the caller was not cancelled meanwhile

    run(main)


@pytest.mark.parametrize("after_first_step", [False, True])
def test_a_cancellation_reaches_the_handler_where_it_waits(
    run: Any, after_first_step: bool
) -> None:
    async def handler() -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            return "cleaned up"
        return "not cancelled"

    async def main() -> None:
        _, task = eager.start(handler())
        assert task is not None
        if after_first_step:
            await asyncio.sleep(0)
        task.cancel()
        assert await task == "cleaned up"

    run(main)


def test_an_exception_in_the_first_step_reaches_the_caller(run: Any) -> None:
    async def handler() -> None:
        raise ValueError("bad request")

    async def main() -> None:
        with pytest.raises(ValueError, match="bad request"):
            eager.start(handler())
        await asyncio.sleep(0)  # the task it made ends quietly

    run(main)
