"""Request handlers, one module per SMB2 command family."""
