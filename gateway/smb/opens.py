"""Ending handles, on every path: CLOSE, TREE_DISCONNECT, LOGOFF, a dropped
connection, an expired or purged durable handle, a CREATE undone, a node stopping.

``close`` is the one place an open is released: it leaves the connection's and
the node's tables, answers a pending CHANGE_NOTIFY, settles the write time,
leaves the bus (breaking others' handle caching first when it deletes), closes
its descriptor and carries out delete-on-close, streams included. The others
decide which opens end and which are parked for a durable reconnect instead.
"""

from __future__ import annotations

import logging
import os

from oplock_bus.api import BusUnavailable, Operation

from . import durable, streams, writetime
from .notify import end_watch
from .services import NodeServices
from .state import ConnectionState, Open, Session, SessionState, TreeConnect

log = logging.getLogger("smbgw.opens")


def register(conn: ConnectionState, op: Open) -> None:
    """``op`` is reachable by its FileId through ``conn`` (and counts for its session).

    A CREATE that finished after its connection dropped (the session lives on
    through another channel, and the client replays it there) puts its open
    on that channel instead."""
    if conn.closed:
        conn = op.tree.session.heir(conn) or conn
        op.connection = conn
    conn.opens[op.volatile_id] = op
    op.tree.session.open_count += 1


def _unregister(table: dict[int, Open], op: Open) -> None:
    if table.pop(op.volatile_id, None) is not None:
        op.tree.session.open_count -= 1


async def close(node: NodeServices, op: Open) -> None:
    """Release a handle: tables, notify, write time, bus, descriptor, delete-on-close."""
    if op.closed:
        return
    op.closed = True
    if op.connection is not None:
        _unregister(op.connection.opens, op)
    node.opens.pop(op.bus_open_id, None)
    node.replays.forget(op)
    if op.notify is not None:
        op.notify.cleanup()
    delete = op.delete_on_close
    if node.vouched():
        writetime.closing(op)  # before the bus lets another open see the file
    else:
        # The file may be another node's client's by now: leave it as it is.
        delete = False
        writetime.drop(op)
    if delete and await streams.defer_delete(node, op):
        delete = False  # the file's open streams keep it, delete-pending (MS-FSA)
    # A file deleted on close goes before the bus lets go of its open: an
    # opener waiting on another node (a reconnect, smbtorture's
    # durable-open.delete_on_close1) must find the name gone, not the old file.
    # A stream's handle keeps the old order: the last stream out checks on
    # the bus that no other stream is open.
    early = delete and op.stream is None
    released = False
    if op.file_key and op.bus_open_id:
        # The handle must close whatever the bus says, so bus errors are logged.
        try:
            if delete:
                # Others' handle caching goes before the name does (Samba
                # smb2_close; smbtorture smb2.lease.unlink).
                await node.bus.break_for(op.file_key, op.bus_open_id, Operation.DELETE)
            if early:
                released = True
                await _release_locally(node, op, delete)
            await node.bus.close(op.file_key, op.bus_open_id)
        except BusUnavailable as e:  # Redis away: the handle closes here all the same
            node.bus_outage.failed(e, f"closing {op.bus_open_id} on the bus")
        except Exception:  # noqa: BLE001
            log.exception("bus close of %s failed", op.bus_open_id)
    if not released:
        await _release_locally(node, op, delete)


async def _release_locally(node: NodeServices, op: Open, delete: bool) -> None:
    """The descriptor, then what delete-on-close removes from the volume."""
    op.close_fd()
    if await streams.closed(node, op, delete):
        return
    if delete and op.host_path:
        try:
            if op.is_dir:
                os.rmdir(op.host_path)
            else:
                os.unlink(op.host_path)
            node.notify_change(op.tree, op.host_path, "removed", op.is_dir)
        except OSError as e:
            log.info("delete-on-close of %s failed: %s", op.host_path, e)


async def disconnect_tree(
    node: NodeServices, conn: ConnectionState, tree: TreeConnect, lost: bool = False
) -> None:
    """End a tree connect; ``lost`` (the transport dropped) parks durable handles."""
    # The tree's opens may have been made through any channel of its session.
    tables = [conn.opens] + [c.opens for c in tree.session.channels if c is not conn]
    for opens in tables:
        for op in [o for o in opens.values() if o.tree is tree]:
            if lost and node.durable.keeps(op):
                # A parked handle has no connection to answer a pending notify on.
                end_watch(op.notify)
                op.notify = None
                _unregister(opens, op)
                await _outlive_connection(node, op)
            else:
                await close(node, op)
    tree.session.trees.pop(tree.tree_id, None)


async def _outlive_connection(node: NodeServices, op: Open) -> None:
    """The transport dropped under a handle that survives it (MS-SMB2 3.3.7.1).

    A durable or resilient handle is left to the bus, disconnected, so that
    its client can take it back through any node, this one or another
    (``create``'s take over): the node lets go of the descriptor but not of
    what the handle holds. The node parks the rest itself (``DurableTable``).
    """
    # Delete-on-close stays with a node that can carry it out when the
    # handle is closed unclaimed or broken; persistent handles go regardless.
    handed = (op.durable or op.resilient) and op.stream is None
    handed = handed and (op.persistent or not op.delete_on_close)
    if handed and op.file_key and op.bus_open_id and node.vouched():
        try:
            kept = await node.bus.disconnect(op.file_key, op.bus_open_id, durable.leaving(op))
        except NotImplementedError:
            pass
        except Exception as e:  # noqa: BLE001 - the node keeps it instead
            log.warning("bus cannot keep durable handle %s (%s); parked here", op.bus_open_id, e)
        else:
            if not kept:
                # Lost its handle caching meanwhile: the bus closed it (3.3.7.1).
                await close(node, op)
                return
            op.closed = True
            op.connection = None
            node.opens.pop(op.bus_open_id, None)
            writetime.closing(op)
            op.close_fd()
            return
    node.durable.park(op)


async def logoff(
    node: NodeServices, conn: ConnectionState, session: Session, lost: bool = False
) -> None:
    """End a session's trees; ``lost`` (the transport dropped) keeps durable handles."""
    for tree in list(session.trees.values()):
        await disconnect_tree(node, conn, tree, lost)
    session.state = SessionState.EXPIRED


def set_lease_state(
    node: NodeServices, client_guid: bytes, lease_key: bytes, state: int, epoch: int | None
) -> None:
    """Remember a lease's state on its opens, for a durable reconnect to report."""
    for op in node.opens.values():
        if op.lease_key == lease_key and op.client_guid == client_guid:
            op.lease_state = state
            if epoch is not None:
                op.lease_epoch = epoch
