"""What ``smbgw status`` shows: the bus's records joined with the nodes' own.

The bus knows files by identity (``<volume>:<inode>``) and opens by bus open
id; it knows no user, client, share or path (it keeps no SMB knowledge).
Each node knows those for its own opens (``gateway/status.py`` collects
what the nodes answered). This module joins the two by bus open id into one
document, ``--json``'s, and renders it as text. Plain data in, plain data
out: no I/O, so it runs the same for a Redis cluster, for one node's admin
socket, and in tests.

The document is the bus's (``oplock_bus.status.read_bus``: ``nodes``,
``addresses``, ``files``, ``leases``, ``pending_breaks``, ``generation``,
``recovering``, ``recovery``), with the files' records unchanged except for
``share`` and ``path``, plus:

- ``nodes``: each with ``state`` (alive, fenced, dead), ``dead_since`` and
  what the node said of itself (``answered``, ``connections``, ``fencings``);
  a node the bus has forgotten (reaped) stays listed as dead for a day;
- ``sessions`` and ``tree_connects``;
- ``open_files``: by share and path, each open with its user, client,
  access and share mode in words and its oplock or lease in letters, the
  leases, byte-range locks, lock waiters and opens waiting for a break;
- in ``pending_breaks``, the holder's share, path, user and client, and the
  opens waiting for the break.
"""

from __future__ import annotations

import datetime
from typing import Any

from oplock_bus.api import OPLOCK_LEASE
from oplock_bus.liveness import FENCE_FRACTION
from oplock_bus.status import OPLOCK_NAMES, lease_bits

# MS-SMB2 2.2.13.1.1 (file) access rights worth a word: what the handle may
# do to the data and the file. The attribute, EA and synchronize rights
# every open carries are left to the mask, shown beside the words.
_ACCESS_WORDS = (
    (0x00000001, "read"),
    (0x00000002, "write"),
    (0x00000004, "append"),
    (0x00000020, "execute"),
    (0x00010000, "delete"),
    (0x00040000, "write-dac"),
    (0x00080000, "write-owner"),
    (0x10000000, "generic-all"),
    (0x20000000, "generic-execute"),
    (0x40000000, "generic-write"),
    (0x80000000, "generic-read"),
    (0x02000000, "maximum-allowed"),
)
_ATTRIBUTE_RIGHTS = 0x00000080 | 0x00000100 | 0x00000008 | 0x00000010  # attributes, EAs
FILE_ALL_ACCESS = 0x001F01FF
_SHARE_WORDS = ((1, "read"), (2, "write"), (4, "delete"))  # FILE_SHARE_*


def access_words(mask: int) -> list[str]:
    """A handle's access as smbstatus's R/W column would say it, in words."""
    if mask & FILE_ALL_ACCESS == FILE_ALL_ACCESS:
        return ["all"]
    words = [word for bit, word in _ACCESS_WORDS if mask & bit]
    if not words:
        return ["attributes"] if mask & _ATTRIBUTE_RIGHTS else ["none"]
    return words


def share_words(mask: int) -> list[str]:
    """What the open lets others do at the same time; ``none``: exclusive."""
    return [word for bit, word in _SHARE_WORDS if mask & bit] or ["none"]


def _open_key(open_id: str) -> str:
    # A stream's companion opens on its base file (gateway/smb/streams.py)
    # are "<open id>+base" and "<open id>+guard": they are that open's.
    return open_id.split("+", 1)[0]


def _when(t: float | None) -> str:
    if not t:
        return "?"
    return datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


class _Opens:
    """Every open any node told about, by bus open id, with its node."""

    def __init__(self, views: dict[str, dict[str, Any]]) -> None:
        self.by_id: dict[str, dict[str, Any]] = {}
        for node, entry in views.items():
            view = entry.get("view") or {}
            for open_id, facts in (view.get("opens") or {}).items():
                self.by_id[open_id] = {**facts, "node": node}

    def get(self, open_id: str) -> dict[str, Any]:
        return self.by_id.get(_open_key(open_id), {})


