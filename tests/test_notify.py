"""The CHANGE_NOTIFY hub (gateway/smb/notify.py), and change notify against a real node."""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.protocol.constants import CompletionFilter as CF
from gateway.protocol.constants import NotifyAction as NA
from gateway.protocol.constants import Status
from gateway.smb.notify import ChangeEvent, NotifyHub, Watch, encode_changes

from .conftest import PASSWORD, USER, GatewayNode

NAME = CF.FILE_NAME | CF.DIR_NAME
BIG = 64 * 1024


def ev(action: str, path: str, is_dir: bool = False, mask: int = 0, **kw: Any) -> ChangeEvent:
    if not mask:
        mask = CF.DIR_NAME if is_dir else CF.FILE_NAME
        if action == "modified":
            mask = CF.LAST_WRITE | CF.SIZE
    return ChangeEvent("share", path, action, is_dir, mask, **kw)


def decode(data: bytes) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    pos = 0
    while True:
        nxt, action, length = struct.unpack_from("<III", data, pos)
        out.append((action, data[pos + 12 : pos + 12 + length].decode("utf-16-le")))
        if not nxt:
            return out
        pos += nxt


def taken(watch: Watch, max_output: int = BIG) -> list[tuple[int, str]]:
    status, data = watch.take(max_output)
    assert status == Status.SUCCESS
    return decode(data) if data else []


def hub_with(
    directory: str, recursive: bool = False, completion_filter: int = NAME, max_output: int = BIG
) -> tuple[NotifyHub, Watch]:
    hub = NotifyHub()
    return hub, hub.watch("SHARE", directory, recursive, completion_filter, max_output)


# -- the event as plain data -----------------------------------------------------------


def test_event_round_trips_through_json() -> None:
    event = ev("renamed", "a/new.txt", old_path="a/old.txt", origin="node-2")
    wire = json.dumps(event.to_dict())
    assert ChangeEvent.from_dict(json.loads(wire)) == event


