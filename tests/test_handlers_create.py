"""CREATE and CLOSE handlers against a fake node (real share, bus and tables, no socket).

Checks what a client sees and what lands on disk: files made, name
collisions, missing names, share modes enforced by the bus, read-only
shares, delete-on-close, and overwriting.
"""

from __future__ import annotations

from pathlib import Path

from clients.messages import parse_create_response
from gateway.protocol.constants import (
    AccessMask,
    CreateAction,
    CreateDisposition,
    CreateOptions,
    ShareAccess,
    Status,
)
from tests.fakes import FakeNode, run, status_of

RW = AccessMask.FILE_READ_DATA | AccessMask.FILE_WRITE_DATA
SHARE_ALL = ShareAccess.READ | ShareAccess.WRITE | ShareAccess.DELETE
CREATE, OPEN = CreateDisposition.CREATE, CreateDisposition.OPEN


def test_create_makes_the_file_and_a_handle(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeNode(tmp_path / "share") as node:
            c = node.client()
            reply = await c.create("a.txt", access=RW, share=SHARE_ALL, disposition=CREATE)
            assert reply.status == Status.SUCCESS
            resp = parse_create_response(reply.body)
            assert resp.action == CreateAction.CREATED
            assert resp.file_id == reply.file_id
            assert (tmp_path / "share" / "a.txt").is_file()
            op = c.conn.opens[resp.file_id[1]]
            assert op.persistent_id == resp.file_id[0]
            assert node.opens[op.bus_open_id] is op
            assert node.changes == [("added", op.host_path, False)]

    run(body())


def test_create_of_an_existing_name_collides(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeNode(tmp_path / "share") as node:
            c = node.client()
            await c.create("a.txt", access=RW, share=SHARE_ALL, disposition=CREATE)
            again = c.create("a.txt", access=RW, share=SHARE_ALL, disposition=CREATE)
            assert await status_of(again) == Status.OBJECT_NAME_COLLISION
            assert len(node.opens) == 1

    run(body())


def test_open_of_a_missing_file_is_not_found(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeNode(tmp_path / "share") as node:
            c = node.client()
            missing = c.create("nope.txt", access=RW, share=SHARE_ALL, disposition=OPEN)
            assert await status_of(missing) == Status.OBJECT_NAME_NOT_FOUND
            assert not (tmp_path / "share" / "nope.txt").exists()

    run(body())


def test_second_open_sharing_nothing_is_refused(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeNode(tmp_path / "share") as node:
            first, second = node.client(), node.client("bob")
            await first.create("a.txt", access=RW, share=0, disposition=CREATE)
            other = second.create("a.txt", access=RW, share=SHARE_ALL, disposition=OPEN)
            assert await status_of(other) == Status.SHARING_VIOLATION
            assert second.conn.opens == {} and len(node.opens) == 1
            assert (tmp_path / "share" / "a.txt").is_file()  # the refused open removed nothing

    run(body())


def test_read_only_share_refuses_creating(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeNode(tmp_path / "share", read_only=True) as node:
            c = node.client()
            # Read access only: the share's read-only maximal access would refuse writing.
            made = c.create("a.txt", access=AccessMask.FILE_READ_DATA, share=SHARE_ALL,
                            disposition=CREATE)  # fmt: skip
            assert await status_of(made) == Status.MEDIA_WRITE_PROTECTED
            assert not (tmp_path / "share" / "a.txt").exists()
            assert node.changes == []

    run(body())


def test_delete_on_close_removes_the_file(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeNode(tmp_path / "share") as node:
            c = node.client()
            reply = await c.create(
                "doomed.txt", access=RW | AccessMask.DELETE, share=SHARE_ALL,
                disposition=CREATE, options=CreateOptions.DELETE_ON_CLOSE,
            )  # fmt: skip
            path = tmp_path / "share" / "doomed.txt"
            assert path.is_file()  # still there while the handle is open
            assert reply.file_id is not None
            closed = await c.close(reply.file_id)
            assert closed.status == Status.SUCCESS
            assert not path.exists()
            assert c.conn.opens == {} and node.opens == {}
            assert [action for action, _, _ in node.changes] == ["added", "removed"]

    run(body())


def test_overwrite_if_truncates_an_existing_file(tmp_path: Path) -> None:
    async def body() -> None:
        path = tmp_path / "share" / "a.txt"
        async with FakeNode(tmp_path / "share") as node:
            path.write_bytes(b"old contents")
            c = node.client()
            reply = await c.create("a.txt", access=RW, share=SHARE_ALL,
                                   disposition=CreateDisposition.OVERWRITE_IF)  # fmt: skip
            resp = parse_create_response(reply.body)
            assert resp.action == CreateAction.OVERWRITTEN
            assert resp.size == 0
            assert path.read_bytes() == b""
            assert [action for action, _, _ in node.changes] == ["modified"]

    run(body())
