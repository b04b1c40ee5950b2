"""``smbgw demo break``: one cross-node break, step by step, with timestamps.

Client A, on node 1, opens ``demo.mdb`` with a Batch oplock (or an RWH
lease), writes a record and takes Jet's page lock; both stay in A's cache,
the file on disk is still empty. Client B opens the same file through
node 2. A coordinated cluster holds B's CREATE, sends A a break, A writes
its record back and pushes its lock, acknowledges, and only then B's CREATE
completes: B reads A's record and cannot take A's lock. Uncoordinated, node
2 knows nothing of A's oplock: B's CREATE completes at once and B reads an
empty file.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from gateway.config import ConfigError
from gateway.protocol.constants import CreateDisposition, OplockLevel, Status

from .caching import RWH, CachingFile
from .demo_common import (
    DAMAGE,
    OK,
    PASSWORD,
    SHARE,
    USER,
    DemoCluster,
    Ui,
    demo_cluster,
    quiet_client_warnings,
    terminate_as_interrupt,
)
from .jet import LOCK_BASE, encode_page
from .smb2client import SMB2Client, SmbError

PATH = "demo.mdb"
PAGE = 4096
PAGES = 2  # A's record spans two pages, so the write-back is more than one page

# The events of the timeline, in the order a correct server produces them.
A_OPENED = "a_opened"
A_WROTE = "a_wrote"
B_CREATE_SENT = "b_create_sent"
BREAK_RECEIVED = "break_received"
A_FLUSHED = "a_flushed"
A_LOCKS_PUSHED = "a_locks_pushed"
A_ACKED = "a_acked"
B_CREATE_COMPLETED = "b_create_completed"
B_READ = "b_read"
B_LOCK_TRIED = "b_lock_tried"

LABELS = {
    A_OPENED: "A (node 1) opened the file",
    A_WROTE: "A wrote its record and locked its page, in its cache only",
    B_CREATE_SENT: "B's CREATE sent to node 2",
    BREAK_RECEIVED: "break received by A",
    A_FLUSHED: "A flushed its dirty pages",
    A_LOCKS_PUSHED: "A pushed its cached lock to the server",
    A_ACKED: "A acknowledged the break",
    B_CREATE_COMPLETED: "B's CREATE completed",
    B_READ: "B read the file",
    B_LOCK_TRIED: "B tried A's page lock",
}


@dataclass
class Event:
    name: str
    t: float  # time.monotonic()
    detail: str = ""


@dataclass
class BreakResult:
    mode: str
    coordinated: bool
    start: float
    events: list[Event] = field(default_factory=list)
    data_matches: bool = False
    bytes_on_disk_before_b: int = -1
    b_lock_refused: bool = False

    def first(self, name: str) -> Event | None:
        return next((e for e in self.events if e.name == name), None)

    def ms(self, event: Event) -> float:
        return round((event.t - self.start) * 1000, 2)

    @property
    def break_before_create_completed(self) -> bool:
        brk, done = self.first(BREAK_RECEIVED), self.first(B_CREATE_COMPLETED)
        return brk is not None and done is not None and brk.t <= done.t

    @property
    def flushed_before_create_completed(self) -> bool:
        flushed, done = self.first(A_FLUSHED), self.first(B_CREATE_COMPLETED)
        return flushed is not None and done is not None and flushed.t <= done.t

    @property
    def ok(self) -> bool:
        return self.data_matches and self.break_before_create_completed

    def as_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "coordinated": self.coordinated,
            "events": [
                {"event": e.name, "ms": self.ms(e), "detail": e.detail}
                for e in sorted(self.events, key=lambda e: e.t)
            ],
            "break_before_create_completed": self.break_before_create_completed,
            "flushed_before_create_completed": self.flushed_before_create_completed,
            "data_matches": self.data_matches,
            "bytes_on_disk_before_b": self.bytes_on_disk_before_b,
            "b_lock_refused": self.b_lock_refused,
            "ok": self.ok,
        }


def record() -> bytes:
    """A's record: Jet pages whose checksums a torn or stale copy would fail."""
    return b"".join(encode_page(p, 1, 1, PAGE) for p in range(PAGES))


async def _connect(endpoint: tuple[str, int]) -> SMB2Client:
    return await SMB2Client.connect(endpoint[0], endpoint[1], user=USER, password=PASSWORD)


