"""Directory change notification (MS-SMB2 3.3.5.19, MS-FSA 2.1.5.10).

Handlers report what they changed as ``ChangeEvent``s: plain data naming the
share, the path below its root, the action and the node that made the change.
Paths are share-relative because every node mounts the share at its own host
path. The hub matches an event against the watches of this node; events from
other nodes enter through the same ``deliver``, and ``publish`` (wired by the
node to the cluster bus) carries this node's own events out.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..protocol.constants import CompletionFilter, NotifyAction, Status

if TYPE_CHECKING:
    from ..protocol.infoclass import BasicInfo

log = logging.getLogger("smbgw.notify")

ACTIONS = frozenset({"added", "removed", "modified", "renamed"})
# Samba's guard: past this many buffered changes only "enumerate the directory" is useful.
_MAX_BUFFERED = 1000
_ENTRY = struct.Struct("<III")
_TIME_UNCHANGED = (0, 0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFE)


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One change of the namespace or of an object's metadata."""

    share: str  # share name, lower case
    path: str  # below the share root, '/'-separated; for a rename the new name
    action: str  # one of ACTIONS
    is_dir: bool
    mask: int  # the CompletionFilter bits this change satisfies
    origin: str = ""  # the node that made the change
    old_path: str = ""  # renames only

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChangeEvent:
        """Rebuild an event from a peer; anything malformed is a ValueError."""
        try:
            event = cls(
                share=str(data["share"]),
                path=str(data["path"]),
                action=str(data["action"]),
                is_dir=bool(data["is_dir"]),
                mask=int(data["mask"]),
                origin=str(data.get("origin", "")),
                old_path=str(data.get("old_path", "")),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed change event: {e}") from None
        if event.action not in ACTIONS or (event.action == "renamed") != bool(event.old_path):
            raise ValueError(f"malformed change event: {data!r}")
        return event


def name_mask(is_dir: bool) -> int:
    return CompletionFilter.DIR_NAME if is_dir else CompletionFilter.FILE_NAME


def basic_info_mask(basic: BasicInfo) -> int:
    """What a FileBasicInformation change touches; zero or -1/-2 times change nothing."""
    mask = 0
    if basic.creation_time not in _TIME_UNCHANGED:
        mask |= CompletionFilter.CREATION
    if basic.last_access_time not in _TIME_UNCHANGED:
        mask |= CompletionFilter.LAST_ACCESS
    if basic.last_write_time not in _TIME_UNCHANGED:
        mask |= CompletionFilter.LAST_WRITE
    if basic.file_attributes:
        mask |= CompletionFilter.ATTRIBUTES
    return mask


def share_path(root: str, host_path: str) -> str | None:
    """``host_path`` relative to a share root, or None if it is not below it."""
    if host_path == root:
        return ""
    prefix = root.rstrip("/") + "/"
    if not host_path.startswith(prefix):
        return None
    return host_path[len(prefix) :].rstrip("/")


def local_event(
    share: str,
    root: str | None,
    host_path: str,
    action: str,
    is_dir: bool,
    *,
    origin: str,
    mask: int = 0,
    old_host_path: str = "",
) -> ChangeEvent | None:
    """The event for a change this node made in ``share`` (rooted at ``root``, None
    for IPC$); None outside a disk share."""
    if root is None:
        return None
    path = share_path(root, host_path)
    old = share_path(root, old_host_path) if old_host_path else ""
    if path is None or old is None:
        return None
    if not mask:
        # Content changes touch the write time and possibly the size.
        content = CompletionFilter.LAST_WRITE | CompletionFilter.SIZE
        mask = content if action == "modified" else name_mask(is_dir)
    return ChangeEvent(share.lower(), path, action, is_dir, mask, origin, old)


def encode_changes(changes: list[tuple[int, str]]) -> bytes:
    """FILE_NOTIFY_INFORMATION entries (MS-FSCC 2.7.1), 4-byte aligned."""
    out = bytearray()
    for i, (action, name) in enumerate(changes):
        raw = name.encode("utf-16-le")
        size = _ENTRY.size + len(raw)
        padded = (size + 3) & ~3
        nxt = padded if i != len(changes) - 1 else 0
        out += _ENTRY.pack(nxt, action, len(raw)) + raw
        if nxt:
            out += b"\x00" * (padded - size)
    return bytes(out)


def _entries(event: ChangeEvent) -> Iterator[tuple[str, int, int]]:
    """(path, FILE_ACTION_*, filter bits) as a watcher sees the event."""
    if event.action == "added":
        yield event.path, NotifyAction.ADDED, event.mask
    elif event.action == "removed":
        yield event.path, NotifyAction.REMOVED, event.mask
    elif event.action == "modified":
        yield event.path, NotifyAction.MODIFIED, event.mask
    else:
        # Within one directory a rename is an old/new name pair; across
        # directories each side sees a removal and an addition (Windows, Samba).
        if _parent(event.old_path) == _parent(event.path):
            yield event.old_path, NotifyAction.RENAMED_OLD_NAME, event.mask
            yield event.path, NotifyAction.RENAMED_NEW_NAME, event.mask
        else:
            yield event.old_path, NotifyAction.REMOVED, event.mask
            yield event.path, NotifyAction.ADDED, event.mask
        if not event.is_dir:
            # Windows also reports a renamed file's attributes and creation time.
            mask = CompletionFilter.ATTRIBUTES | CompletionFilter.CREATION
            yield event.path, NotifyAction.MODIFIED, mask


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _below(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory + "/")


class Watch:
    """The change buffer of one directory handle and its pending requests.

    The first CHANGE_NOTIFY on a handle fixes the filter, WATCH_TREE and the
    buffer size; later requests cannot change them (smbtorture mask-change).
    """

    def __init__(
        self, share: str, directory: str, recursive: bool, completion_filter: int,
        max_output: int,
    ) -> None:  # fmt: skip
        self.share = share
        self.directory = directory
        self.recursive = recursive
        self.completion_filter = completion_filter
        self.max_output = max_output
        self.overflowed = False
        self.deleted = False
        self.hub: NotifyHub | None = None
        self._changes: list[tuple[int, str]] = []
        self._size = 0  # encoded size of _changes
        self._pending: list[tuple[asyncio.Future[tuple[int, bytes]], int]] = []

    @property
    def changes(self) -> list[tuple[int, str]]:
        return list(self._changes)

    def ready(self) -> bool:
        return bool(self._changes) or self.overflowed or self.deleted

    def take(self, max_output: int) -> tuple[int, bytes]:
        """The reply for a request allowing ``max_output`` bytes; empties the buffer."""
        if self.deleted:
            return Status.DELETE_PENDING, b""
        data = encode_changes(self._changes)
        overflow = self.overflowed or len(data) > min(max_output, self.max_output)
        self._changes = []
        self._size = 0
        self.overflowed = False
        if overflow:
            return Status.NOTIFY_ENUM_DIR, b""
        return Status.SUCCESS, data

    def wait(self, max_output: int) -> asyncio.Future[tuple[int, bytes]]:
        """Queue a request; requests are answered in arrival order."""
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._pending.append((future, max_output))
        return future

    def forget(self, future: asyncio.Future[tuple[int, bytes]]) -> None:
        self._pending = [p for p in self._pending if p[0] is not future]

    def add(self, entries: list[tuple[int, str]]) -> None:
        """Buffer changes, then answer the oldest pending request if there is one."""
        if self.deleted:
            return
        for action, name in entries:
            if self._changes and self._changes[-1] == (action, name):
                continue  # Samba coalesces identical neighbours too
            raw_len = len(name.encode("utf-16-le"))
            size = ((self._size + 3) & ~3 if self._changes else 0) + _ENTRY.size + raw_len
            if self.overflowed or len(self._changes) >= _MAX_BUFFERED or size > self.max_output:
                # No reply could hold these any more: keep only the fact.
                self.overflowed = True
                self._changes = []
                self._size = 0
                continue
            self._changes.append((action, name))
            self._size = size
        self._answer()

    def mark_deleted(self) -> None:
        """The directory itself is gone: every request now fails with DELETE_PENDING."""
        self.deleted = True
        self._changes = []
        self._answer()

    def cleanup(self) -> None:
        """The handle is closing (close, tree disconnect, logoff): NOTIFY_CLEANUP."""
        pending, self._pending = self._pending, []
        for future, _max in pending:
            if not future.done():
                future.set_result((Status.NOTIFY_CLEANUP, b""))
        if self.hub is not None:
            self.hub.remove(self)

    def _answer(self) -> None:
        while self._pending and self.ready():
            future, max_output = self._pending.pop(0)
            if not future.done():
                future.set_result(self.take(max_output))


class NotifyHub:
    """This node's watches, keyed by (share, directory below the share root)."""

    def __init__(self, publish: Callable[[ChangeEvent], None] | None = None) -> None:
        # Set by the node to carry its own events to the other nodes.
        self.publish = publish
        self._watches: dict[tuple[str, str], set[Watch]] = {}

    def watch(
        self, share: str, directory: str, recursive: bool, completion_filter: int,
        max_output: int,
    ) -> Watch:  # fmt: skip
        watch = Watch(share.lower(), directory, recursive, completion_filter, max_output)
        self.add(watch)
        return watch

    def add(self, watch: Watch) -> None:
        watch.hub = self
        self._watches.setdefault((watch.share, watch.directory), set()).add(watch)

    def remove(self, watch: Watch) -> None:
        key = (watch.share, watch.directory)
        bucket = self._watches.get(key)
        if bucket is not None:
            bucket.discard(watch)
            if not bucket:
                del self._watches[key]

    def report(self, event: ChangeEvent) -> None:
        """A change made on this node: to local watches, then to the other nodes."""
        self.deliver(event)
        if self.publish is not None:
            try:
                self.publish(event)
            except Exception:  # noqa: BLE001 - a bus hiccup must not fail the change
                log.exception("publishing %s failed", event)

    def deliver(self, event: ChangeEvent) -> None:
        """Match an event, from this node or another, against this node's watches."""
        if not self._watches or not event.path:
            return  # the share root has no parent to see it change
        found: dict[Watch, list[tuple[int, str]]] = {}
        for path, action, mask in _entries(event):
            for watch, name in self._watchers(event.share, path, mask):
                found.setdefault(watch, []).append((action, name))
        for watch, entries in found.items():
            watch.add(entries)
        if event.action == "renamed" and event.is_dir:
            self._move(event.share, event.old_path, event.path)
        elif event.action == "removed" and event.is_dir:
            for watch in self._under(event.share, event.path):
                watch.mark_deleted()

    def _watchers(self, share: str, path: str, mask: int) -> Iterator[tuple[Watch, str]]:
        """Watches that see a change of ``path``, with the name each reports."""
        parts = path.split("/")
        for depth in range(len(parts) - 1, -1, -1):
            directory = "/".join(parts[:depth])
            direct = depth == len(parts) - 1
            for watch in self._watches.get((share, directory), ()):
                if watch.completion_filter & mask and (direct or watch.recursive):
                    yield watch, "\\".join(parts[depth:])

    def _under(self, share: str, directory: str) -> list[Watch]:
        return [
            w for (s, d), bucket in self._watches.items() if s == share and _below(d, directory)
            for w in bucket
        ]  # fmt: skip

    def _move(self, share: str, old: str, new: str) -> None:
        """A renamed directory keeps its watches, and so does everything below it."""
        for watch in self._under(share, old):
            self.remove(watch)
            watch.directory = new + watch.directory[len(old) :]
            self.add(watch)


def end_watch(watch: Watch | None) -> None:
    if watch is not None:
        watch.cleanup()