def merge(
    bus: dict[str, Any],
    views: dict[str, dict[str, Any]],
    dead: dict[str, dict[str, Any]] | None = None,
    answered: set[str] | None = None,
) -> dict[str, Any]:
    """The status document: ``bus`` (``oplock_bus.status.read_bus``) joined
    with ``views`` (node id -> its answer: ``{"view": {...}, "time": ...}``)
    and ``dead`` (node id -> ``{"epoch", "since"}``, from the node that
    reaped it). ``answered``: the nodes whose view is this request's, not an
    earlier one's (None: every view is current, as on one node's socket)."""
    doc = dict(bus)
    now = float(bus["time"])
    dead = dead or {}
    current = set(views) if answered is None else answered
    opens = _Opens(views)
    doc["nodes"] = _nodes(bus["nodes"], views, dead, current, now)
    doc["sessions"], doc["tree_connects"] = _sessions(views, current)
    files = {k: dict(v) for k, v in bus["files"].items()}
    doc["files"] = files
    doc["open_files"] = []
    for file_key, record in sorted(files.items()):
        out = _open_file(file_key, record, opens)
        record["share"], record["path"] = out["share"], out["path"]
        doc["open_files"].append(out)
    doc["open_files"].sort(key=lambda f: (f["share"] or "\uffff", f["path"] or "", f["file"]))
    doc["pending_breaks"] = [_break(b, files, opens) for b in bus["pending_breaks"]]
    return doc


def _nodes(
    members: list[dict[str, Any]],
    views: dict[str, dict[str, Any]],
    dead: dict[str, dict[str, Any]],
    current: set[str],
    now: float,
) -> list[dict[str, Any]]:
    out = []
    for m in members:
        node = dict(m)
        node_id = str(m["id"])
        entry = views.get(node_id) or {}
        view = entry.get("view") or {}
        beat = m.get("heartbeat")
        ttl = float(m.get("ttl") or 0)
        if not m.get("alive"):
            node["state"] = "dead"
            mark = dead.get(node_id)
            node["dead_since"] = mark["since"] if mark and mark.get("epoch") == m["epoch"] else None
        elif beat is not None and ttl and now - beat > ttl * FENCE_FRACTION:
            # It could not renew for 0.6 of its TTL: it has dropped its
            # clients (liveness.FENCE_FRACTION) and the others release its
            # grants at the full TTL, unless it renews first.
            node["state"] = "fenced"
            node["dead_since"] = None
        elif node_id in current and view.get("vouched") is False:
            node["state"] = "fenced"
            node["dead_since"] = None
        else:
            node["state"] = "alive"
            node["dead_since"] = None
        node.update(_self_told(node_id, entry, current))
        out.append(node)
    known = {str(m["id"]) for m in members}
    for node_id, mark in sorted(dead.items()):
        if node_id in known:
            continue
        # Reaped: the bus forgot it, but an operator wants to see it gone.
        entry = views.get(node_id) or {}
        out.append({
            "id": node_id, "address": mark.get("address") or "?", "epoch": mark.get("epoch"),
            "heartbeat": None, "alive": False, "drain": None, "takeover": False,
            "state": "dead", "dead_since": mark.get("since"),
            **_self_told(node_id, entry, set()),
        })  # fmt: skip
    return out


def _self_told(node_id: str, entry: dict[str, Any], current: set[str]) -> dict[str, Any]:
    view = entry.get("view") or {}
    return {
        "answered": node_id in current,
        "view_time": entry.get("time"),
        "connections": view.get("connections"),
        "fencings": view.get("fencings"),
        "last_fenced": view.get("last_fenced"),
    }


