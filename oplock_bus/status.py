"""``smbgw status``: the cluster as the bus sees it.

Nodes (id, address, epoch, last heartbeat, DRAINING or DRAINED after
``smbgw drain``), which node serves which address (its own, or one taken
over from a dead or drained node), open files with their opens,
oplock and lease states, byte-range locks and lock waiters, and the breaks
still waiting for an acknowledgement.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from .api import OPLOCK_BATCH, OPLOCK_EXCLUSIVE, OPLOCK_II, OPLOCK_LEASE, BusUnavailable
from .coordinator import Coordinator
from .liveness import AddressView, read_address_view, read_members
from .redis_store import RedisStore
from .redis_url import SCHEMES, RedisTarget, parse_url, redact

OPLOCK_NAMES = {
    0: "none", OPLOCK_II: "II", OPLOCK_EXCLUSIVE: "exclusive", OPLOCK_BATCH: "batch",
    OPLOCK_LEASE: "lease",
}  # fmt: skip


def lease_bits(state: int) -> str:
    return "".join(c for bit, c in ((1, "R"), (2, "H"), (4, "W")) if state & bit) or "none"


def tool_target(url: str, password: str | None, command: str) -> RedisTarget:
    """The bus a tool (``smbgw status``, ``smbgw drain``) reads; ValueError
    for a URL that names no Redis."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise ValueError(f"{command} needs a Redis bus URL (redis://...), not {redact(url)!r}")
    return parse_url(url, password=password)


async def collect(url: str, password: str | None = None) -> dict[str, Any]:
    """Read everything from the bus at ``url``; ValueError/BusUnavailable."""
    target = tool_target(url, password, "status")
    store = RedisStore(target)
    try:
        await store.start(subscriber=False)
        nodes = await read_members(store)
        view = await read_address_view(store, nodes)
        snap = await Coordinator(store).snapshot()
        now = float((await store.client.time())[0])
    finally:
        await store.stop()
    return {
        "bus": target.describe(),
        "namespace": target.namespace,
        "time": now,
        "nodes": nodes,
        "addresses": addresses(view),
        "files": snap["files"],
        "leases": snap["leases"],
        "pending_breaks": pending_breaks(snap["files"]),
    }


def addresses(view: AddressView) -> list[dict[str, Any]]:
    """Every address a node has or serves: its owner, whether that owner is
    alive, and the live nodes listening on it (another than the owner: taken
    over; none: nobody answers there)."""
    owners = view.owners()
    served = view.served()
    out = []
    for address in sorted(set(owners) | set(served)):
        owner = owners.get(address)
        out.append({
            "address": address, "owner": owner, "owner_alive": owner in view.alive,
            "owner_draining": owner in view.draining, "served_by": served.get(address, []),
        })  # fmt: skip
    return out


def _address_line(a: dict[str, Any]) -> str:
    owner, by = a["owner"], a["served_by"]
    if not by:
        why = ""
        if owner and a.get("owner_draining"):
            why = f" (its owner {owner} is drained)"
        elif owner and not a["owner_alive"]:
            why = f" (its owner {owner} is dead)"
        return f"  {a['address']}  not served{why}"
    taken = f" (taken over from {owner})" if owner and owner not in by else ""
    return f"  {a['address']}  served by {', '.join(by)}{taken}"


def pending_breaks(files: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for file, doc in sorted(files.items()):
        for open_id, o in doc["opens"].items():
            if o.get("breaking"):
                out.append({
                    "file": file, "node_id": o["node_id"], "open_id": open_id,
                    "kind": "oplock", "from": OPLOCK_NAMES.get(o["oplock"], hex(o["oplock"])),
                    "to": OPLOCK_NAMES.get(o["break_to"], hex(o["break_to"])),
                    "deadline": o["break_deadline"],
                })  # fmt: skip
        for lid, lease in doc["leases"].items():
            if lease.get("breaking"):
                holders = [doc["opens"][x]["node_id"] for x in lease["opens"] if x in doc["opens"]]
                out.append({
                    "file": file, "node_id": holders[0] if holders else None, "lease": lid,
                    "kind": "lease", "from": lease_bits(lease["state"]),
                    "to": lease_bits(lease["break_to"]), "deadline": lease["break_deadline"],
                })  # fmt: skip
    return out


def render(st: dict[str, Any]) -> str:
    now = st["time"]  # Redis's clock: heartbeats and deadlines are read against it
    lines = [f"bus {st['bus']} (namespace {st['namespace']!r})", f"nodes ({len(st['nodes'])}):"]
    for n in st["nodes"]:
        beat = n["heartbeat"]
        seen = f"last heartbeat {max(0.0, now - beat):.1f}s ago" if beat else "DEAD: no heartbeat"
        takeover = "  takeover" if n.get("takeover") else ""
        drain = f"  {n['drain'].upper()}" if n.get("drain") else ""  # serves nobody
        lines.append(f"  {n['id']}  {n['address']}  epoch {n['epoch']}  {seen}{takeover}{drain}")
    lines.append(f"addresses ({len(st['addresses'])}):")
    lines.extend(_address_line(a) for a in st["addresses"])
    lines.append(f"open files ({len(st['files'])}):")
    for file, doc in sorted(st["files"].items()):
        flags = "  delete pending" if doc.get("delete_pending") else ""
        lines.append(f"  {file}{flags}")
        for open_id, o in doc["opens"].items():
            level = OPLOCK_NAMES.get(o["oplock"], hex(o["oplock"]))
            lease = f" lease {o['lease_id']}" if o.get("lease_id") else ""
            lines.append(
                f"    open {open_id} node {o['node_id']} epoch {o.get('epoch', 0)} "
                f"access 0x{o['access']:x} share 0x{o['share']:x} oplock {level}{lease}"
            )
        for lid, x in doc["leases"].items():
            lines.append(f"    lease {lid} {lease_bits(x['state'])} epoch {x['epoch']}")
        for lk in doc["locks"]:
            kind = "exclusive" if lk["exclusive"] else "shared"
            lines.append(f"    lock {lk['open_id']} {lk['offset']}+{lk['length']} {kind}")
        for w in doc["waiters"]:
            spans = ", ".join(f"{r['offset']}+{r['length']}" for r in w["ranges"])
            lines.append(f"    waiting lock {w['open_id']} {spans}")
        for open_id, r in doc.get("pending", {}).items():
            lines.append(
                f"    waiting open {open_id} node {r['node_id']} "
                f"access 0x{r['access']:x} share 0x{r['share']:x}"
            )
    lines.append(f"pending breaks ({len(st['pending_breaks'])}):")
    for b in st["pending_breaks"]:
        who = b.get("open_id") or b.get("lease")
        left = b["deadline"] - now
        lines.append(
            f"  {b['file']} {b['kind']} {who} on {b['node_id']}: {b['from']} -> {b['to']}, "
            f"{left:.1f}s left"
        )
    return "\n".join(lines)


def main(url: str, as_json: bool, password: str | None = None) -> int:
    """Print the status; 2 with one line on stderr if the bus cannot be read."""
    import asyncio

    try:
        st = asyncio.run(collect(url, password))
    except (ValueError, BusUnavailable) as e:
        print(f"smbgw status: {e}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(st, indent=2, sort_keys=True))
    else:
        print(render(st))
    return 0

