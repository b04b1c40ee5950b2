"""A minimal raw SMB2 client for sending malformed traffic (fuzzing only).

Interoperability is proven with smbclient, smbtorture and smbprotocol; this
client exists to put bytes no real client would send on the wire.
"""

from __future__ import annotations

import socket
import struct

import spnego

from gateway.protocol.constants import Command
from gateway.protocol.header import Header

NEGOTIATE_21 = struct.pack("<HHHHI16sIHH", 36, 2, 1, 0, 0, b"fuzz-client-guid", 0, 0, 0) + (
    struct.pack("<HH", 0x0202, 0x0210)
)


class RawClient:
    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.mid = 0
        self.session_id = 0
        self.tree_id = 0

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, payload: bytes) -> None:
        self.sock.sendall(struct.pack(">I", len(payload)) + payload)

    def recv(self) -> bytes | None:
        """One frame, or None if the server closed the connection."""
        head = self._recv_exact(4)
        if head is None:
            return None
        return self._recv_exact(struct.unpack(">I", head)[0])

    def _recv_exact(self, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def send(self, command: int, body: bytes, credits: int = 1) -> None:
        """One request, its reply left unread."""
        hdr = Header(
            command=command,
            message_id=self.mid,
            credits=credits,
            credit_charge=1,
            session_id=self.session_id,
            tree_id=self.tree_id,
        )
        self.mid += 1
        self.send_raw(hdr.pack() + body)

    def request(self, command: int, body: bytes, credits: int = 1) -> Header:
        self.send(command, body, credits)
        while True:
            frame = self.recv()
            if frame is None:
                raise ConnectionError("server closed the connection")
            reply = Header.unpack(frame)
            if reply.status != 0x103:  # skip interim STATUS_PENDING
                self.last_body = frame[64:]
                return reply

    def smb1_negotiate(
        self, dialects: list[str], *, pid: int = 0xFEFF, mid: int = 0
    ) -> bytes | None:
        """Send an SMB1 multi-protocol NEGOTIATE (MS-CIFS 2.2.4.52.1) offering
        ``dialects``; the reply frame, or None if the server hung up. It takes
        SMB2 MessageId 0, so the next SMB2 request is MessageId 1."""
        data = b"".join(b"\x02" + d.encode("ascii") + b"\x00" for d in dialects)
        header = struct.pack(
            "<4sBIBHH8sHHHHH", b"\xffSMB", 0x72, 0, 0x18, 0xC853, 0, bytes(8), 0, 0xFFFF,
            pid, 0, mid,
        )  # fmt: skip
        self.send_raw(header + struct.pack("<BH", 0, len(data)) + data)
        self.mid = 1
        return self.recv()

    def login(
        self, user: str, password: str, share: str, host: str, *, negotiate: bool = True
    ) -> None:
        """Log on and connect to ``share``; ``negotiate=False`` when the
        connection is already negotiated (say, through ``smb1_negotiate``)."""
        if negotiate:
            self.request(Command.NEGOTIATE, NEGOTIATE_21)
        ctx = spnego.client(user, password, protocol="ntlm")
        token = ctx.step()
        while True:
            assert token is not None
            body = struct.pack("<HBBIIHHQ", 25, 0, 1, 0, 0, 64 + 24, len(token), 0) + token
            reply = self.request(Command.SESSION_SETUP, body)
            self.session_id = reply.session_id
            if reply.status == 0:
                break
            if reply.status != 0xC0000016:
                raise PermissionError(f"logon failed: {reply.status:#x}")
            off, length = struct.unpack_from("<HH", self.last_body, 4)
            token = ctx.step(self.last_body[off - 64 : off - 64 + length])
        path = f"\\\\{host}\\{share}".encode("utf-16-le")
        reply = self.request(
            Command.TREE_CONNECT, struct.pack("<HHHH", 9, 0, 64 + 8, len(path)) + path
        )
        if reply.status != 0:
            raise PermissionError(f"tree connect failed: {reply.status:#x}")
        self.tree_id = reply.tree_id
