"""``python -m tests.volume_node DEV ARGS...``: ``smbgw ARGS...`` on a host
whose volumes report st_dev DEV and keep no user xattrs.

That is how one NFS, CephFS or GlusterFS volume can look from two hosts:
each gives it its own anonymous device number, and the mount refuses
``user.*`` xattrs. A test cannot mount such a volume without root, so this
process changes what its own ``os`` module answers before the gateway runs;
the gateway itself runs unchanged (``gateway.cli.main``).
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable
from typing import Any

_STAT_FIELDS = [n for n in dir(os.stat_result) if n.startswith("st_") and n != "st_dev"]


def _on_device(dev: int, stat: Callable[..., os.stat_result]) -> Callable[..., os.stat_result]:
    @functools.wraps(stat)
    def wrapped(*args: Any, **kwargs: Any) -> os.stat_result:
        st = stat(*args, **kwargs)
        fields = list(st)
        fields[2] = dev  # the sequence is (mode, ino, dev, nlink, uid, gid, size, times)
        return os.stat_result(fields, {n: getattr(st, n) for n in _STAT_FIELDS})

    return wrapped


def _no_xattrs(*args: Any, **kwargs: Any) -> Any:
    raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP))


def main() -> int:
    dev = int(sys.argv[1])
    os.stat = _on_device(dev, os.stat)
    os.lstat = _on_device(dev, os.lstat)
    os.fstat = _on_device(dev, os.fstat)
    os.getxattr = os.setxattr = os.listxattr = os.removexattr = _no_xattrs
    from gateway.cli import main as smbgw

    return smbgw(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
