"""Getting a lost connection back, as the Windows redirector does for durable
and persistent handles.

What Windows does when the connection under a durable or persistent handle
drops (MS-SMB2 3.2.4.4, "Re-establishing a Durable Open"):

1. It keeps the handle, its cached data and its lease: the application sees
   a call that takes longer, not an error.
2. It connects again to the same server address (on a clustered file server
   another node answers it by then), NEGOTIATEs with the same ClientGuid
   (the server knows leases and durable handles by it), logs on with a new
   SESSION_SETUP whose PreviousSessionId names the lost session, and
   connects its trees again.
3. For each durable handle it sends a CREATE with a DH2C context (the
   handle's FileId, its CreateGuid, the persistent flag it was granted) and
   its lease context (same lease key). The server gives the handle back with
   its lease and byte-range locks. Until the cluster has declared the old
   node dead the handle is still that node's and the answer is
   STATUS_OBJECT_NAME_NOT_FOUND, and until another node serves the address
   nobody accepts the TCP connection: the client tries again, every
   ``interval``, until its own deadline.
4. It sends again the requests that had not been answered, flagged
   SMB2_FLAGS_REPLAY_OPERATION.

How each request is sent again here. The cluster carries no replay state from
node to node (no LockSequence array, docs/operations.md), so each must be
safe to send twice by itself:

- READ, WRITE, FLUSH: as they were. A WRITE names its offset and data, so a
  second one writes the same bytes again; nobody wrote in between, since the
  writer holds the range's lock or Write caching (which the server keeps for
  a disconnected persistent handle).
- A LOCK taking a range may have been granted before the drop, and sent again
  it would wait for our own lock. The caller has not been told it holds the
  lock, so the range is released first (STATUS_RANGE_NOT_LOCKED when it was
  never granted) and then asked for again. Windows relies on LockSequence
  numbers (MS-SMB2 3.3.5.14) instead.
- A LOCK releasing a range: sent again; STATUS_RANGE_NOT_LOCKED then means
  the first one had done it.
- A break acknowledgement: sent again; a server that had it already refuses
  it, and the caching client then drops its caching, which is safe.
- CLOSE: not sent again (``Open.close``). Everything the handle had to write
  went out before it; a server that never saw it ends the handle when its
  durable timeout runs out.

Caching the server took from the handle while nobody could be told (it
lowers a disconnected persistent handle's lease without waiting) reaches the
open as a break needing no acknowledgement (``Tree.reclaim``): the caching
client writes back and drops what it may no longer keep, as for any break.

A `Reconnector` starts as soon as the transport reports the loss, so a client
working in its cache (sending nothing) comes back too; every request on a
durable open waits for it, and fails with `ReconnectFailed` if the deadline
passes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from gateway.protocol.constants import Command, LockFlags, Status

from . import messages as m
from .messages import LockElement, SmbProtocolError
from .smb2client import Open, OpenRequest, SMB2Client, SmbError
from .transport import Response

log = logging.getLogger("clients.reconnect")

__all__ = ["ReconnectFailed", "ReconnectStats", "Reconnector"]


class ReconnectFailed(ConnectionError):
    """The connection or its handles could not be got back before the deadline."""


@dataclass
class ReconnectStats:
    reconnects: int = 0  # connections got back, handles reclaimed
    reclaimed: int = 0  # handles taken back with a DH2C
    not_found: int = 0  # DH2Cs answered OBJECT_NAME_NOT_FOUND (old node not yet declared dead)
    replayed: int = 0  # requests sent again after a reconnect
    pauses: list[float] = field(default_factory=list)  # seconds from each loss to handles back

    @property
    def longest_pause(self) -> float:
        return max(self.pauses, default=0.0)


class Reconnector:
    """Brings ``client`` back after a lost connection; see the module docstring.

    ``deadline``: seconds from the loss after which it gives up; ``interval``:
    seconds between attempts (a TCP connect nobody answers, a DH2C answered
    STATUS_OBJECT_NAME_NOT_FOUND).
    """

    def __init__(
        self, client: SMB2Client, *, deadline: float = 60.0, interval: float = 0.1
    ) -> None:
        if client.login is None:
            raise ValueError("only a client made by SMB2Client.connect can log on again")
        self.client = client
        self.deadline = deadline
        self.interval = interval
        self.stats = ReconnectStats()
        self._generation = 0  # connections got back so far (or given up on)
        self._task: asyncio.Task[None] | None = None
        self._failed: ReconnectFailed | None = None
        self._stopped = False
        self._lost_at = 0.0  # when the connection being got back was lost
        client.recovery = self

    # -- what SMB2Client and Open call (smb2client.Recovery) --------------------------------

    def connection_lost(self, reason: BaseException) -> None:
        log.info("connection to %s lost (%s): reconnecting", self.client.host, reason)
        self._begin(self._generation)

    async def ready(self) -> None:
        while self._task is not None:
            await asyncio.shield(self._task)
        if self._failed is not None:
            raise self._failed

    async def send(self, op: Open, request: OpenRequest) -> Response:
        replay = False
        while True:
            await self.ready()
            if op.lost is not None:
                raise op.lost
            generation = self._generation
            try:
                if replay:
                    return await self._replay(op, request)
                return await op.send_now(request)
            except ConnectionError:
                if self._stopped:
                    raise
                # Sent (or not) on a connection now gone: unanswered, so sent again.
                self._begin(generation)
                replay = True

    def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()

    # -- getting the connection and the handles back ------------------------------------------

    def _begin(self, generation: int) -> None:
        """Start reconnecting, unless that connection was already got back or is being."""
        if self._task is None and not self._stopped and self._failed is None:
            if generation == self._generation:
                self._task = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        self._lost_at = lost_at = time.monotonic()
        try:
            await self._reconnect(lost_at + self.deadline)
        except (ReconnectFailed, SmbError) as e:
            log.error("reconnect to %s failed: %s", self.client.host, e)
            self._failed = e if isinstance(e, ReconnectFailed) else ReconnectFailed(str(e))
        else:
            paused = time.monotonic() - lost_at
            self.stats.reconnects += 1
            self.stats.pauses.append(paused)
            log.info("reconnected to %s after %.2f s", self.client.host, paused)
        finally:
            self._generation += 1
            self._task = None

    async def _reconnect(self, deadline: float) -> None:
        while True:
            try:
                await self._log_on_again()
                await self._reclaim_all(deadline)
                return
            except (OSError, SmbProtocolError) as e:
                # Nobody answers the address yet, or the new connection went too.
                if time.monotonic() + self.interval >= deadline:
                    raise ReconnectFailed(
                        f"no connection to {self.client.host} within {self.deadline:g} s: {e}"
                    ) from e
                await asyncio.sleep(self.interval)

    async def _log_on_again(self) -> None:
        client, login = self.client, self.client.login
        assert login is not None
        fresh = await SMB2Client.connect(
            client.host, login.port, user=login.user, password=login.password,
            domain=login.domain, dialects=login.dialects,
            require_signing=login.require_signing, encrypt=login.encrypt,
            timeout=login.timeout, client_guid=client.client_guid,
            previous_session_id=client.session_id,
        )  # fmt: skip
        client.adopt(fresh)
        for tree in client.trees:
            await tree.reconnect()

    async def _reclaim_all(self, deadline: float) -> None:
        waiting = [op for op in self.client.opens() if not op.closed]
        while True:
            still: list[Open] = []
            for op in waiting:
                if not await self._reclaim(op):
                    still.append(op)
            if not still:
                return
            if time.monotonic() + self.interval >= deadline:
                raise ReconnectFailed(
                    f"{len(still)} handle(s) still STATUS_OBJECT_NAME_NOT_FOUND "
                    f"{self.deadline:g} s after the connection was lost"
                )
            waiting = still
            await asyncio.sleep(self.interval)

    async def _reclaim(self, op: Open) -> bool:
        """DH2C for ``op``; False while the server does not have it to give yet."""
        if op.durable is None:
            op.lost = ConnectionError(f"{op.path}: not durable, gone with its connection")
            self.client.unregister(op)
            return True
        try:
            await op.tree.reclaim(op)
        except SmbError as e:
            if e.status == Status.OBJECT_NAME_NOT_FOUND:
                self.stats.not_found += 1  # still its old node's: not declared dead yet
                return False
            took = time.monotonic() - self._lost_at
            why = f"DH2C for {op.path} refused {took:.2f} s after the connection was lost: {e}"
            log.error("%s", why)
            op.lost = SmbError(e.status, e.command, why)
            self.client.unregister(op)
            return True
        self.stats.reclaimed += 1
        return True

    # -- sending again ------------------------------------------------------------------------

    async def _replay(self, op: Open, request: OpenRequest) -> Response:
        self.stats.replayed += 1
        log.debug("sending %s on %s again", Command(request.command).name, op.path)
        if request.command == Command.LOCK and request.locks:
            return await self._replay_lock(op, request)
        return await op.send_now(request, replay=True)

    async def _replay_lock(self, op: Open, request: OpenRequest) -> Response:
        releasing = all(e.flags & LockFlags.UNLOCK for e in request.locks)
        released: Response | None = None
        for e in request.locks:
            # Releasing: maybe done already. Taking: maybe granted already, and
            # ours to give back, since the caller was not told.
            released = await op.send_now(_release(e.offset, e.length), replay=releasing)
        if releasing:
            assert released is not None
            return released
        return await op.send_now(request, replay=True)


def _release(offset: int, length: int) -> OpenRequest:
    element = LockElement.unlock(offset, length)
    return OpenRequest(
        Command.LOCK,
        lambda fid: m.lock_request(fid, [element]),
        expect=(Status.SUCCESS, Status.RANGE_NOT_LOCKED),
        locks=(element,),
    )
