"""A client that caches under its oplock or lease, like the Windows redirector.

`CachingFile` asks for an RWH lease (or a Batch oplock) and then:

* with Write caching it buffers writes in memory and grants the caller's
  byte-range locks itself, without telling the server;
* with Read caching it serves reads from pages it already read or wrote;
* without caching every call goes straight to the server;
* on a break that takes Write caching away it first writes its dirty pages
  back and pushes its locally granted locks to the server as real LOCKs,
  and only then acknowledges with the new level, so the opener the server
  is holding sees the data and the locks.

That last step is what makes caching safe on one server and what a naively
clustered server breaks: if the other node never sends the break, the
buffered writes stay here and the other client reads stale data.

With ``durable`` the file is opened with a DH2Q (a persistent handle on a
continuously available share); with a `clients.reconnect.Reconnector` on the
client, a lost connection is then got back and the handle reclaimed without
the cache noticing: dirty pages, local locks and lease state stay as they
were, and the request that was in flight is sent again.

Read freshness: MS-FSA breaks other opens' Read caching on a byte-range lock
or a write, but a server may deliver those breaks after the conflicting
request completes (Samba sends them asynchronously). So whenever a lock goes
to the server, this file also drops its own read cache: a read under a
server lock always comes from the server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.protocol.constants import (
    Command,
    CreateDisposition,
    LeaseState,
    OplockLevel,
    Status,
)

from .messages import BreakNotice, DurableRequest
from .smb2client import READ_WRITE, SHARE_ALL, Open, SmbError, Tree

log = logging.getLogger("clients.caching")

PAGE = 4096
R, H, W = int(LeaseState.READ), int(LeaseState.HANDLE), int(LeaseState.WRITE)
RWH = R | W | H
_OPLOCK_BITS = {OplockLevel.II: R, OplockLevel.EXCLUSIVE: R | W, OplockLevel.BATCH: RWH}

# (name, details): "break", "flushed", "locks_pushed", "acked" so a demo can draw a timeline.
EventHook = Callable[[str, dict[str, object]], None]


def oplock_bits(level: int) -> int:
    return _OPLOCK_BITS.get(OplockLevel(level), 0) if level != OplockLevel.LEASE else 0


@dataclass
class CacheStats:
    breaks: int = 0
    cache_reads: int = 0
    server_reads: int = 0
    buffered_writes: int = 0
    server_writes: int = 0
    local_locks: int = 0
    server_locks: int = 0
    flushed_pages: int = 0
    pushed_locks: int = 0
    failed_pushes: int = 0


@dataclass(frozen=True)
class _Lock:
    offset: int
    length: int
    exclusive: bool

    def conflicts(self, offset: int, length: int, exclusive: bool) -> bool:
        # Zero-length ranges never conflict (MS-FSA 2.1.5.8); two shared never do.
        if not length or not self.length or not (exclusive or self.exclusive):
            return False
        return offset < self.offset + self.length and self.offset < offset + length


class CachingFile:
    """One open file with a redirector-style cache; see the module docstring."""

    def __init__(self, op: Open, mode: str, on_event: EventHook | None) -> None:
        self.op = op
        self.mode = mode
        self.on_event = on_event
        self.size = op.size
        self.stats = CacheStats()
        self._caching = op.caching if mode != "none" else 0
        self._pages: dict[int, bytearray] = {}
        self._dirty: set[int] = set()
        self._local_locks: list[_Lock] = []
        self._server_locks: list[_Lock] = []
        self._io = asyncio.Lock()  # cached reads and writes vs. the break's write-back
        self._breaking: asyncio.Event | None = None
        self._lock_released = asyncio.Event()
        self._generation = 0  # bumped by every break: fills started before it are stale

    @classmethod
    async def open(
        cls,
        tree: Tree,
        path: str,
        *,
        mode: str = "lease",
        disposition: int = CreateDisposition.OPEN_IF,
        access: int = READ_WRITE,
        share_access: int = SHARE_ALL,
        durable: DurableRequest | None = None,
        on_event: EventHook | None = None,
    ) -> CachingFile:
        """``mode``: "lease" (ask RWH), "oplock" (ask Batch) or "none" (no caching);
        ``durable``: ask for a durable or persistent handle (DH2Q)."""
        if mode not in ("lease", "oplock", "none"):
            raise ValueError(f"mode {mode!r}: lease, oplock or none")
        holder: list[CachingFile] = []
        early: list[BreakNotice] = []

        def on_break(op: Open, notice: BreakNotice) -> Awaitable[None] | None:
            if not holder:  # a break that overtook our own return from CREATE
                early.append(notice)
                return None
            return holder[0]._on_break(notice)

        op = await tree.create(
            path,
            access=access,
            share_access=share_access,
            disposition=disposition,
            oplock=OplockLevel.BATCH if mode == "oplock" else OplockLevel.NONE,
            lease_state=RWH if mode == "lease" else None,
            durable=durable,
            on_break=on_break,
        )
        f = cls(op, mode, on_event)
        f._caching = cls._granted(op, mode, early)
        holder.append(f)
        for notice in early:
            task = f._on_break(notice)
            if task is not None:
                op.client.track(task)
        return f

    @staticmethod
    def _granted(op: Open, mode: str, early: list[BreakNotice]) -> int:
        """What CREATE granted, before the breaks that arrived with it lowered it."""
        if mode == "none":
            return 0
        if op.lease_key is not None and early:
            return early[0].current_state
        # An oplock break that needs an ack has not lowered op.oplock_level yet.
        return op.caching

    # -- state ------------------------------------------------------------------------

    @property
    def caching(self) -> int:
        """The caching this client uses now, as lease bits (R 1, H 2, W 4)."""
        return self._caching

    @property
    def dirty_pages(self) -> int:
        return len(self._dirty)

    def _emit(self, name: str, **details: object) -> None:
        if self.on_event is not None:
            self.on_event(name, {"t": time.monotonic(), "path": self.op.path, **details})

    async def _settled(self) -> None:
        while self._breaking is not None:
            await self._breaking.wait()

    def _drop_cache(self) -> None:
        assert not self._dirty, "clean pages only: dirty ones must be written back first"
        self._pages.clear()

    # -- breaks -----------------------------------------------------------------------

    def _on_break(self, notice: BreakNotice) -> asyncio.Future[None] | None:
        """Runs in the connection's read loop, before any later response is handled."""
        self.stats.breaks += 1
        self._generation += 1
        new = notice.new_state if notice.is_lease else oplock_bits(notice.new_oplock)
        self._emit("break", new=new, old=self._caching, ack_required=notice.ack_required)
        if self._caching & W and not new & W:
            # Writes and locks live only here: give them back before acknowledging.
            self._breaking = breaking = asyncio.Event()
            return asyncio.ensure_future(self._write_back_then_ack(notice, new, breaking))
        self._caching &= new
        if not new & R:
            self._drop_cache()
        if notice.ack_required:
            return asyncio.ensure_future(self._ack(notice))
        return None

    async def _write_back_then_ack(
        self, notice: BreakNotice, new: int, breaking: asyncio.Event
    ) -> None:
        try:
            async with self._io:
                pages = await self._write_back()
                self._emit("flushed", pages=pages)
                pushed = await self._push_locks()
                self._emit("locks_pushed", locks=pushed)
                self._caching &= new
                if not new & R:
                    self._drop_cache()
            if notice.ack_required:
                await self._ack(notice)
        finally:
            # Another break may have come meanwhile (one found at a reconnect,
            # say): its own write-back clears its own event.
            if self._breaking is breaking:
                self._breaking = None
            breaking.set()
            self._lock_released.set()

    async def _ack(self, notice: BreakNotice) -> None:
        try:
            granted = await self.op.acknowledge(notice)
        except SmbError as e:
            # The server already gave up waiting (break timeout) and lowered us.
            log.warning("break acknowledgement refused: %s", e)
            granted = 0
        self._caching &= granted if notice.is_lease else oplock_bits(granted)
        self._emit("acked", level=granted)

    async def _write_back(self) -> int:
        """Write dirty pages to the server, adjacent ones in one WRITE."""
        pages = sorted(self._dirty)
        run: list[int] = []
        for p in pages + [-1]:
            if run and (p != run[-1] + 1 or (len(run) + 1) * PAGE > self.op.client.max_write):
                start = run[0] * PAGE
                end = min(self.size, (run[-1] + 1) * PAGE)
                data = b"".join(bytes(self._pages[q]) for q in run)[: end - start]
                if data:
                    await self.op.write(start, data)
                    self.stats.server_writes += 1
                for q in run:
                    self._dirty.discard(q)
                run = []
            if p >= 0:
                run.append(p)
        self.stats.flushed_pages += len(pages)
        return len(pages)

    async def _push_locks(self) -> int:
        pushed = 0
        for lk in list(self._local_locks):
            try:
                await self.op.lock(lk.offset, lk.length, exclusive=lk.exclusive, wait=False)
            except SmbError as e:
                # Someone got the range while we held it only locally: a bug
                # somewhere in the break protocol, reported loudly.
                log.error("pushing lock %s to the server failed: %s", lk, e)
                self.stats.failed_pushes += 1
            else:
                self._server_locks.append(lk)
                pushed += 1
            self._local_locks.remove(lk)
        self.stats.pushed_locks += pushed
        return pushed

    # -- data -------------------------------------------------------------------------

    async def read(self, offset: int, length: int) -> bytes:
        await self._settled()
        if self._caching & R:
            async with self._io:
                if self._caching & R:
                    data = await self._read_cached(offset, length)
                    if data is not None:
                        return data
        self.stats.server_reads += 1
        return await self.op.read(offset, length)

    async def _read_cached(self, offset: int, length: int) -> bytes | None:
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        hit = True
        for p in range(offset // PAGE, (end - 1) // PAGE + 1):
            if p not in self._pages:
                hit = False
                if not await self._fill(p):
                    return None
        if hit:
            self.stats.cache_reads += 1
        out = bytearray()
        for p in range(offset // PAGE, (end - 1) // PAGE + 1):
            page = self._pages[p]
            lo = max(offset, p * PAGE) - p * PAGE
            hi = min(end, (p + 1) * PAGE) - p * PAGE
            out += page[lo:hi]
        return bytes(out)

    async def _fill(self, p: int) -> bool:
        """Read page ``p`` into the cache; False if a break made the copy untrustworthy."""
        generation = self._generation
        data = await self.op.read(p * PAGE, PAGE) if p * PAGE < self.size else b""
        self.stats.server_reads += 1
        # Under Write caching nobody else can have written (a break of it waits
        # for our _io); under Read caching only if no break came meanwhile.
        trusted = self._caching & W or (generation == self._generation and self._caching & R)
        if not trusted:
            return False
        self._pages[p] = bytearray(data.ljust(PAGE, b"\x00"))
        return True

    async def write(self, offset: int, data: bytes) -> int:
        await self._settled()
        if self._caching & W:
            async with self._io:
                if self._caching & W:
                    await self._buffer(offset, data)
                    self.stats.buffered_writes += 1
                    return len(data)
        generation = self._generation
        n = await self.op.write(offset, data)
        self.stats.server_writes += 1
        self._patch(offset, data[:n], generation)
        self.size = max(self.size, offset + n)
        return n

    async def _buffer(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        for p in range(offset // PAGE, (end - 1) // PAGE + 1 if data else offset // PAGE):
            whole = offset <= p * PAGE and end >= (p + 1) * PAGE
            if p not in self._pages:
                if whole or p * PAGE >= self.size:
                    self._pages[p] = bytearray(PAGE)
                elif not await self._fill(p):
                    raise RuntimeError("lost Write caching while holding the write lock")
            lo = max(offset, p * PAGE)
            hi = min(end, (p + 1) * PAGE)
            self._pages[p][lo - p * PAGE : hi - p * PAGE] = data[lo - offset : hi - offset]
            self._dirty.add(p)
        self.size = max(self.size, end)

    def _patch(self, offset: int, data: bytes, generation: int) -> None:
        """Keep cached pages equal to what our write-through put on the server."""
        if not data:
            return
        pages = range(offset // PAGE, (offset + len(data) - 1) // PAGE + 1)
        for p in pages:
            page = self._pages.get(p)
            if page is None:
                continue
            if generation != self._generation or not self._caching & R:
                del self._pages[p]
                continue
            lo = max(offset, p * PAGE)
            hi = min(offset + len(data), (p + 1) * PAGE)
            page[lo - p * PAGE : hi - p * PAGE] = data[lo - offset : hi - offset]

    # -- byte-range locks ----------------------------------------------------------------

    async def lock(
        self, offset: int, length: int, *, exclusive: bool = True, wait: bool = True
    ) -> None:
        while True:
            await self._settled()
            if not self._caching & W:
                break
            if not any(lk.conflicts(offset, length, exclusive) for lk in self._local_locks):
                self._local_locks.append(_Lock(offset, length, exclusive))
                self.stats.local_locks += 1
                return
            if not wait:
                raise SmbError(Status.LOCK_NOT_GRANTED, Command.LOCK)
            self._lock_released.clear()
            await self._lock_released.wait()
        await self.op.lock(offset, length, exclusive=exclusive, wait=wait)
        self._server_locks.append(_Lock(offset, length, exclusive))
        self.stats.server_locks += 1
        if not self._caching & W and self._pages:
            # See the module docstring: a late Read-caching break must not
            # let us serve a page another client changed under this lock.
            self._generation += 1
            self._pages.clear()

    async def unlock(self, offset: int, length: int) -> None:
        await self._settled()
        for lk in self._local_locks:
            if lk.offset == offset and lk.length == length:
                self._local_locks.remove(lk)
                self._lock_released.set()
                return
        await self.op.unlock(offset, length)
        for lk in self._server_locks:
            if lk.offset == offset and lk.length == length:
                self._server_locks.remove(lk)
                break

    # -- lifetime ---------------------------------------------------------------------------

    async def flush(self) -> None:
        """Write dirty pages back and FLUSH: what an application's FlushFileBuffers does."""
        await self._settled()
        async with self._io:
            await self._write_back()
        await self.op.flush()

    async def close(self) -> None:
        await self._settled()
        async with self._io:
            await self._write_back()
            self._local_locks.clear()
            self._caching = 0
            self._pages.clear()
        await self.op.close()