async def run_break(
    cluster: DemoCluster, mode: str = "oplock", coordinated: bool = True
) -> BreakResult:
    """Play the scenario on a running cluster of at least two nodes."""
    if len(cluster.endpoints) < 2:
        raise ValueError("the break demo needs two nodes")
    result = BreakResult(mode, coordinated, time.monotonic())
    events = result.events

    def on_event(name: str, details: dict[str, object]) -> None:
        t = float(details["t"])  # type: ignore[arg-type]
        if name == "break":
            events.append(
                Event(
                    BREAK_RECEIVED,
                    t,
                    f"caching {_bits(details.get('old'))} -> {_bits(details.get('new'))}",
                )
            )
        elif name == "flushed":
            events.append(Event(A_FLUSHED, t, f"{details.get('pages')} page(s) written back"))
        elif name == "locks_pushed":
            events.append(Event(A_LOCKS_PUSHED, t, f"{details.get('locks')} lock(s)"))
        elif name == "acked":
            events.append(Event(A_ACKED, t, f"level {details.get('level')}"))

    data = record()
    a = await _connect(cluster.endpoints[0])
    b = await _connect(cluster.endpoints[1])
    try:
        ta = await a.tree_connect(SHARE)
        tb = await b.tree_connect(SHARE)
        # Logons are not part of the story: the clock starts at A's open.
        result.start = time.monotonic()
        fa = await CachingFile.open(
            ta, PATH, mode=mode, disposition=CreateDisposition.OVERWRITE_IF, on_event=on_event
        )
        events.append(Event(A_OPENED, time.monotonic(), f"granted {_bits(fa.caching)}"))
        if fa.caching != RWH:
            raise ConfigError(f"node 1 granted A only {_bits(fa.caching)}, not {_bits(RWH)}")
        await fa.write(0, data)
        await fa.lock(LOCK_BASE, 1)
        result.bytes_on_disk_before_b = (cluster.share_dir / PATH).stat().st_size
        events.append(Event(
            A_WROTE, time.monotonic(),
            f"{len(data)} bytes, {fa.dirty_pages} dirty page(s); "
            f"file on disk: {result.bytes_on_disk_before_b} bytes",
        ))  # fmt: skip

        events.append(Event(B_CREATE_SENT, time.monotonic(), f"asking for {_ask(mode)}"))
        fb = await tb.create(
            PATH,
            oplock=OplockLevel.BATCH if mode == "oplock" else OplockLevel.NONE,
            lease_state=RWH if mode == "lease" else None,
        )
        events.append(Event(B_CREATE_COMPLETED, time.monotonic(), f"granted {_bits(fb.caching)}"))
        seen = await fb.read(0, len(data))
        result.data_matches = seen == data
        events.append(Event(
            B_READ, time.monotonic(),
            f"{len(seen)} bytes, {'equal to' if result.data_matches else 'NOT equal to'} "
            "A's writes",
        ))  # fmt: skip
        try:
            await fb.lock(LOCK_BASE, 1, wait=False)
        except SmbError as e:
            result.b_lock_refused = e.status == Status.LOCK_NOT_GRANTED
            detail = (
                "refused (LOCK_NOT_GRANTED): A's lock is on the server"
                if result.b_lock_refused
                else f"refused: {e}"
            )
        else:
            await fb.unlock(LOCK_BASE, 1)
            detail = "GRANTED: A's lock never reached the server"
        events.append(Event(B_LOCK_TRIED, time.monotonic(), detail))
        # Uncoordinated, A still holds Write caching: let it finish before B
        # closes, so its late write-back does not race the teardown.
        await fa.unlock(LOCK_BASE, 1)
        await fa.close()
        await fb.close()
    finally:
        await a.close()
        await b.close()
    return result


def _bits(value: object) -> str:
    if not isinstance(value, int):
        return str(value)
    return "".join(c for bit, c in ((1, "R"), (2, "H"), (4, "W")) if value & bit) or "none"


def _ask(mode: str) -> str:
    return "a Batch oplock" if mode == "oplock" else "an RWH lease"


def render(result: BreakResult, ui: Ui) -> None:
    from rich.table import Table

    how = "coordinated" if result.coordinated else "uncoordinated"
    table = Table(
        title=f"Cross-node break ({how}, A holds {_ask(result.mode)})", title_justify="left"
    )
    table.add_column("ms", justify="right")
    table.add_column("event")
    table.add_column("detail")
    for e in sorted(result.events, key=lambda e: e.t):
        table.add_row(f"{result.ms(e):.1f}", LABELS.get(e.name, e.name), e.detail)
    ui.out.print(table)
    checks = [
        ("the break reached A before B's CREATE completed", result.break_before_create_completed),
        ("B read exactly A's unflushed writes", result.data_matches),
    ]
    for text, passed in checks:
        mark = "[bold green]yes[/bold green]" if passed else "[bold red]NO[/bold red]"
        ui.out.print(f"{mark}  {text}")


def run_break_demo(mode: str, uncoordinated: bool, as_json: bool, port: int | None) -> int:
    ui = Ui(not as_json)
    with terminate_as_interrupt(), quiet_client_warnings():
        with demo_cluster(2, port=port, uncoordinated=uncoordinated, say=ui.say) as cluster:
            try:
                result = asyncio.run(
                    asyncio.wait_for(run_break(cluster, mode, not uncoordinated), 60)
                )
            except TimeoutError:
                raise ConfigError(
                    "the break demo did not finish in 60 s; node logs:\n" + cluster.node_log_tail()
                ) from None
    if as_json:
        print(json.dumps(result.as_dict()))
    else:
        render(result, ui)
    return OK if result.ok else DAMAGE
