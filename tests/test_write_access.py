"""What a handle may write (issue 16, finding 8), through smbprotocol.

A handle opened with FILE_APPEND_DATA but not FILE_WRITE_DATA writes at the end
of the file whatever offset it names, as NtWriteFile does on Windows (Wine's
tests check it against Windows: two writes at offsets 1 and 3 of a 2-byte file
end at 4 and 6); it used to write anywhere, over data it had no right to change.
smbd writes at the offset asked (checked on this machine): here the gateway
follows Windows.
"""

from __future__ import annotations

import uuid

from smbprotocol.connection import Connection
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    FilePipePrinterAccessMask,
    ImpersonationLevel,
    Open,
)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from .conftest import PASSWORD, USER, GatewayNode

APPEND = FilePipePrinterAccessMask.FILE_APPEND_DATA | FilePipePrinterAccessMask.SYNCHRONIZE
RW = FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE


def _open(tree: TreeConnect, name: str, access: int) -> Open:
    handle = Open(tree, name)
    handle.create(
        ImpersonationLevel.Impersonation, access, 0, 7, CreateDisposition.FILE_OPEN_IF,
        CreateOptions.FILE_NON_DIRECTORY_FILE,
    )  # fmt: skip
    return handle


def test_append_only_handle_writes_at_the_end(module_gateway: GatewayNode) -> None:
    conn = Connection(uuid.uuid4(), module_gateway.host, module_gateway.port)
    conn.connect(timeout=10)
    try:
        session = Session(conn, USER, PASSWORD, auth_protocol="ntlm")
        session.connect()
        tree = TreeConnect(session, rf"\\{module_gateway.host}\share")
        tree.connect()
        name = f"log-{uuid.uuid4().hex}.txt"
        full = _open(tree, name, RW)
        full.write(b"fo", 0)
        full.close()
        appender = _open(tree, name, APPEND)
        appender.write(b"ob", 1)
        appender.write(b"ar", 0)
        appender.close()
        assert (module_gateway.share_dir / name).read_bytes() == b"foobar"
    finally:
        conn.disconnect(True)
