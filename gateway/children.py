"""Child processes that die with their parent, on Linux.

``smbgw cluster up`` (``gateway/cluster.py``) starts its nodes and its
private redis-server (``gateway/localredis.py``). A parent that stops in an
orderly way stops them, but one killed with SIGKILL (or by the OOM killer)
runs no code, and its children would keep serving, and holding their ports,
with nobody to stop them. So each child asks the kernel, between fork and
exec, for a signal when its parent dies: ``prctl(PR_SET_PDEATHSIG)``, which
survives the exec.

Two limits of the kernel's: the signal comes when the *thread* that forked
the child ends, not the process, so it is asked only from the main thread
(where ``cluster up`` starts everything; a child started from another
thread does without); and a parent that died before the child's prctl is
noticed by comparing ``getppid()``. Elsewhere than Linux nothing is done.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl  # type: ignore[no-any-return]


# Looked up here, in the parent: between fork and exec the child should do
# as little as possible (no dlopen, no import).
_PRCTL = _load_prctl()


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen`` that makes the child get
    ``sig`` when this process dies, however it dies; None where that cannot
    be had (not Linux, not the main thread), for Popen's default."""
    if _PRCTL is None or threading.current_thread() is not threading.main_thread():
        return None
    prctl = _PRCTL
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:
            # The parent died between fork and prctl: nobody will signal us.
            os.kill(os.getpid(), sig)

    return preexec
