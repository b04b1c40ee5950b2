"""A connection's opens are released whatever ended it (issue 16, finding 4).

A client that resets its connection while replies are still queued used to
leave its opens behind: the failed write marked the connection closed, and
teardown took that for "already torn down". Another user then got
SHARING_VIOLATION for as long as the node lived, and the node kept the
descriptors.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

from clients import messages
from gateway.protocol.constants import Command, CreateDisposition, Status

from .conftest import PASSWORD, USER, GatewayNode
from .rawclient import RawClient

FILE_ALL_ACCESS = 0x001F01FF
CHUNK = 65536


def _login(node: GatewayNode) -> RawClient:
    client = RawClient(node.host, node.port)
    client.login(USER, PASSWORD, node.share, node.host)
    return client


def _create_exclusive(client: RawClient, name: str) -> tuple[int, messages.FileId | None]:
    body = messages.create_request(
        name, access=FILE_ALL_ACCESS, share=0, disposition=CreateDisposition.OPEN_IF
    )
    reply = client.request(Command.CREATE, body)
    if reply.status != Status.SUCCESS:
        return reply.status, None
    return reply.status, messages.parse_create_response(client.last_body).file_id


def _descriptors_on(pid: int, path: Path) -> int:
    """How many of the node's descriptors point at ``path``."""
    count = 0
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            if os.readlink(fd) == str(path):
                count += 1
        except OSError:
            continue  # closed meanwhile
    return count


def test_reset_with_replies_pending_releases_the_open(gateway: GatewayNode) -> None:
    target = gateway.share_dir / "held.bin"
    alice = _login(gateway)
    status, fid = _create_exclusive(alice, "held.bin")
    assert status == Status.SUCCESS and fid is not None
    alice.request(Command.WRITE, messages.write_request(fid, 0, b"x" * CHUNK))
    assert _descriptors_on(gateway.proc.pid, target) == 1

    # Far more replies than the socket buffers hold, none of them read: the
    # node is blocked writing when the reset arrives.
    read = messages.read_request(fid, 0, CHUNK)
    for _ in range(600):
        alice.send(Command.READ, read)
    alice.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    alice.close()  # RST, replies still queued on both sides

    bob = _login(gateway)
    deadline = time.monotonic() + 10
    while True:
        status, bob_fid = _create_exclusive(bob, "held.bin")
        if status != Status.SHARING_VIOLATION or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status == Status.SUCCESS, f"the reset client's open is still held: {status:#x}"
    assert bob_fid is not None
    bob.request(Command.CLOSE, messages.close_request(bob_fid))
    assert _descriptors_on(gateway.proc.pid, target) == 0
    bob.close()
