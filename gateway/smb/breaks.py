"""Breaks the bus decided, delivered to the client holding the open or lease.

The bus calls ``deliver`` with a notice addressed to this node: a lease break
goes to the connection of the lease's ClientGuid that holds an open with that
key; an oplock break to the connection of the open. A break aimed at a parked
durable handle cannot be delivered, so the handle is closed instead and the
opener waiting for it proceeds at once (Samba does the same).
"""

from __future__ import annotations

import logging

from oplock_bus.api import BreakNotice

from ..protocol.constants import Command
from . import opens
from .buswait import request_is_waiting_on_break
from .handlers.oplock import lease_break, oplock_break
from .services import NodeServices
from .state import Open

log = logging.getLogger("smbgw.breaks")


async def deliver(node: NodeServices, notice: BreakNotice) -> None:
    """Send the break the bus decided to the client holding the open or lease."""
    request_is_waiting_on_break()
    if notice.lease is not None:
        guid, key = notice.lease.client_guid, notice.lease.key
        target = _lease_holder(node, guid, key)
        if target is None:
            parked = node.durable.lease_holders(guid, key)
            for op in parked:
                node.durable.purge(op, "lease break while disconnected")
            if not parked:
                log.debug("lease break for %s: no open on this node", notice.lease)
            return
        if not notice.ack_required:
            opens.set_lease_state(node, guid, key, notice.new_level, notice.epoch)
        assert target.connection is not None
        target.connection.send_notification(
            Command.OPLOCK_BREAK, lease_break(notice), target.tree.session
        )
        node.break_clock.sent_lease(guid, key, notice.ack_required)
        return
    if notice.open_id is None:
        return
    holder = node.opens.get(notice.open_id)
    if holder is None or holder.closed:
        return
    if holder.connection is None:
        node.durable.purge(holder, "oplock break while disconnected")
        return
    holder.connection.send_notification(
        Command.OPLOCK_BREAK, oplock_break(holder, notice.new_level), holder.tree.session
    )
    node.break_clock.sent_oplock(notice.open_id, notice.ack_required)


def _lease_holder(node: NodeServices, client_guid: bytes, lease_key: bytes) -> Open | None:
    best: Open | None = None
    for op in node.opens.values():
        conn = op.connection
        if op.lease_key == lease_key and conn is not None and conn.client_guid == client_guid:
            if not conn.closed:
                best = op
    return best
