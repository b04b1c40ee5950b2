"""Pick a lock bus from a URL: ``None``/``memory://`` is the in-process bus."""

from __future__ import annotations

from urllib.parse import urlsplit

from .api import LockBus, NodeId


def make_bus(
    url: str | None,
    *,
    node_id: NodeId | None = None,
    break_timeout: float = 35.0,
) -> LockBus:
    """Build the bus a node runs on; raises ValueError for an unknown scheme."""
    scheme = urlsplit(url).scheme.lower() if url else "memory"
    if scheme == "memory":
        from .memory import InProcessBus

        return InProcessBus(node_id=node_id, break_timeout=break_timeout)
    if scheme in ("redis", "rediss", "redis+sentinel"):
        # The Redis backend (a Store over GET + a CAS Lua script, pub/sub and
        # per-node channels, wrapped in Coordinator) plugs in here.
        raise ValueError(f"the Redis bus ({scheme}://) is not available in this build yet")
    raise ValueError(f"unknown bus URL scheme {scheme!r} in {url!r}; use memory:// or redis://")
