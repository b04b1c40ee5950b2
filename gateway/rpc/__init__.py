"""DCE/RPC services behind the IPC$ named pipes (sans-IO: bytes in, bytes out).

``dcerpc`` is the pipe (PDUs); ``srvsvc``, ``wkssvc`` and ``lsarpc`` the
interfaces; ``names`` what lsarpc translates; ``pipes`` which pipe name
serves which interface.
"""

from __future__ import annotations

from .dcerpc import DcerpcPipe
from .pipes import PIPE_NAMES, Caller, ServerView, open_pipe, server_view
from .srvsvc import ShareEntry

__all__ = [
    "PIPE_NAMES",
    "Caller",
    "DcerpcPipe",
    "ServerView",
    "ShareEntry",
    "open_pipe",
    "server_view",
]