def _sessions(
    views: dict[str, dict[str, Any]], current: set[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    sessions: list[dict[str, Any]] = []
    trees: list[dict[str, Any]] = []
    for node_id, entry in sorted(views.items()):
        if node_id not in current:
            continue  # an old answer: its sessions may be long gone
        view = entry.get("view") or {}
        open_count: dict[str, int] = {}
        for facts in (view.get("opens") or {}).values():
            sid = facts.get("session_id")
            open_count[sid] = open_count.get(sid, 0) + 1
        for s in view.get("sessions") or []:
            clients = list(s.get("clients") or [])
            client = clients[0] if clients else None
            sessions.append({
                "node": node_id, "session_id": s["session_id"], "user": s.get("user"),
                "client": client, "clients": clients, "dialect": s.get("dialect"),
                "signing": s.get("signing"), "signing_required": s.get("signing_required"),
                "encryption": s.get("encryption"), "guest": s.get("guest", False),
                "state": s.get("state"), "opens": open_count.get(s["session_id"], 0),
                "shares": [t["share"] for t in s.get("trees") or []],
            })  # fmt: skip
            for t in s.get("trees") or []:
                trees.append({
                    "node": node_id, "session_id": s["session_id"], "tree_id": t["tree_id"],
                    "share": t["share"], "user": s.get("user"), "client": client,
                    "encrypted": t.get("encrypted", False),
                })  # fmt: skip
    sessions.sort(key=lambda s: (s["node"], s["user"] or "", s["client"] or ""))
    trees.sort(key=lambda t: (t["share"], t["node"], t["user"] or ""))
    return sessions, trees


def _who(facts: dict[str, Any]) -> dict[str, Any]:
    return {
        "user": facts.get("user"), "client": facts.get("client"),
        "session_id": facts.get("session_id"),
    }  # fmt: skip


def _open_file(file_key: str, record: dict[str, Any], opens: _Opens) -> dict[str, Any]:
    leases = record.get("leases", {})
    share = path = None
    out_opens = []
    for open_id, o in record.get("opens", {}).items():
        facts = opens.get(open_id)
        share = share or facts.get("share")
        path = path or facts.get("path")
        lease = leases.get(o.get("lease_id") or "")
        breaking_to = None
        if lease is not None and lease.get("breaking"):
            breaking_to = lease_bits(lease["break_to"])
        elif o.get("breaking"):
            breaking_to = OPLOCK_NAMES.get(o["break_to"], hex(o["break_to"]))
        out_opens.append({
            "open_id": open_id, "node": o.get("node_id") or None, "epoch": o.get("epoch", 0),
            **_who(facts),
            "access": o["access"], "access_words": access_words(o["access"]),
            "share_access": o["share"], "share_words": share_words(o["share"]),
            "oplock": OPLOCK_NAMES.get(o["oplock"], hex(o["oplock"])),
            "lease": lease_bits(lease["state"]) if lease is not None else None,
            "lease_id": o.get("lease_id"), "breaking_to": breaking_to,
            "durable": bool(o.get("durable_ms")), "persistent": bool(o.get("persistent")),
            # A durable open whose client or node went away, waiting for it.
            "disconnected": None if o.get("node_id") else (o.get("disconnected") or None),
            "directory": bool(o.get("is_directory")),
        })  # fmt: skip
    waiting = []
    for open_id, r in record.get("pending", {}).items():
        facts = opens.get(open_id)
        share = share or facts.get("share")
        path = path or facts.get("path")
        requested = r.get("lease") or {}
        waiting.append({
            "open_id": open_id, "node": r.get("node_id"), **_who(facts),
            "access": r["access"], "access_words": access_words(r["access"]),
            "share_access": r["share"], "share_words": share_words(r["share"]),
            "lease": lease_bits(requested["state"]) if requested else None,
        })  # fmt: skip
    who_of = {o["open_id"]: o for o in out_opens}
    locks = []
    for lk in record.get("locks", []):
        holder = who_of.get(lk["open_id"], {})
        locks.append({
            "open_id": lk["open_id"], "node": holder.get("node"), "user": holder.get("user"),
            "client": holder.get("client"), "offset": lk["offset"], "length": lk["length"],
            "range": _range(lk["offset"], lk["length"]),
            "kind": "exclusive" if lk["exclusive"] else "shared",
        })  # fmt: skip
    waiters = []
    for w in record.get("waiters", []):
        holder = who_of.get(w["open_id"], {})
        waiters.append({
            "open_id": w["open_id"], "user": holder.get("user"), "client": holder.get("client"),
            "ranges": [
                {"offset": r["offset"], "length": r["length"],
                 "range": _range(r["offset"], r["length"]),
                 "kind": "exclusive" if r["exclusive"] else "shared"}
                for r in w["ranges"]
            ],
        })  # fmt: skip
    return {
        "file": file_key, "share": share, "path": path,
        "delete_pending": bool(record.get("delete_pending")),
        "opens": out_opens, "waiting_opens": waiting,
        "leases": [
            {"lease_id": lid, "state": lease_bits(x["state"]), "epoch": x["epoch"],
             "breaking_to": lease_bits(x["break_to"]) if x.get("breaking") else None}
            for lid, x in leases.items()
        ],
        "locks": locks, "waiters": waiters,
    }  # fmt: skip


def _range(offset: int, length: int) -> str:
    """A byte range in hex, as the protocol documents and smbstatus show it."""
    return f"0x{offset:x}+0x{length:x}"


def _break(b: dict[str, Any], files: dict[str, Any], opens: _Opens) -> dict[str, Any]:
    out = dict(b)
    record = files.get(b["file"], {})
    out["share"], out["path"] = record.get("share"), record.get("path")
    if b.get("open_id"):
        holder_ids = [b["open_id"]]
    else:
        holder_ids = list(record.get("leases", {}).get(b.get("lease"), {}).get("opens", []))
    holder = next((opens.get(i) for i in holder_ids if opens.get(i)), {})
    out.update(_who(holder))
    out["waiting"] = [
        {"open_id": open_id, "node": r.get("node_id"), **_who(opens.get(open_id))}
        for open_id, r in record.get("pending", {}).items()
    ]
    return out


# -- text -----------------------------------------------------------------------------------


def _user(facts: dict[str, Any]) -> str:
    user = facts.get("user")
    client = facts.get("client")
    if user is None and client is None:
        return ""
    return f"  user {user or '?'} from {client or 'no connection (waiting for its client)'}"


def _where(f: dict[str, Any]) -> str:
    if f.get("share") is None:
        return f"{f['file']} (share and path unknown: no node told)"
    return f"{f['share']}\\{f['path'] or ''}  (file {f['file']})"


def render(doc: dict[str, Any]) -> str:
    now = float(doc["time"])  # the bus's clock: heartbeats and deadlines are read against it
    lines = [f"bus {doc['bus']}" + (f" (namespace {doc['namespace']!r})" if doc.get("namespace")
                                    else "")]  # fmt: skip
    if doc.get("generation") is not None or doc.get("recovering"):
        lines.append(f"generation {doc.get('generation') or '(none)'}" + _recovery(doc, now))
    lines.append(f"nodes ({len(doc['nodes'])}):")
    lines.extend(_node_line(n, now) for n in doc["nodes"])
    lines.append(f"addresses ({len(doc['addresses'])}):")
    lines.extend(_address_line(a) for a in doc["addresses"])
    lines.append(f"sessions ({len(doc['sessions'])}):")
    for s in doc["sessions"]:
        signing = s["signing"] or "none"
        if s["signing"] and not s["signing_required"]:
            signing += " (if the client signs)"
        lines.append(
            f"  {s['node']}  {s['client'] or '?'}  user {s['user'] or '?'}  "
            f"SMB {s['dialect'] or '?'}  signing {signing}  encryption {s['encryption'] or 'none'}"
            f"  opens {s['opens']}  session {s['session_id']}"
            + ("" if s["state"] in (None, "valid") else f"  ({s['state']})")
        )
    lines.append(f"tree connects ({len(doc['tree_connects'])}):")
    for t in doc["tree_connects"]:
        lines.append(
            f"  {t['share']}  {t['node']}  user {t['user'] or '?'}  from {t['client'] or '?'}  "
            f"tree {t['tree_id']}" + ("  encrypted" if t["encrypted"] else "")
        )
    lines.append(f"open files ({len(doc['open_files'])}):")
    for f in doc["open_files"]:
        lines.extend(_file_lines(f))
    lines.append(f"pending breaks ({len(doc['pending_breaks'])}):")
    for b in doc["pending_breaks"]:
        who = b.get("open_id") or b.get("lease")
        where = f"{b['share']}\\{b['path']}" if b.get("share") is not None else b["file"]
        waiting = "; ".join(
            f"{w['open_id']} on {w['node']}{_user(w)}" for w in b.get("waiting", [])
        )
        lines.append(
            f"  {where} {b['kind']} {who} on {b['node_id']}{_user(b)}: "
            f"{b['from']} -> {b['to']}, {b['deadline'] - now:.1f}s left"
            + (f"; waiting: {waiting}" if waiting else "")
        )
    return "\n".join(lines)


def _recovery(doc: dict[str, Any], now: float) -> str:
    if not doc.get("recovering"):
        return "  (no recovery running)"
    rec = doc.get("recovery") or {}
    since = rec.get("since")
    took = f" for {max(0.0, now - since):.1f}s" if since else ""
    missing = sorted(set(rec.get("expected", [])) - set(rec.get("asserted", [])))
    waits = f": waiting for {', '.join(missing)}" if missing else ""
    return f"  RECOVERING{took} (no grants anywhere){waits}"


def _node_line(n: dict[str, Any], now: float) -> str:
    beat = n.get("heartbeat")
    state = n.get("state", "alive" if n.get("alive") else "dead")
    if state == "dead":
        since = n.get("dead_since")
        seen = (
            f"DEAD since {_when(since)} ({max(0.0, now - since):.0f}s ago)"
            if since else "DEAD: no heartbeat"
        )  # fmt: skip
    elif state == "fenced":
        age = f"{max(0.0, now - beat):.1f}s" if beat else "?"
        seen = f"FENCED: last heartbeat {age} ago, it has dropped its clients"
    else:
        seen = f"alive, last heartbeat {max(0.0, now - beat):.1f}s ago" if beat else "alive"
    extra = ""
    if n.get("fencings"):
        extra += f"  fenced {n['fencings']}x, last {_when(n.get('last_fenced'))}"
    if state != "dead" and n.get("alive") and not n.get("answered") and n.get("view_time"):
        extra += "  (did not answer: its sessions and opens are not shown)"
    epoch = n.get("epoch")
    takeover = "  takeover" if n.get("takeover") else ""
    drain = f"  {n['drain'].upper()}" if n.get("drain") else ""  # serves nobody
    epoch_text = f"  epoch {epoch}" if epoch is not None else ""
    return f"  {n['id']}  {n['address']}{epoch_text}  {seen}{extra}{takeover}{drain}"


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


def _file_lines(f: dict[str, Any]) -> list[str]:
    flags = "  delete pending" if f["delete_pending"] else ""
    lines = [f"  {_where(f)}{flags}"]
    for o in f["opens"]:
        if o["oplock"] == OPLOCK_NAMES[OPLOCK_LEASE] and o["lease"] is not None:
            level = f"lease {o['lease']}"
        else:
            level = f"oplock {o['oplock']}"
        if o["breaking_to"]:
            level += f" (breaking to {o['breaking_to']})"
        kind = "  persistent" if o["persistent"] else "  durable" if o["durable"] else ""
        node = o["node"] or "none (disconnected)"
        lines.append(
            f"    open {o['open_id']} node {node} epoch {o['epoch']}{_user(o)}  "
            f"access {','.join(o['access_words'])} (0x{o['access']:x})  "
            f"share {','.join(o['share_words'])}  {level}{kind}"
        )
    for w in f["waiting_opens"]:
        lease = f"  lease {w['lease']} asked" if w["lease"] else ""
        lines.append(
            f"    waiting open {w['open_id']} node {w['node']}{_user(w)}  "
            f"access {','.join(w['access_words'])} (0x{w['access']:x})  "
            f"share {','.join(w['share_words'])}{lease}"
        )
    for x in f["leases"]:
        breaking = f" (breaking to {x['breaking_to']})" if x["breaking_to"] else ""
        lines.append(f"    lease {x['lease_id']} {x['state']} epoch {x['epoch']}{breaking}")
    for lk in f["locks"]:
        lines.append(f"    lock {lk['open_id']} {lk['range']} {lk['kind']}{_user(lk)}")
    for w in f["waiters"]:
        spans = ", ".join(f"{r['range']} {r['kind']}" for r in w["ranges"])
        lines.append(f"    waiting lock {w['open_id']} {spans}{_user(w)}")
    return lines
