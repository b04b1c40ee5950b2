"""What one client may take of a node, and how hitting a limit is reported.

The limits themselves are settings (``gateway.config.Config``, documented in
docs/configuration.md#limits); each is enforced where the resource is taken
and answered with the status Windows gives. A client that hits one usually
hits it many times in a row, so it is logged once per client address.
"""

from __future__ import annotations

import logging

log = logging.getLogger("smbgw.limits")

_logged: set[tuple[str, str]] = set()
_MAX_LOGGED = 10_000  # bounded: many addresses must not grow it without end


def log_limit(peer: str, limit: str) -> None:
    """Say once per client address that it reached ``limit``."""
    key = (peer.rpartition(":")[0] or peer, limit)
    if key in _logged or len(_logged) >= _MAX_LOGGED:
        return
    _logged.add(key)
    log.warning("%s: %s reached; what goes over it is refused", peer, limit)
