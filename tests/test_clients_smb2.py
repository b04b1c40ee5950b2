"""The asyncio SMB2/3 client of clients/ against a gateway node: wire basics.

Every dialect the client offers, with and without signing and encryption,
does a full round trip; blocking locks get their interim STATUS_PENDING;
a cancelled request is cancelled on the server; break notifications reach
the open they name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from clients.messages import BreakNotice
from clients.smb2client import Open, SMB2Client, SmbError
from gateway.protocol.constants import CreateDisposition, Dialect, OplockLevel, Status

from .conftest import PASSWORD, USER, GatewayNode

T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = 30) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def connect(node: GatewayNode, **kw: object) -> SMB2Client:
    return await SMB2Client.connect(node.host, node.port, user=USER, password=PASSWORD, **kw)  # type: ignore[arg-type]


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


@pytest.mark.parametrize(
    ("dialect", "sign", "encrypt"),
    [
        (Dialect.SMB2_1, False, False),
        (Dialect.SMB2_1, True, False),
        (Dialect.SMB3_0_2, True, False),
        (Dialect.SMB3_0_2, False, True),
        (Dialect.SMB3_1_1, False, False),
        (Dialect.SMB3_1_1, True, False),
        (Dialect.SMB3_1_1, False, True),
    ],
)
def test_round_trip(
    module_gateway: GatewayNode, dialect: Dialect, sign: bool, encrypt: bool
) -> None:
    name = f"rt-{dialect:x}-{sign}-{encrypt}.bin"
    payload = bytes(range(256)) * 700  # spans several READ/WRITE-sized pieces of a page

    async def go() -> None:
        c = await connect(
            module_gateway, dialects=(dialect,), require_signing=sign, encrypt=encrypt
        )
        assert c.dialect == dialect and c.encrypt == encrypt
        tree = await c.tree_connect("share")
        f = await tree.create(name, disposition=CreateDisposition.OVERWRITE_IF)
        assert await f.write(0, payload) == len(payload)
        await f.flush()
        assert await f.read(0, len(payload) + 100) == payload  # short at end of file
        assert await f.read(len(payload) + 10, 10) == b""
        await f.lock(0x10000000, 1)
        await f.unlock(0x10000000, 1)
        await f.close()
        await c.echo()
        assert c.transport.credits > 1  # the server keeps granting what we ask for
        await tree.disconnect()
        await c.close()

    run(go())
    assert (module_gateway.share_dir / name).read_bytes() == payload


def test_wrong_password_is_refused(module_gateway: GatewayNode) -> None:
    async def go() -> None:
        with pytest.raises(SmbError) as e:
            await SMB2Client.connect(
                module_gateway.host, module_gateway.port, user=USER, password="wrong"
            )
        assert e.value.status == Status.LOGON_FAILURE

    run(go())


def test_blocking_lock_pends_then_completes(module_gateway: GatewayNode) -> None:
    async def go() -> None:
        a, b = await connect(module_gateway), await connect(module_gateway)
        ta, tb = await a.tree_connect("share"), await b.tree_connect("share")
        fa = await ta.create("blocking.bin")
        fb = await tb.create("blocking.bin")
        await fa.lock(100, 10)
        with pytest.raises(SmbError) as e:
            await fb.lock(105, 1, wait=False)
        assert e.value.status == Status.LOCK_NOT_GRANTED
        waiting = asyncio.ensure_future(fb.lock(105, 1))
        await until(lambda: b.transport.interim_responses > 0)
        assert not waiting.done()
        await fa.unlock(100, 10)
        await asyncio.wait_for(waiting, 5)
        await fb.unlock(105, 1)
        for c in (a, b):
            await c.close()

    run(go())


def test_cancelled_blocking_lock_is_cancelled_on_the_server(module_gateway: GatewayNode) -> None:
    async def go() -> None:
        a, b = await connect(module_gateway), await connect(module_gateway)
        ta, tb = await a.tree_connect("share"), await b.tree_connect("share")
        fa = await ta.create("cancel.bin")
        fb = await tb.create("cancel.bin")
        await fa.lock(0, 1)
        waiting = asyncio.ensure_future(fb.lock(0, 1))
        await until(lambda: b.transport.interim_responses > 0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await until(lambda: bool(b.transport.abandoned_statuses))
        assert b.transport.abandoned_statuses == [Status.CANCELLED]
        # The cancelled wait must not win the lock behind our back.
        await fa.unlock(0, 1)
        await fa.lock(0, 1, wait=False)
        await fa.unlock(0, 1)
        await fb.lock(0, 1, wait=False)  # and b's connection still works
        for c in (a, b):
            await c.close()

    run(go())


def test_oplock_break_reaches_the_open_and_is_acknowledged(module_gateway: GatewayNode) -> None:
    async def go() -> None:
        a, b = await connect(module_gateway), await connect(module_gateway)
        ta, tb = await a.tree_connect("share"), await b.tree_connect("share")
        seen: list[BreakNotice] = []

        async def on_break(op: Open, notice: BreakNotice) -> None:
            seen.append(notice)
            await op.acknowledge(notice)

        fa = await ta.create(
            "batch.bin",
            disposition=CreateDisposition.OVERWRITE_IF,
            oplock=OplockLevel.BATCH,
            on_break=on_break,
        )
        assert fa.oplock_level == OplockLevel.BATCH
        other = await ta.create("other.bin", oplock=OplockLevel.BATCH)
        fb = await tb.create("batch.bin", oplock=OplockLevel.BATCH)
        assert len(seen) == 1 and seen[0].file_id == fa.file_id and seen[0].ack_required
        assert fa.oplock_level == OplockLevel.II == fb.oplock_level
        assert other.breaks == []  # routed by FileId, not broadcast
        for c in (a, b):
            await c.close()

    run(go())


def test_lease_break_without_handler_is_acknowledged(module_gateway: GatewayNode) -> None:
    async def go() -> None:
        a, b = await connect(module_gateway), await connect(module_gateway)
        ta, tb = await a.tree_connect("share"), await b.tree_connect("share")
        fa = await ta.create("lease.bin", disposition=CreateDisposition.OVERWRITE_IF, lease_state=7)
        assert fa.lease_state == 7
        fb = await tb.create("lease.bin", lease_state=7)
        assert a.breaks_received == 1
        notice = fa.breaks[0]
        assert notice.lease_key == fa.lease_key and notice.current_state == 7
        assert fa.lease_state == notice.new_state == fb.lease_state == 3
        for c in (a, b):
            await c.close()

    run(go())
