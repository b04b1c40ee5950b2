"""Pick a lock bus from a URL: ``None``/``memory://`` is the in-process bus.

Redis URLs (``redis://``, ``rediss://``, ``redis+sentinel://``,
``redis+cluster://`` and their TLS forms) are described in
:mod:`oplock_bus.redis_url`.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .api import LockBus, NodeId


def make_bus(
    url: str | None,
    *,
    password: str | None = None,
    node_id: NodeId | None = None,
    break_timeout: float = 35.0,
    node_ttl: float = 5.0,
    node_address: str | None = None,
    local_delivery: bool = True,
    takeover: bool = False,
) -> LockBus:
    """Build the bus a node runs on; raises ValueError for an unknown scheme
    or a malformed URL. Nothing connects before ``start()``.

    ``node_ttl`` (Redis only): seconds without a heartbeat after which a
    node counts as dead and its opens, oplocks, leases and locks are
    released. ``node_address`` is shown by ``smbgw status``.
    ``local_delivery=False`` sends even breaks for nodes on this same bus
    through Redis (for tests of the cross-node path). ``password`` is the
    Redis password when the URL carries none. ``takeover`` (Redis only) marks
    the node as taking part in address takeover (``gateway/takeover.py``).
    """
    scheme = urlsplit(url).scheme.lower() if url else "memory"
    if scheme == "memory":
        from .memory import InProcessBus

        return InProcessBus(node_id=node_id, break_timeout=break_timeout)
    from .redis_url import SCHEMES

    if scheme in SCHEMES:
        assert url is not None
        from .redis_bus import RedisBus
        from .redis_url import parse_url

        return RedisBus(
            parse_url(url, password=password),
            node_id=node_id,
            break_timeout=break_timeout,
            node_ttl=node_ttl,
            node_address=node_address,
            local_delivery=local_delivery,
            takeover=takeover,
        )
    from .redis_url import redact

    shown = redact(url) if url else ""
    raise ValueError(f"unknown bus URL scheme {scheme!r} in {shown!r}; use memory:// or redis://")
