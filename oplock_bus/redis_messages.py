"""Break notices as they travel between nodes: compact JSON."""

from __future__ import annotations

import json
from typing import Any

from .api import BreakNotice, LeaseKey


def encode_notice(n: BreakNotice) -> bytes:
    doc: dict[str, Any] = {
        "file": n.file,
        "node": n.node_id,
        "open": n.open_id,
        "lease": [n.lease.client_guid.hex(), n.lease.key.hex()] if n.lease is not None else None,
        "to": n.new_level,
        "cur": n.current_state,
        "epoch": n.epoch,
        "ver": n.version,
        "ack": n.ack_required,
        "owner": n.owner_data,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_notice(data: bytes) -> BreakNotice:
    d = json.loads(data)
    lease = d["lease"]
    return BreakNotice(
        file=d["file"],
        node_id=d["node"],
        open_id=d["open"],
        lease=LeaseKey(bytes.fromhex(lease[0]), bytes.fromhex(lease[1])) if lease else None,
        new_level=d["to"],
        current_state=d["cur"],
        epoch=d["epoch"],
        version=d["ver"],
        ack_required=d["ack"],
        owner_data=d["owner"],
    )
