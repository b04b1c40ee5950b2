"""Cluster coordination of share modes, oplocks, leases and byte-range locks.

The bus knows nothing of the SMB wire.
"""

from .api import LockBus
from .factory import make_bus

__all__ = ["LockBus", "make_bus"]
