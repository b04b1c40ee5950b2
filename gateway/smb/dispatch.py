"""One table: each SMB2 command, its handler, and what it needs before it runs.

As Samba's ``smbd_smb2_table``: whether a command needs a session (else
STATUS_USER_SESSION_DELETED when its SessionId is unknown) and a tree connect
(else STATUS_NETWORK_NAME_DELETED). CANCEL has no handler: the connection
acts on it directly, since it is never answered.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..protocol.constants import Command
from .context import Reply, RequestContext
from .handlers import (
    close,
    create,
    directory,
    echo,
    info,
    ioctl,
    lock,
    negotiate,
    notify,
    oplock,
    readwrite,
    session,
    tree,
)

Handler = Callable[[RequestContext], Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class Entry:
    handler: Handler
    needs_session: bool = True
    needs_tree: bool = True


TABLE: dict[int, Entry] = {
    Command.NEGOTIATE: Entry(negotiate.handle_negotiate, needs_session=False, needs_tree=False),
    Command.SESSION_SETUP: Entry(
        session.handle_session_setup, needs_session=False, needs_tree=False
    ),
    Command.LOGOFF: Entry(session.handle_logoff, needs_tree=False),
    Command.TREE_CONNECT: Entry(tree.handle_tree_connect, needs_tree=False),
    Command.TREE_DISCONNECT: Entry(tree.handle_tree_disconnect),
    Command.CREATE: Entry(create.handle_create),
    Command.CLOSE: Entry(close.handle_close),
    Command.FLUSH: Entry(readwrite.handle_flush),
    Command.READ: Entry(readwrite.handle_read),
    Command.WRITE: Entry(readwrite.handle_write),
    Command.LOCK: Entry(lock.handle_lock),
    Command.IOCTL: Entry(ioctl.handle_ioctl),
    Command.ECHO: Entry(echo.handle_echo, needs_session=False, needs_tree=False),
    Command.QUERY_DIRECTORY: Entry(directory.handle_query_directory),
    Command.CHANGE_NOTIFY: Entry(notify.handle_change_notify),
    Command.QUERY_INFO: Entry(info.handle_query_info),
    Command.SET_INFO: Entry(info.handle_set_info),
    Command.OPLOCK_BREAK: Entry(oplock.handle_oplock_break, needs_tree=False),
}
