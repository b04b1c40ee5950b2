"""Cluster coordination of share modes, oplocks, leases and byte-range locks (no SMB wire knowledge)."""
