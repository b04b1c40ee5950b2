"""Directory change notification: watches on directory handles, fed by this node's changes."""

from __future__ import annotations

import asyncio
import os
import struct
from dataclasses import dataclass, field

from .protocol.constants import CompletionFilter, NotifyAction, Status

_ACTIONS = {
    "added": NotifyAction.ADDED,
    "removed": NotifyAction.REMOVED,
    "modified": NotifyAction.MODIFIED,
    "renamed_old": NotifyAction.RENAMED_OLD_NAME,
    "renamed_new": NotifyAction.RENAMED_NEW_NAME,
}
_MAX_BUFFERED = 1000


def _filter_for(action: str, is_dir: bool) -> int:
    if action == "modified":
        return CompletionFilter.LAST_WRITE | CompletionFilter.SIZE | CompletionFilter.ATTRIBUTES
    return CompletionFilter.DIR_NAME if is_dir else CompletionFilter.FILE_NAME


def encode_changes(changes: list[tuple[int, str]]) -> bytes:
    """FILE_NOTIFY_INFORMATION entries (MS-FSCC 2.7.1), 4-byte aligned."""
    out = bytearray()
    for i, (action, name) in enumerate(changes):
        raw = name.encode("utf-16-le")
        size = 12 + len(raw)
        padded = (size + 3) & ~3
        nxt = padded if i != len(changes) - 1 else 0
        out += struct.pack("<III", nxt, action, len(raw)) + raw
        if nxt:
            out += b"\x00" * (padded - size)
    return bytes(out)


@dataclass(eq=False)
class Watch:
    directory: str
    recursive: bool
    completion_filter: int
    max_output: int
    changes: list[tuple[int, str]] = field(default_factory=list)
    overflowed: bool = False
    waiter: asyncio.Future[tuple[int, bytes]] | None = None
    hub: NotifyHub | None = None

    def cleanup(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((Status.NOTIFY_CLEANUP, b""))
        if self.hub is not None:
            self.hub.remove(self)

    def add(self, action: int, name: str) -> None:
        if len(self.changes) >= _MAX_BUFFERED:
            self.overflowed = True
        else:
            self.changes.append((action, name))
        if self.waiter is not None and not self.waiter.done():
            asyncio.get_running_loop().call_soon(self._complete)

    def _complete(self) -> None:
        if self.waiter is None or self.waiter.done() or not (self.changes or self.overflowed):
            return
        self.waiter.set_result(self.take())

    def take(self) -> tuple[int, bytes]:
        data = encode_changes(self.changes)
        overflow = self.overflowed or len(data) > self.max_output
        self.changes = []
        self.overflowed = False
        if overflow:
            return Status.NOTIFY_ENUM_DIR, b""
        return Status.SUCCESS, data


class NotifyHub:
    def __init__(self) -> None:
        self._watches: dict[str, set[Watch]] = {}

    def add(self, watch: Watch) -> None:
        watch.hub = self
        self._watches.setdefault(watch.directory, set()).add(watch)

    def remove(self, watch: Watch) -> None:
        bucket = self._watches.get(watch.directory)
        if bucket is not None:
            bucket.discard(watch)
            if not bucket:
                del self._watches[watch.directory]

    def changed(self, host_path: str, action: str, is_dir: bool) -> None:
        if not self._watches:
            return
        code = _ACTIONS[action]
        wanted = _filter_for(action, is_dir)
        directory, name = os.path.split(host_path.rstrip("/"))
        rel = name
        while True:
            for watch in self._watches.get(directory, ()):
                if watch.completion_filter & wanted and (rel == name or watch.recursive):
                    watch.add(code, rel.replace("/", "\\"))
            parent, part = os.path.split(directory)
            if parent == directory or not part:
                return
            rel = f"{part}/{rel}"
            directory = parent
