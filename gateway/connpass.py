"""A client's connections meet at one worker: passed by ClientGuid (SCM_RIGHTS).

With ``--workers N`` (``workers.py``) the kernel hands each new connection to
any worker. A session lives in the memory of the worker that authenticated
it, with its opens' descriptors, so a second channel binding to it
(SMB2_SESSION_FLAG_BINDING, MS-SMB2 3.3.5.5.2) must reach that worker. The
worker that accepted a connection reads its first message; if it is an SMB2
NEGOTIATE (MS-SMB2 2.2.3), its ClientGuid names the worker that serves every
connection of that client, ``hash(ClientGuid) mod N``, and the accepting
worker passes the socket there over a Unix datagram socket (``SCM_RIGHTS``),
with the bytes it read, then forgets it. The owner goes on as if it had
accepted it. Samba's smbd does the same between its processes
(``smbXsrv_connection_pass``), keyed by ClientGuid too.

So a client's channels, its durable reconnects (same ClientGuid) and its
sessions meet in one process and bind as on a one-process node; what crosses
workers is only what crosses nodes (the bus). A worker that cannot be reached
(restarting after a crash) costs nothing: the accepting worker serves the
connection itself, and a bind to a session elsewhere is refused as on
another node (USER_SESSION_DELETED). A first message that is not an SMB2
NEGOTIATE (SMB1's, or a ClientGuid of zeros) is served where it landed, but
for another node's hand-over of a bind (``smb/relay.py``), which goes to the
worker whose session it names.

The passing sockets are in Linux's abstract namespace (no file to clean up
after a crash), named by the user, node id and worker slot; the receiver
takes only messages whose sender has its own uid (``SO_PASSCRED``).
"""

from __future__ import annotations

import array
import asyncio
import hashlib
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable

from .smb.relay import handover_slot

log = logging.getLogger("smbgw.connpass")

# A NEGOTIATE is small (dialects and contexts); a first frame larger than this
# is not one, and is served where it landed.
PEEK_LIMIT = 16 * 1024
_SMB2_MAGIC = b"\xfeSMB"
_HEADER = 64
_NEGOTIATE = 0
_GUID_AT = _HEADER + 12  # StructureSize, DialectCount, SecurityMode, Reserved, Capabilities
_UCRED = struct.Struct("iII")  # pid, uid, gid

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def passing_address(node_id: str, slot: int) -> str:
    return f"\0smbgw/{os.getuid()}/{node_id}/{slot}"


def client_guid(frame: bytes) -> bytes | None:
    """The ClientGuid of ``frame`` (a message without its 4-byte length) if it
    is an SMB2 NEGOTIATE naming one."""
    if len(frame) < _GUID_AT + 16 or frame[:4] != _SMB2_MAGIC:
        return None
    if int.from_bytes(frame[12:14], "little") != _NEGOTIATE:
        return None
    guid = frame[_GUID_AT : _GUID_AT + 16]
    return guid if any(guid) else None


def owner(guid: bytes, workers: int) -> int:
    """The slot (1-based) of the worker that serves ClientGuid ``guid``."""
    digest = hashlib.blake2b(guid, digest_size=8).digest()
    return int.from_bytes(digest, "little") % workers + 1


class ConnectionPasser:
    """One worker's end: passes connections to their owners, adopts those passed here."""

    def __init__(self, node_id: str, slot: int, workers: int, serve: Serve, timeout: float) -> None:
        self.node_id = node_id  # the node's, not the worker's
        self.slot = slot
        self.workers = workers
        self.serve = serve  # what an accepted connection runs
        self.timeout = timeout  # seconds for the first message (logon_timeout)
        self.passed = 0
        self.adopted = 0
        self._sock: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        try:
            sock.bind(passing_address(self.node_id, self.slot))
        except OSError as e:
            sock.close()
            log.warning("worker %d: no connection passing (%s): a client's channels may "
                        "land on other workers", self.slot, e)  # fmt: skip
            return
        sock.setblocking(False)
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._receive)

    async def stop(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    # -- the accepting side ---------------------------------------------------------------

    async def route(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The streams to serve here, or None: the connection went to its owner,
        or closed before its first message."""
        try:
            first = await asyncio.wait_for(_first_message(reader), self.timeout)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return None
        guid = client_guid(first[4:]) if len(first) > 4 else None
        target = owner(guid, self.workers) if guid is not None else self.slot
        if guid is None:  # another node relaying a bind to a worker's session
            target = handover_slot(first[4:]) or target
        raw = writer.get_extra_info("socket")
        if raw is None:  # not a socket transport: nothing to pass or rebuild on
            writer.close()
            return None
        fd = os.dup(raw.fileno())
        writer.transport.abort()  # ours goes; the duplicate carries the connection
        if target != self.slot and self._send(target, fd, first):
            os.close(fd)
            self.passed += 1
            return None
        return await _streams(socket.socket(fileno=fd), first)

    def _send(self, slot: int, fd: int, data: bytes) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as out:
                out.setblocking(False)
                # Not socket.send_fds: it drops its address argument (3.11).
                rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
                out.sendmsg([data], rights, 0, passing_address(self.node_id, slot))
            return True
        except OSError as e:  # that worker is restarting, or too busy: serve it here
            log.debug("worker %d: cannot pass a connection to worker %d: %s", self.slot, slot, e)
            return False

    # -- the receiving side ---------------------------------------------------------------

    def _receive(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data, fds, sender = _recv(self._sock)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("worker %d: receiving a passed connection: %s", self.slot, e)
                return
            if sender != os.getuid():
                for fd in fds:
                    os.close(fd)
                log.warning("worker %d: refused a connection passed by uid %s", self.slot, sender)
                continue
            for fd in fds:
                task = asyncio.get_running_loop().create_task(self._adopt(fd, data))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _adopt(self, fd: int, data: bytes) -> None:
        try:
            reader, writer = await _streams(socket.socket(fileno=fd), data)
        except OSError as e:
            log.info("worker %d: a passed connection was gone: %s", self.slot, e)
            return
        self.adopted += 1
        await self.serve(reader, writer)


async def _first_message(reader: asyncio.StreamReader) -> bytes:
    """The first frame as it came (4-byte length and message); at most
    PEEK_LIMIT bytes of a longer one."""
    head = await reader.readexactly(4)
    length = int.from_bytes(head[1:], "big")
    return head + await reader.readexactly(min(length, PEEK_LIMIT))


def _recv(sock: socket.socket) -> tuple[bytes, list[int], int | None]:
    fd_space = socket.CMSG_SPACE(array.array("i").itemsize * 4)
    data, ancillary, _flags, _addr = sock.recvmsg(
        PEEK_LIMIT + 4, fd_space + socket.CMSG_SPACE(_UCRED.size)
    )
    fds: list[int] = []
    uid: int | None = None
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got = array.array("i")
            got.frombytes(payload[: len(payload) - len(payload) % got.itemsize])
            fds += list(got)
        elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            uid = _UCRED.unpack(payload[: _UCRED.size])[1]
    return data, fds, uid


async def _streams(
    sock: socket.socket, prefix: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Streams over an accepted ``sock`` whose first ``prefix`` bytes were read already."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1024 * 1024)
    reader.feed_data(prefix)
    protocol = asyncio.StreamReaderProtocol(reader)
    try:
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock)
    except BaseException:
        sock.close()
        raise
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)