@pytest.mark.parametrize(
    "data",
    [
        {"share": "s", "path": "p", "action": "exploded", "is_dir": False, "mask": 1},
        {"share": "s", "path": "p", "action": "renamed", "is_dir": False, "mask": 1},
        {"share": "s", "path": "p", "action": "added", "is_dir": False},
        {"share": "s", "path": "p", "action": "added", "is_dir": False, "mask": "x"},
    ],
)
def test_malformed_event_from_a_peer_is_refused(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ChangeEvent.from_dict(data)


def test_encoding_is_aligned_and_chained() -> None:
    data = encode_changes([(NA.ADDED, "a"), (NA.REMOVED, "bcd")])
    assert struct.unpack_from("<I", data, 0)[0] == 16  # 12 + 2 bytes, padded to 4
    assert decode(data) == [(NA.ADDED, "a"), (NA.REMOVED, "bcd")]


# -- matching ----------------------------------------------------------------------------


def test_completion_filter_selects_changes() -> None:
    hub, watch = hub_with("d", completion_filter=CF.ATTRIBUTES)
    hub.deliver(ev("added", "d/f"))
    hub.deliver(ev("modified", "d/f", mask=CF.LAST_WRITE))
    hub.deliver(ev("modified", "d/g", mask=CF.ATTRIBUTES | CF.LAST_ACCESS))
    assert taken(watch) == [(NA.MODIFIED, "g")]


def test_file_and_directory_names_are_separate_filters() -> None:
    hub, watch = hub_with("d", completion_filter=CF.FILE_NAME)
    hub.deliver(ev("added", "d/sub", is_dir=True))
    hub.deliver(ev("added", "d/file"))
    assert taken(watch) == [(NA.ADDED, "file")]


def test_watch_tree_sees_descendants_with_relative_names() -> None:
    hub = NotifyHub()
    flat = hub.watch("share", "d", False, NAME, BIG)
    tree = hub.watch("share", "d", True, NAME, BIG)
    root = hub.watch("share", "", True, NAME, BIG)
    hub.deliver(ev("added", "d/a/b/c.txt"))
    hub.deliver(ev("added", "d/top.txt"))
    assert taken(flat) == [(NA.ADDED, "top.txt")]
    assert taken(tree) == [(NA.ADDED, "a\\b\\c.txt"), (NA.ADDED, "top.txt")]
    assert taken(root) == [(NA.ADDED, "d\\a\\b\\c.txt"), (NA.ADDED, "d\\top.txt")]


def test_changes_to_the_watched_directory_itself_are_not_reported() -> None:
    hub, watch = hub_with("d", recursive=True, completion_filter=CF.ATTRIBUTES)
    hub.deliver(ev("modified", "d", is_dir=True, mask=CF.ATTRIBUTES))
    assert not watch.ready()


def test_other_shares_are_not_watched() -> None:
    hub, watch = hub_with("d")
    hub.deliver(ChangeEvent("other", "d/x", "added", False, CF.FILE_NAME))
    assert not watch.ready()


def test_rename_in_one_directory_is_an_old_new_pair_plus_modified() -> None:
    hub, watch = hub_with("d", completion_filter=NAME | CF.ATTRIBUTES)
    hub.deliver(ev("renamed", "d/new", old_path="d/old"))
    assert taken(watch) == [
        (NA.RENAMED_OLD_NAME, "old"), (NA.RENAMED_NEW_NAME, "new"), (NA.MODIFIED, "new"),
    ]  # fmt: skip


def test_rename_across_directories_is_removed_and_added() -> None:
    hub = NotifyHub()
    src = hub.watch("share", "a", False, NAME, BIG)
    dst = hub.watch("share", "b", False, NAME, BIG)
    both = hub.watch("share", "", True, CF.DIR_NAME, BIG)
    hub.deliver(ev("renamed", "b/y", is_dir=True, old_path="a/x"))
    assert taken(src) == [(NA.REMOVED, "x")]
    assert taken(dst) == [(NA.ADDED, "y")]
    assert taken(both) == [(NA.REMOVED, "a\\x"), (NA.ADDED, "b\\y")]


def test_a_renamed_directory_keeps_its_watches() -> None:
    hub = NotifyHub()
    moved = hub.watch("share", "a/x", True, NAME, BIG)
    below = hub.watch("share", "a/x/deep", False, NAME, BIG)
    hub.deliver(ev("renamed", "b/y", is_dir=True, old_path="a/x"))
    hub.deliver(ev("added", "b/y/deep/f"))
    assert (moved.directory, below.directory) == ("b/y", "b/y/deep")
    assert taken(moved) == [(NA.ADDED, "deep\\f")]
    assert taken(below) == [(NA.ADDED, "f")]


def test_identical_neighbours_are_coalesced() -> None:
    hub, watch = hub_with("d", completion_filter=CF.LAST_WRITE)
    for _ in range(3):
        hub.deliver(ev("modified", "d/f"))
    assert taken(watch) == [(NA.MODIFIED, "f")]


# -- buffering, overflow, completion -----------------------------------------------------


def test_overflow_answers_enum_dir_once() -> None:
    hub, watch = hub_with("d", max_output=100)
    for i in range(20):
        hub.deliver(ev("added", f"d/file{i}.txt"))
    assert watch.take(100) == (Status.NOTIFY_ENUM_DIR, b"")
    assert not watch.ready()


def test_the_first_request_fixes_the_buffer_size() -> None:
    hub, watch = hub_with("d", max_output=0)
    hub.deliver(ev("added", "d/f"))
    assert watch.take(BIG) == (Status.NOTIFY_ENUM_DIR, b"")


def test_a_smaller_request_gets_enum_dir() -> None:
    hub, watch = hub_with("d")
    hub.deliver(ev("added", "d/f"))
    assert watch.take(4) == (Status.NOTIFY_ENUM_DIR, b"")


def test_pending_requests_complete_in_order() -> None:
    async def scenario() -> list[tuple[int, bytes]]:
        hub, watch = hub_with("d")
        first, second = watch.wait(BIG), watch.wait(BIG)
        hub.deliver(ev("added", "d/one"))
        assert first.done() and not second.done()
        hub.deliver(ev("added", "d/two"))
        return [await first, await second]

    first, second = asyncio.run(scenario())
    assert decode(first[1]) == [(NA.ADDED, "one")]
    assert decode(second[1]) == [(NA.ADDED, "two")]


def test_cleanup_and_deletion_complete_pending_requests() -> None:
    async def scenario() -> tuple[int, int, int]:
        hub = NotifyHub()
        closing = hub.watch("share", "a", False, NAME, BIG)
        doomed = hub.watch("share", "b/c", False, NAME, BIG)
        w1, w2 = closing.wait(BIG), doomed.wait(BIG)
        closing.cleanup()
        hub.deliver(ev("removed", "b/c", is_dir=True))
        later = doomed.take(BIG)[0]
        hub.deliver(ev("added", "a/x"))  # a closed watch is gone from the hub
        assert not closing.ready()
        return (await w1)[0], (await w2)[0], later

    assert asyncio.run(scenario()) == (
        Status.NOTIFY_CLEANUP, Status.DELETE_PENDING, Status.DELETE_PENDING,
    )  # fmt: skip


def test_a_cancelled_request_is_forgotten() -> None:
    async def scenario() -> list[tuple[int, str]]:
        hub, watch = hub_with("d")
        waiter = watch.wait(BIG)
        waiter.cancel()
        watch.forget(waiter)
        hub.deliver(ev("added", "d/kept"))
        return taken(watch)

    assert asyncio.run(scenario()) == [(NA.ADDED, "kept")]


# -- the cluster seam --------------------------------------------------------------------


def test_local_changes_are_published_and_peer_changes_delivered() -> None:
    published: list[dict[str, Any]] = []
    node_a = NotifyHub(publish=lambda e: published.append(e.to_dict()))
    node_b = NotifyHub()
    watch_b = node_b.watch("share", "d", False, NAME, BIG)
    node_a.report(ev("added", "d/from-a", origin="a"))
    assert [p["origin"] for p in published] == ["a"]
    for data in published:  # what the bus would carry
        node_b.deliver(ChangeEvent.from_dict(json.loads(json.dumps(data))))
    assert taken(watch_b) == [(NA.ADDED, "from-a")]


def test_a_failing_publish_does_not_fail_the_change() -> None:
    def broken(_event: ChangeEvent) -> None:
        raise ConnectionError("bus down")

    hub = NotifyHub(publish=broken)
    watch = hub.watch("share", "d", False, NAME, BIG)
    hub.report(ev("added", "d/x"))
    assert taken(watch) == [(NA.ADDED, "x")]


# -- an independent client against a node -------------------------------------------------


@pytest.fixture
def two_sessions(module_gateway: GatewayNode) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    import smbclient

    kws = []
    for _ in range(2):
        cache: dict[str, Any] = {}
        smbclient.register_session(
            module_gateway.host, username=USER, password=PASSWORD, port=module_gateway.port,
            connection_cache=cache, auth_protocol="ntlm",
        )  # fmt: skip
        kws.append({"port": module_gateway.port, "connection_cache": cache})
    yield kws[0], kws[1]
    for kw in kws:
        smbclient.reset_connection_cache(connection_cache=kw["connection_cache"])


def test_smbprotocol_watcher_sees_another_clients_changes(
    module_gateway: GatewayNode, two_sessions: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    import smbclient
    from smbprotocol.change_notify import (
        ChangeNotifyFlags,
        CompletionFilter,
        FileAction,
        FileSystemWatcher,
    )

    watcher_kw, writer_kw = two_sessions
    base = rf"\\{module_gateway.host}\share\notify_{uuid.uuid4().hex[:8]}"
    smbclient.mkdir(base, **writer_kw)
    smbclient.mkdir(rf"{base}\sub", **writer_kw)
    with smbclient.open_file(base, mode="rb", buffering=0, file_type="dir", **watcher_kw) as d:
        watcher = FileSystemWatcher(d.fd)
        watcher.start(
            CompletionFilter.FILE_NOTIFY_CHANGE_FILE_NAME,
            flags=ChangeNotifyFlags.SMB2_WATCH_TREE,
        )
        with smbclient.open_file(rf"{base}\sub\new.txt", mode="wb", **writer_kw) as f:
            f.write(b"hello")
        assert watcher.response_event.wait(timeout=20), "no change notify reply"
        changes = [(c["action"].get_value(), c["file_name"].get_value()) for c in watcher.result]
        assert changes == [(FileAction.FILE_ACTION_ADDED, "sub\\new.txt")]

        # A pending request is answered with STATUS_CANCELLED when cancelled.
        second = FileSystemWatcher(d.fd)
        second.start(CompletionFilter.FILE_NOTIFY_CHANGE_FILE_NAME)
        threading.Event().wait(0.3)
        second.cancel()
        assert second.response_event.wait(timeout=20)
        assert second.cancelled
    smbclient.remove(rf"{base}\sub\new.txt", **writer_kw)
    smbclient.rmdir(rf"{base}\sub", **writer_kw)
    smbclient.rmdir(base, **writer_kw)
