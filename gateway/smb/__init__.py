"""The SMB2/3 layer of a node: connections, sessions, handles and the command
handlers, over the sans-IO wire layer and the filesystem layer."""
