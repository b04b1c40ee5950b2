"""``smbgw status``: the cluster as the bus sees it.

Nodes (id, address, epoch, last heartbeat, DRAINING or DRAINED after
``smbgw drain``), which node serves which address (its own, or one taken
over from a dead or drained node), open files with their opens,
oplock and lease states, byte-range locks and lock waiters, the breaks
still waiting for an acknowledgement, and the bus generation with the
recovery that may be running (``oplock_bus/recovery.py``).

It also keeps two hashes of opaque text for the gateway, whose contents the
bus never reads: ``{nodes}:views`` (node id -> what that node last answered
to a status request: its sessions and opens, by bus open id) and
``{nodes}:dead`` (node id -> when a node saw it reaped). The SMB facts in
them (users, client addresses, shares, paths) are the gateway's; here they
are strings (``gateway/status.py`` reads and writes them).
"""

from __future__ import annotations

from typing import Any

from .api import OPLOCK_BATCH, OPLOCK_EXCLUSIVE, OPLOCK_II, OPLOCK_LEASE
from .coordinator import Coordinator
from .liveness import AddressView, read_address_view, read_members
from .recovery import split as split_generation
from .redis_store import RedisStore, bus_errors
from .redis_url import SCHEMES, RedisTarget, parse_url, redact

OPLOCK_NAMES = {
    0: "none", OPLOCK_II: "II", OPLOCK_EXCLUSIVE: "exclusive", OPLOCK_BATCH: "batch",
    OPLOCK_LEASE: "lease",
}  # fmt: skip


def lease_bits(state: int) -> str:
    """A lease state in letters, in the order Windows and smbstatus write them (RWH)."""
    return "".join(c for bit, c in ((1, "R"), (4, "W"), (2, "H")) if state & bit) or "none"


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
        return await read_bus(store)
    finally:
        await store.stop()


async def read_bus(store: RedisStore) -> dict[str, Any]:
    """Everything the bus on a started ``store`` holds (a tool's, or a node's
    own): read only, so a node may call it on the store it serves with."""
    nodes = await read_members(store)
    view = await read_address_view(store, nodes)
    snap = await Coordinator(store).snapshot()
    with bus_errors():
        seconds, micros = await store.client.time()
    generation = await read_generation(store)
    return {
        "bus": store.target.describe(),
        "namespace": store.target.namespace,
        "time": float(seconds) + float(micros) / 1e6,
        "nodes": nodes,
        "addresses": addresses(view),
        "files": snap["files"],
        "leases": snap["leases"],
        "pending_breaks": pending_breaks(snap["files"]),
        **generation,
    }


async def read_generation(store: RedisStore) -> dict[str, Any]:
    """The bus generation (``{nodes}:gen``: "<gen>", or "<gen> r" while a
    recovery runs) and, while one runs, its record (``{nodes}:recovery``:
    "<start, Redis time> <TTL ms>") with the nodes it waits for and those
    that have re-asserted what they hold."""
    with bus_errors():
        raw: Any = await store.client.get(store.key("{nodes}:gen"))
        record: Any = await store.client.get(store.key("{nodes}:recovery"))
        expected: Any = await store.client.smembers(store.key("{nodes}:expect"))
        asserted: Any = await store.client.smembers(store.key("{nodes}:asserted"))
    generation, running = split_generation(raw)
    recovery: dict[str, Any] | None = None
    if running or record is not None:
        since, _, ttl_ms = (record or b"").decode().partition(" ")
        recovery = {
            "since": float(since) if since else None,
            "ttl": int(ttl_ms) / 1000 if ttl_ms.isdigit() else None,
            "expected": sorted(x.decode() for x in expected or ()),
            "asserted": sorted(x.decode() for x in asserted or ()),
        }
    return {"generation": generation or None, "recovering": running, "recovery": recovery}


# -- the gateway's opaque records ------------------------------------------------------

VIEWS = "{nodes}:views"
DEAD = "{nodes}:dead"


async def read_texts(store: RedisStore, name: str) -> dict[str, str]:
    """Node id -> text, from the hash ``name`` (VIEWS or DEAD)."""
    with bus_errors():
        raw: dict[Any, Any] = await store.client.hgetall(store.key(name))
    return {k.decode(): v.decode() for k, v in raw.items()}


async def read_text(store: RedisStore, name: str, node_id: str) -> str | None:
    with bus_errors():
        raw: Any = await store.client.hget(store.key(name), node_id)
    return raw.decode() if raw is not None else None


async def write_text(store: RedisStore, name: str, node_id: str, text: str) -> None:
    with bus_errors():
        await store.client.hset(store.key(name), node_id, text)


async def forget_texts(store: RedisStore, name: str, node_ids: list[str]) -> None:
    if node_ids:
        with bus_errors():
            await store.client.hdel(store.key(name), *node_ids)


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
