"""Sans-IO SMB2/3 wire layer: bytes in, bytes and events out; no sockets, no asyncio."""
