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


def message_prefix(n: BreakNotice, key: str) -> bytes:
    """A notice, then the key of the document it came from, for the CAS script
    to append the value it wrote (a plain notice, with no newline, carries none)."""
    return encode_notice(n) + b"\n" + key.encode() + b"\n"


def decode_message(data: bytes) -> tuple[BreakNotice, str | None, bytes | None]:
    # Neither compact JSON nor a stored "<token> <json>" holds a raw newline.
    head, sep, rest = data.partition(b"\n")
    if not sep:
        return decode_notice(head), None, None
    key, _, value = rest.partition(b"\n")
    return decode_notice(head), key.decode(), value or None  # empty: deleted or unknown


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
