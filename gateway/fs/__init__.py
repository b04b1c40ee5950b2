"""The filesystem layer: what only knows the volume (names, identity, metadata,
descriptors, stream storage). It imports nothing of sessions, handles or the node."""
