"""Programs that use the gateway the way real applications do.

`smb2client` (an asyncio SMB2/3 client that receives oplock and lease
breaks), `caching` (a client that caches under its lease like the Windows
redirector) and `jet` (the Access-style multi-user record workload); see
docs/clients.md.
"""
