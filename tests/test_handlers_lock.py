"""LOCK handler against a fake node (real share, bus and tables, no socket).

Checks byte-range locks between two handles of one file: conflicts, unlocks,
malformed requests, and a blocking lock that waits for the holder.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

from clients.messages import FileId, LockElement, lock_request
from gateway.protocol.constants import (
    AccessMask,
    Command,
    CreateDisposition,
    ShareAccess,
    Status,
)
from gateway.smb.handlers.lock import handle_lock
from tests.fakes import FakeClient, FakeNode, run, status_of

RW = AccessMask.FILE_READ_DATA | AccessMask.FILE_WRITE_DATA
SHARE_RW = ShareAccess.READ | ShareAccess.WRITE


async def two_handles(node: FakeNode) -> tuple[FakeClient, FileId, FakeClient, FileId]:
    """Two clients, each with a handle on the same file."""
    a, b = node.client("alice"), node.client("bob")
    ra = await a.create("f", access=RW, share=SHARE_RW, disposition=CreateDisposition.CREATE)
    rb = await b.create("f", access=RW, share=SHARE_RW, disposition=CreateDisposition.OPEN)
    assert ra.file_id is not None and rb.file_id is not None
    return a, ra.file_id, b, rb.file_id


def test_conflicting_lock_is_refused_until_unlocked(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeNode(tmp_path / "share") as node:
            a, fa, b, fb = await two_handles(node)
            mine = LockElement.exclusive(0, 10, wait=False)
            assert (await a.lock(fa, mine)).status == Status.SUCCESS
            overlapping = LockElement.exclusive(5, 10, wait=False)
            assert await status_of(b.lock(fb, overlapping)) == Status.LOCK_NOT_GRANTED
            assert (await a.lock(fa, LockElement.unlock(0, 10))).status == Status.SUCCESS
            assert (await b.lock(fb, overlapping)).status == Status.SUCCESS

    run(body())


def test_unlock_of_a_range_not_locked(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeNode(tmp_path / "share") as node:
            a, fa, _, _ = await two_handles(node)
            await a.lock(fa, LockElement.exclusive(0, 10, wait=False))
            # Unlocking must name the range exactly as it was locked.
            assert await status_of(a.lock(fa, LockElement.unlock(0, 5))) == (
                Status.RANGE_NOT_LOCKED
            )
            assert await status_of(a.lock(fa, LockElement.unlock(0, 10))) == Status.SUCCESS

    run(body())


def test_lock_count_zero_is_invalid(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeNode(tmp_path / "share") as node:
            a, fa, _, _ = await two_handles(node)
            good = lock_request(fa, [LockElement.exclusive(0, 10, wait=False)])
            # The builder counts its elements; keep one in the body, claim none.
            zero = good[:2] + struct.pack("<H", 0) + good[4:]
            assert await status_of(handle_lock(a.request(Command.LOCK, zero))) == (
                Status.INVALID_PARAMETER
            )
            assert await status_of(handle_lock(a.request(Command.LOCK, good))) == Status.SUCCESS

    run(body())


def test_several_blocking_elements_are_invalid(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeNode(tmp_path / "share") as node:
            a, fa, _, _ = await two_handles(node)
            blocking = [LockElement.exclusive(0, 1), LockElement.exclusive(10, 1)]
            assert await status_of(a.lock(fa, *blocking)) == Status.INVALID_PARAMETER
            failing = [LockElement.exclusive(0, 1, wait=False),
                       LockElement.exclusive(10, 1, wait=False)]  # fmt: skip
            assert await status_of(a.lock(fa, *failing)) == Status.SUCCESS

    run(body())


def test_blocking_lock_is_granted_when_the_holder_unlocks(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeNode(tmp_path / "share") as node:
            a, fa, b, fb = await two_handles(node)
            await a.lock(fa, LockElement.exclusive(0, 10, wait=False))
            ctx = b.request(Command.LOCK, lock_request(fb, [LockElement.exclusive(0, 10)]))
            waiting = asyncio.create_task(handle_lock(ctx))

            async def went_async() -> None:
                while not ctx.async_id:
                    await asyncio.sleep(0.01)

            # A connection would answer STATUS_PENDING now and go on reading.
            await asyncio.wait_for(went_async(), 2)
            assert not waiting.done()
            await a.lock(fa, LockElement.unlock(0, 10))
            reply = await asyncio.wait_for(waiting, 3)
            assert reply.status == Status.SUCCESS
            # b holds it now: a is the one refused.
            retry = a.lock(fa, LockElement.exclusive(0, 10, wait=False))
            assert await status_of(retry) == Status.LOCK_NOT_GRANTED

    run(body())
