"""DCE/RPC services behind the IPC$ named pipes (sans-IO: bytes in, bytes out)."""

from __future__ import annotations

from .srvsvc import SrvsvcPipe

__all__ = ["SrvsvcPipe"]
