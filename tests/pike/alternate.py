"""A pytest plugin for pike's own tests: each new connection a test makes goes
to the next node of ``SMBGW_PIKE_NODES`` (comma-separated addresses), so
that a handle opened through one node is reconnected through another.
Loaded with ``-p tests.pike.alternate``; without the variable it does nothing.
"""

from __future__ import annotations

import os
from typing import Any

from pike.test import PikeTest

_NODES = [n for n in os.environ.get("SMBGW_PIKE_NODES", "").split(",") if n]
_original = PikeTest.tree_connect


def _alternating(self: PikeTest, client: Any = None, resume: Any = None) -> Any:
    turn = getattr(self, "_smbgw_turn", 0)
    self._smbgw_turn = turn + 1
    self.server = _NODES[turn % len(_NODES)]
    return _original(self, client, resume)


if _NODES:
    PikeTest.tree_connect = _alternating  # type: ignore[method-assign]
