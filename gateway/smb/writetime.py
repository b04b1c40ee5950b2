"""LastWriteTime moved the way Windows moves it, on a POSIX volume shared by nodes.

A POSIX write moves the inode's mtime at once. Windows does not (smbtorture
smb2.timestamps.delayed-*, tested against Windows by Samba): through one handle,
the write time becomes the current time about 2 s after the handle's first
write, later writes leave it due until the handle is closed, and FLUSH or
SET_INFO (end of file, allocation, basic information) set a due one at once. A
handle whose client set LastWriteTime, or froze it with -1, never moves it
(MS-FSA 2.1.5.14.2, Open.UserSetModificationTime); -2 thaws it. ChangeTime
likewise (Open.UserSetChangeTime): a write through a handle whose client set or
froze it shows the ChangeTime it showed before.

What clients read is on the volume at every moment: a WRITE puts back the mtime
the file had before it (``os.utime`` on the descriptor), so another node
reading the inode sees what Windows would show. Only the bookkeeping of a
handle is kept in the node's memory (``HandleTimes``: whether an update is due
through it, its timer, the frozen flags), as it belongs to that handle alone.
If the node dies with an update due, the update is lost and the file keeps the
write time clients last read.

A due update gives way to a write time a client set meanwhile through another
handle, on any node (the DOS xattr marks a client-set mtime, see
``ShareFS.write_time_set_by_client``): Windows keeps such a time against other
handles' pending updates.

A named stream's times are its base file's (``gateway.fs.streamstore``), so a write
through a stream handle goes to the stream's sidecar file and moves the base
file's times by the same rules; the sidecar's own times are never shown.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .state import HandleTimes, Open

if TYPE_CHECKING:
    from ..protocol.infoclass import BasicInfo

log = logging.getLogger(__name__)

# Seconds from a handle's first write to its write-time update (Windows and
# Samba: 2 s).
WRITE_TIME_DELAY = 2.0
_FREEZE = 0xFFFFFFFFFFFFFFFF  # -1: stop updating through this handle
_THAW = 0xFFFFFFFFFFFFFFFE  # -2: resume


def _times(op: Open) -> HandleTimes:
    if op.times is None:
        op.times = HandleTimes()
    return op.times


def _now_ns() -> int:
    return time.time_ns() // 100 * 100  # FILETIME resolution, so it reads back exactly


@dataclass(slots=True, frozen=True)
class Before:
    """The times of a handle's file before a write through it (``before_write``)."""

    atime_ns: int
    mtime_ns: int
    keep_change: int  # the ChangeTime to show again, 0 for none


def before_write(op: Open) -> Before:
    """Read what a write through ``op`` must leave or restore; then write, then
    ``after_write`` (``write`` does the three; a server-side copy writes itself)."""
    target = op.meta_target
    before = os.stat(target)
    keep_change = 0
    fs = op.tree.fs
    if op.times is not None and op.times.user_set_change and fs is not None:
        info = fs.stat_fd(target) if isinstance(target, int) else fs.stat_path(target)
        keep_change = info.change_time
    return Before(before.st_atime_ns, before.st_mtime_ns, keep_change)


def write(op: Open, data: bytes | memoryview, offset: int) -> int:
    """pwrite through ``op`` that leaves the file's times as Windows would show them."""
    before = before_write(op)
    written = os.pwrite(op.fd, data, offset)
    after_write(op, before)
    return written


def after_write(op: Open, before: Before) -> None:
    """The write went through ``op``: the write time it moved is put back and
    becomes due (the ChangeTime moves now, unless the handle's client set it)."""
    # A stream's base was not written: setting its times moves its ctime, as the
    # write moved a file's.
    _set_times(op, before.atime_ns, before.mtime_ns)
    fs = op.tree.fs
    if before.keep_change and fs is not None:
        fs.keep_change_time(op.host_path, before.keep_change)
    times = _times(op)
    if not times.user_set_write:
        times.due = True
        times.left_mtime_ns = before.mtime_ns
        if not times.triggered:
            times.triggered = True
            times.timer = asyncio.get_running_loop().call_later(WRITE_TIME_DELAY, _fire, op)


def _set_times(op: Open, atime_ns: int, mtime_ns: int) -> None:
    """futimens; where the node may not set times on the file (it runs unprivileged
    and another user owns it) the inode keeps what the write gave it."""
    try:
        os.utime(op.meta_target, ns=(atime_ns, mtime_ns))
    except (PermissionError, FileNotFoundError) as e:  # the latter: a stream's base gone
        log.debug("times of %s not set: %s", op.host_path, e)


def _fire(op: Open) -> None:
    if op.times is not None:
        op.times.timer = None
    if op.closed or op.fd < 0:
        return
    try:
        update_now(op)
    except OSError as e:
        log.debug("delayed write time of %s not set: %s", op.host_path, e)


def update_now(op: Open) -> None:
    """Set a write time due through ``op`` to now (FLUSH, SET_INFO, its timer, CLOSE)."""
    times = op.times
    if times is None or not times.due:
        return
    times.due = False
    if times.timer is not None:
        times.timer.cancel()
        times.timer = None
    if times.user_set_write or op.fd < 0:
        return
    target = op.meta_target
    st = os.stat(target)
    fs = op.tree.fs
    if (
        st.st_mtime_ns != times.left_mtime_ns
        and fs is not None
        and fs.write_time_set_by_client(target, st.st_mtime_ns)
    ):
        return  # a client set the write time since this handle's write: it stays
    _set_times(op, st.st_atime_ns, _now_ns())


def closing(op: Open) -> None:
    """A handle goes: its due update is made now, its timer dropped."""
    times = op.times
    if times is None:
        return
    try:
        update_now(op)
    except OSError as e:
        log.debug("write time of %s not set at close: %s", op.host_path, e)
    if times.timer is not None:
        times.timer.cancel()
        times.timer = None


def drop(op: Open) -> None:
    """A handle goes without touching its file: a due update is forgotten."""
    times = op.times
    if times is not None and times.timer is not None:
        times.timer.cancel()
        times.timer = None


def set_end_of_file(op: Open, size: int) -> None:
    """ftruncate through ``op``: the write time moves at once (Windows), unless the
    handle's client set or froze it."""
    before = os.stat(op.meta_target)
    os.ftruncate(op.fd, size)
    times = _times(op)
    if times.user_set_write:
        _set_times(op, before.st_atime_ns, before.st_mtime_ns)
        return
    times.due = False
    times.triggered = True  # later writes wait for CLOSE, as after the delayed update
    if times.timer is not None:
        times.timer.cancel()
        times.timer = None
    _set_times(op, before.st_atime_ns, _now_ns())


def basic_set(op: Open, basic: BasicInfo) -> None:
    """The handle's flags after SET_INFO FileBasicInformation (MS-FSA 2.1.5.14.2):
    a time set or frozen (-1) stops updates through the handle, -2 resumes them."""
    times = _times(op)
    times.user_set_write = _user_set(basic.last_write_time, times.user_set_write)
    times.user_set_change = _user_set(basic.change_time, times.user_set_change)
    if times.user_set_write:
        times.due = False


def _user_set(value: int, current: bool) -> bool:
    if value == _THAW:
        return False
    if value == 0:
        return current
    return True  # -1, or an explicit time
