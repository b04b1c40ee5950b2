"""A Jet-like multi-user workload: the Access scenario in miniature.

A database file holds fixed-size pages; page ``p`` starts with a header
(magic, CRC-32 of the rest of the page, page number, last writer, counter)
followed by filler derived from the counter, so a page mixing two versions
fails its checksum. Each client opens the file through `CachingFile` (an
RWH lease or a Batch oplock, as the Windows redirector asks) and repeats:

    lock 1 byte at 0x10000000 + p (exclusive, blocking: where Jet locks pages)
    read page p, check it, counter += 1, rewrite page p with a new checksum
    unlock

An increment counts as committed when its unlock returns. At the end every
checksum is verified and the counters are summed: on a correct server
``lost = committed - sum(counters)`` is 0. On a naively clustered server
each node grants its own client Write caching, the writes stay in the
clients' caches, and one client's pages overwrite the other's.

`run_jet` takes (host, port) endpoints and spreads clients over them
round-robin, so ``smbgw demo access`` can point it at a local cluster. With
``persistent`` each client opens the database with a persistent handle and
reconnects as Windows does (`clients.reconnect`) when its node goes away, so
``smbgw demo failover`` can kill a node under it.
"""

from __future__ import annotations

import asyncio
import os
import random
import struct
import time
import zlib
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.protocol.constants import CreateDisposition

from .caching import CacheStats, CachingFile
from .messages import DurableRequest
from .reconnect import Reconnector
from .smb2client import DEFAULT_DIALECTS, SMB2Client

LOCK_BASE = 0x10000000
MAGIC = b"JETP"
_HEAD = struct.Struct("<4sIIIQ")  # magic, crc32(page[8:]), page number, writer, counter
_CHECKED_FROM = 8

Endpoint = tuple[str, int]
Progress = Callable[[int, int], None]  # (committed so far, updates planned)
Opened = Callable[[int], None]  # client i has the database open
Committed = Callable[[int], None]  # client i's update is committed (its unlock returned)
Lost = Callable[[int], None]  # the server dropped client i's connection (we did not close it)


