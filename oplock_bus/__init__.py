"""Cluster coordination of share modes, oplocks, leases and byte-range locks.

The bus knows nothing of the SMB wire.
"""
