"""smbprotocol's low-level API on one tree of a node: opens and compounds
built by hand, for tests that need more than its high-level smbclient API."""

from __future__ import annotations

import uuid
from typing import Any

from smbprotocol.connection import Connection
from smbprotocol.open import (
    CreateDisposition,
    FileAttributes,
    FilePipePrinterAccessMask,
    ImpersonationLevel,
    Open,
    ShareAccess,
)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from .conftest import PASSWORD, USER, GatewayNode

SHARE_ALL = (
    ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
)
RW = FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE


def logged_on(
    host: str, port: int, *, require_signing: bool = False, timeout: int = 10
) -> tuple[Connection, TreeConnect]:
    """A connection logged on as the test user, connected to the share."""
    conn = Connection(uuid.uuid4(), host, port, require_signing=require_signing)
    conn.connect(timeout=timeout)
    session = Session(conn, USER, PASSWORD, auth_protocol="ntlm")
    session.connect()
    tree = TreeConnect(session, rf"\\{host}\share")
    tree.connect()
    return conn, tree


class SmbpTree:
    def __init__(self, node: GatewayNode) -> None:
        self.conn, self.tree = logged_on(node.host, node.port)
        self.session = self.tree.session

    def open(self, name: str, access: int = RW, disposition: int = CreateDisposition.FILE_OPEN_IF,
             options: int = 0, send: bool = True) -> Any:  # fmt: skip
        """The Open; with ``send=False``, (Open, CREATE message, its receiver) to compound."""
        f = Open(self.tree, name)
        out = f.create(
            ImpersonationLevel.Impersonation, access, FileAttributes.FILE_ATTRIBUTE_NORMAL,
            SHARE_ALL, disposition, options, send=send,
        )  # fmt: skip
        return (f, *out) if not send else f

    def compound(self, messages: list[Any], related: bool) -> list[Any]:
        return list(
            self.conn.send_compound(
                messages, self.session.session_id, self.tree.tree_connect_id, related=related
            )
        )

    def close(self) -> None:
        self.conn.disconnect()