def encode_page(page: int, counter: int, writer: int, size: int) -> bytes:
    # Filler varies with the counter so a torn page (two versions mixed) fails its CRC.
    seed = struct.pack("<IQ", page, counter)
    filler = (seed * (size // len(seed) + 1))[: size - _HEAD.size]
    body = struct.pack("<IIQ", page, writer, counter) + filler
    return MAGIC + struct.pack("<I", zlib.crc32(body)) + body


def decode_page(data: bytes, page: int, size: int) -> tuple[int, bool]:
    """(counter, intact); the counter is read even from a damaged page."""
    if len(data) < _HEAD.size:
        return 0, False
    magic, crc, number, _writer, counter = _HEAD.unpack_from(data)
    intact = (
        len(data) == size
        and magic == MAGIC
        and number == page
        and zlib.crc32(data[_CHECKED_FROM:]) == crc
    )
    return counter, intact


@dataclass
class JetConfig:
    clients: int = 4
    updates: int = 1000  # in total, split over the clients
    seed: int = 0
    pages: int = 64
    page_size: int = 4096
    path: str = "jet.mdb"
    share: str = "share"
    user: str = "test"
    password: str = "test"
    mode: str = "lease"  # lease (RWH), oplock (Batch) or none (no caching)
    dialects: tuple[int, ...] = DEFAULT_DIALECTS
    require_signing: bool = False
    # Seconds of "application work" between updates. Even 0 yields to the
    # event loop: a client whose pages are all cached never awaits the
    # network, and would otherwise run its whole share before the others open.
    think: float = 0.0005
    # Client i opens the database i * open_stagger seconds after the start,
    # as users do: the first has Write caching and dirty pages by the time
    # the next open breaks it.
    open_stagger: float = 0.02
    # Open with a persistent handle (DH2Q) and reconnect after a lost
    # connection, giving up after reconnect_deadline seconds.
    persistent: bool = False
    reconnect_deadline: float = 60.0


@dataclass
class ClientResult:
    endpoint: Endpoint
    committed: int = 0
    corrupt_reads: int = 0
    breaks: int = 0
    granted: int = 0  # caching CREATE granted, as lease bits (R 1, H 2, W 4)
    open_seconds: float = 0.0  # how long CREATE took (it waits for other clients' breaks)
    stats: CacheStats = field(default_factory=CacheStats)
    reconnects: int = 0  # lost connections got back (persistent only)
    reclaimed: int = 0  # handles taken back with a DH2C
    replayed: int = 0  # requests sent again after a reconnect (unanswered when it was lost)
    paused_seconds: float = 0.0  # the longest wait from a lost connection to its handle back


@dataclass
class JetReport:
    committed: int
    lost: int
    corrupt_pages: int
    seconds: float
    breaks: int
    counter_sum: int
    clients: list[ClientResult]

    @property
    def updates_per_second(self) -> float:
        return self.committed / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, int | float]:
        """The figures ``smbgw demo access --json`` prints."""
        return {
            "committed": self.committed,
            "lost": self.lost,
            "corrupt_pages": self.corrupt_pages,
            "seconds": round(self.seconds, 3),
            "breaks": self.breaks,
        }

    def details(self) -> dict[str, object]:
        out: dict[str, object] = dict(self.as_dict())
        out["updates_per_second"] = round(self.updates_per_second, 1)
        out["counter_sum"] = self.counter_sum
        out["clients"] = [asdict(c) for c in self.clients]
        return out


async def _connect(endpoint: Endpoint, cfg: JetConfig) -> SMB2Client:
    return await SMB2Client.connect(
        endpoint[0],
        endpoint[1],
        user=cfg.user,
        password=cfg.password,
        dialects=cfg.dialects,
        require_signing=cfg.require_signing,
    )


async def create_database(endpoint: Endpoint, cfg: JetConfig) -> None:
    client = await _connect(endpoint, cfg)
    try:
        tree = await client.tree_connect(cfg.share)
        f = await tree.create(cfg.path, disposition=CreateDisposition.OVERWRITE_IF)
        image = b"".join(encode_page(p, 0, 0, cfg.page_size) for p in range(cfg.pages))
        await f.write(0, image)
        await f.close()
    finally:
        await client.close()


async def verify_database(endpoint: Endpoint, cfg: JetConfig) -> tuple[int, int]:
    """(sum of counters, pages failing their checks), read through a non-caching open."""
    client = await _connect(endpoint, cfg)
    try:
        tree = await client.tree_connect(cfg.share)
        f = await tree.create(cfg.path, disposition=CreateDisposition.OPEN)
        image = await f.read(0, cfg.pages * cfg.page_size)
        await f.close()
    finally:
        await client.close()
    total = corrupt = 0
    for p in range(cfg.pages):
        chunk = image[p * cfg.page_size : (p + 1) * cfg.page_size]
        counter, intact = decode_page(chunk, p, cfg.page_size)
        total += counter
        corrupt += not intact
    return total, corrupt


class _Counter:
    def __init__(self, total: int, progress: Progress | None) -> None:
        self.done = 0
        self.total = total
        self.progress = progress

    def commit(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


async def _worker(
    index: int,
    endpoint: Endpoint,
    cfg: JetConfig,
    updates: int,
    counter: _Counter,
    start: asyncio.Barrier,
    hooks: _Hooks,
) -> ClientResult:
    result = ClientResult(endpoint)
    rng = random.Random(cfg.seed * 1_000_003 + index)
    try:
        client = await _connect(endpoint, cfg)
    except BaseException:
        await start.abort()
        raise
    if hooks.on_lost is not None:
        _report_loss(client, index, hooks.on_lost)
    reconnector = Reconnector(client, deadline=cfg.reconnect_deadline) if cfg.persistent else None
    try:
        tree = await client.tree_connect(cfg.share)
        # Logons take several round trips; without this the first client
        # would finish its share in its cache before the last one opens.
        await start.wait()
        await asyncio.sleep(index * cfg.open_stagger)
        opened = time.monotonic()
        durable = DurableRequest(os.urandom(16)) if cfg.persistent else None
        f = await CachingFile.open(
            tree, cfg.path, mode=cfg.mode, disposition=CreateDisposition.OPEN, durable=durable
        )
        result.open_seconds = time.monotonic() - opened
        result.stats = f.stats
        result.granted = f.caching
        if hooks.on_open is not None:
            hooks.on_open(index)
        for _ in range(updates):
            await _update(f, rng.randrange(cfg.pages), index, cfg.page_size, result)
            counter.commit()
            if hooks.on_commit is not None:
                hooks.on_commit(index)
            await asyncio.sleep(cfg.think)
        await f.close()
    except BaseException:
        await start.abort()
        raise
    finally:
        result.breaks = client.breaks_received
        if reconnector is not None:
            stats = reconnector.stats
            result.reconnects, result.reclaimed = stats.reconnects, stats.reclaimed
            result.replayed = stats.replayed
            result.paused_seconds = stats.longest_pause
        await client.close()
    return result


@dataclass(frozen=True)
class _Hooks:
    on_open: Opened | None = None
    on_commit: Committed | None = None
    on_lost: Lost | None = None


def _report_loss(client: SMB2Client, index: int, on_lost: Lost) -> None:
    """Call ``on_lost(index)`` when the server drops the connection the client
    opened, before what the client itself does then (a `Reconnector`)."""
    transport, then = client.transport, client.transport.on_lost

    def lost(reason: BaseException) -> None:
        on_lost(index)
        if then is not None:
            then(reason)

    transport.on_lost = lost


async def _update(f: CachingFile, page: int, index: int, size: int, result: ClientResult) -> None:
    """One record update under Jet's page lock: committed when the unlock returns."""
    await f.lock(LOCK_BASE + page, 1)
    value, intact = decode_page(await f.read(page * size, size), page, size)
    result.corrupt_reads += not intact
    await f.write(page * size, encode_page(page, value + 1, index + 1, size))
    await f.unlock(LOCK_BASE + page, 1)
    result.committed += 1


async def run_jet(
    endpoints: Sequence[Endpoint],
    config: JetConfig | None = None,
    *,
    progress: Progress | None = None,
    on_open: Opened | None = None,
    on_commit: Committed | None = None,
    on_lost: Lost | None = None,
) -> JetReport:
    """Create the database, run the clients (client i on endpoint i mod n), verify.

    ``progress(done, total)`` is called at each commit, ``on_open(i)`` when
    client i has opened the database, ``on_commit(i)`` when one of client
    i's updates is committed, ``on_lost(i)`` when the server drops client
    i's first connection (a persistent client's reconnects are counted in
    its `ClientResult`)."""
    cfg = config or JetConfig()
    if not endpoints:
        raise ValueError("at least one (host, port) endpoint")
    if cfg.clients < 1 or cfg.pages < 1 or cfg.page_size < 64:
        raise ValueError("clients and pages must be positive, pages at least 64 bytes")
    await create_database(endpoints[0], cfg)
    share, extra = divmod(cfg.updates, cfg.clients)
    counter = _Counter(cfg.updates, progress)
    barrier = asyncio.Barrier(cfg.clients)
    start = time.monotonic()
    hooks = _Hooks(on_open, on_commit, on_lost)

    def worker(i: int) -> Coroutine[Any, Any, ClientResult]:
        updates = share + (i < extra)
        return _worker(i, endpoints[i % len(endpoints)], cfg, updates, counter, barrier, hooks)

    results = await asyncio.gather(*(worker(i) for i in range(cfg.clients)))
    seconds = time.monotonic() - start
    total, corrupt = await verify_database(endpoints[0], cfg)
    committed = sum(r.committed for r in results)
    return JetReport(
        committed=committed,
        lost=committed - total,
        corrupt_pages=corrupt,
        seconds=seconds,
        breaks=sum(r.breaks for r in results),
        counter_sum=total,
        clients=list(results),
    )


__all__ = [
    "LOCK_BASE",
    "ClientResult",
    "JetConfig",
    "JetReport",
    "create_database",
    "decode_page",
    "encode_page",
    "run_jet",
    "verify_database",
]
