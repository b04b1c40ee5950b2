"""The SMB2/3 server of one gateway node."""
