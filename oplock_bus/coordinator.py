"""The async half every backend shares: transactions, waits, break delivery.

Each operation runs a pure rule from :mod:`oplock_bus.rules` inside the
store's atomic read-modify-write, then, holding nothing, delivers the break
notices the rule produced and waits for the file to change (an ack, a
close) or for the earliest break deadline, and evaluates again. A client
is never awaited while anything is locked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from . import rules
from .api import (
    OPLOCK_LEASE,
    STATUS_CANCELLED,
    STATUS_INVALID_PARAMETER,
    STATUS_OBJECT_NAME_NOT_FOUND,
    STATUS_SUCCESS,
    AckResult,
    BreakHandler,
    BreakNotice,
    DisconnectedOpen,
    FileKey,
    LeaseKey,
    Leaving,
    LockBus,
    LockRange,
    LockSequence,
    NodeId,
    OpenId,
    OpenRequest,
    OpenResult,
    Operation,
)
from .disconnected import Released, connected_holder, with_lock_sequence
from .leaseindex import LeaseIndex, file_doc_key
from .model import FileState, OpenEntry, RangeSpec, lease_id, result_from_list
from .store import UNSUBSCRIBED, Doc, Store, Subscription

log = logging.getLogger("oplock_bus")

T = TypeVar("T")

# A lost wake-up (e.g. a pub/sub reconnect) must not strand a lock waiter.
WAITER_POLL_SECONDS = 5.0
# An oplock ack worked out when its break went to the client (see
# _prepare_ack) is used only this soon after: its rules ran at that time.
PREPARED_ACK_SECONDS = 0.05
PREPARED_ACKS_MAX = 1024


def durable_doc_key(key: str) -> str:
    """Where a disconnected durable open is found by the key its node gave it."""
    return f"durable:{{{key}}}"


def replay_doc_key(key: str) -> str:
    """Where a disconnected open is found by the create that made it (api.Leaving)."""
    return f"replay:{{{key}}}"


def file_channel(file: FileKey) -> str:
    return f"file:{{{file}}}"


def waiter_channel(file: FileKey, waiter_id: str) -> str:
    return f"waiter:{{{file}}}:{waiter_id}"


class Coordinator(LockBus):
    def __init__(
        self,
        store: Store,
        *,
        break_timeout: float = 35.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.break_timeout = break_timeout
        # Wall-clock time: break deadlines are stored in shared state and
        # compared by every node.
        self.clock = clock
        self.leases = LeaseIndex(store)
        self._background: set[asyncio.Future[None]] = set()
        # Opens granted here that stay out of the shared record
        # (rules.needs_record), kept so that a later lock or ack can still
        # put them in, and so that closing them costs nothing.
        self._unrecorded: dict[tuple[FileKey, OpenId], OpenRequest] = {}
        # Oplock acks worked out while their client was deciding (_prepare_ack).
        self._prepared: dict[tuple[FileKey, OpenId], _PreparedAck] = {}

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        await self.store.start()

    async def stop(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.store.stop()

    def register_node(self, node_id: NodeId, handler: BreakHandler) -> None:
        async def delivered(notice: BreakNotice) -> None:
            await handler(notice)
            if notice.ack_required and notice.open_id is not None and notice.lease is None:
                # After this turn of the loop: the break is on its way first.
                asyncio.get_running_loop().call_soon(self._prepare_ack, notice)

        self.store.register_node(node_id, delivered)

    # -- plumbing ------------------------------------------------------------------

    def _listen(self, file: FileKey, listening: bool) -> Subscription:
        return self.store.subscribe([file_channel(file)]) if listening else UNSUBSCRIBED

    async def _apply(
        self,
        file: FileKey,
        rule: Callable[[FileState | None], tuple[FileState | None, T]],
        wake: Callable[[T], list[str]] | None = None,
        notices: Callable[[T], list[BreakNotice]] | None = None,
        prepared: _PreparedAck | None = None,
    ) -> T:
        """Run ``rule`` atomically. ``wake`` names the channels to publish
        once it committed; a store that ``publishes_on_commit`` does that in
        the same round trip, otherwise the caller calls ``_wake`` itself.
        ``notices``: the outcome's break notices, which a store that
        ``sends_on_commit`` sends to other nodes in that round trip too;
        the caller then hands the outcome's notices to ``_send``.
        ``prepared``: what ``rule`` made of a document earlier, used if the
        document is still that one."""

        def fn(doc: Doc | None) -> tuple[Doc | None, T]:
            if prepared is not None and doc == prepared.doc:
                outcome: T = prepared.outcome
                return prepared.new_doc, outcome
            return _evaluate(doc, rule)

        publish = wake if self.store.publishes_on_commit else None
        send = notices if self.store.sends_on_commit else None
        return await self.store.transact(file_doc_key(file), fn, publish=publish, send=send)

    async def _send(self, notices: Iterable[BreakNotice]) -> None:
        """Deliver what ``_apply(notices=...)`` did not already send."""
        for notice in notices:
            if self.store.sends_on_commit and not self.store.is_local(notice.node_id):
                continue
            await self.store.deliver(notice)

    async def _wake(self, file: FileKey, waiters: Iterable[str] = (), *, file_too: bool) -> None:
        if self.store.publishes_on_commit:
            return  # published with the commit (see _apply's wake)
        channels = _channels(file, waiters, file_too=file_too)
        if channels:
            await self.store.publish(channels)

    async def _committed(
        self, transaction: Awaitable[T], undo: Callable[[T], Awaitable[None]]
    ) -> T:
        """Await a transaction; if the caller is cancelled meanwhile, let it
        finish and undo its effect in the background (a shared store may
        commit after the cancellation arrived)."""
        if self.store.commits_without_yielding:
            return await transaction
        task = asyncio.ensure_future(transaction)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:

            def cleanup(done: asyncio.Future[T]) -> None:
                if not done.cancelled() and done.exception() is None:
                    self._in_background(undo(done.result()))

            task.add_done_callback(cleanup)
            raise

    async def _undo_open(self, req: OpenRequest, out: rules.OpenOutcome) -> None:
        if out.result is None or out.result.status == STATUS_SUCCESS:
            await self.close(req.file, req.open_id)  # granted, or waiting in the record

    async def _unbind(self, lid: str, file: FileKey, bound: bool) -> None:
        if bound:
            await self.leases.release(lid, file)

    async def _load(self, file: FileKey) -> FileState | None:
        _, doc = await self.store.load(file_doc_key(file))
        return FileState.from_dict(doc) if doc is not None else None

    # -- opens -----------------------------------------------------------------------

    async def open(self, req: OpenRequest) -> OpenResult:
        if not rules.needs_record(req):
            return await self._open_unrecorded(req)
        recorded: list[bool] = []
        try:
            return await self._open(req, recorded)
        except BaseException:
            # Granted or waiting in the record, but the caller will never
            # learn of it (cancelled by a CANCEL or a disconnect, or a later
            # step failed): an open nobody can close would block the file for
            # good, and a waiting one would be granted to nobody.
            if recorded:
                self._in_background(self.close(req.file, req.open_id))
            raise

    async def _open_unrecorded(self, req: OpenRequest) -> OpenResult:
        if (req.file, req.open_id) in self._unrecorded:
            return OpenResult(STATUS_INVALID_PARAMETER)
        result = rules.unrecorded_open(await self._load(req.file), req)
        if result.status == STATUS_SUCCESS:
            self._unrecorded[(req.file, req.open_id)] = req
        return result

    async def _record(self, file: FileKey, open_id: OpenId) -> None:
        """Put an open that stayed out of the record in it, before an
        operation that needs it there (a lock, an unlock, an ack)."""
        req = self._unrecorded.pop((file, open_id), None)
        if req is not None:
            # Refused only if the file became delete-pending meanwhile; the
            # operation then answers as for a closed open.
            await self.open(dataclasses.replace(req, holds_record=True))

    def _in_background(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Future[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("bus clean-up failed: %r", task.exception())

    async def _open(self, req: OpenRequest, recorded: list[bool]) -> OpenResult:
        lid = lease_id(req.lease.key) if req.lease is not None else None
        if lid is not None and not await self._committed(
            self.leases.bind(lid, req.file), lambda bound: self._unbind(lid, req.file, bound)
        ):
            return OpenResult(STATUS_INVALID_PARAMETER)
        try:
            first = True
            listening = self.store.subscribed(file_channel(req.file))
            key = file_doc_key(req.file)
            # A document this node has not seen must be read first anyway:
            # subscribing meanwhile costs no time, and spares a wait the
            # second evaluation that a late subscription needs.
            early = not listening and not self.store.knows(key)
            listening = listening or early
            while True:
                with self._listen(req.file, listening) as sub:
                    if early:
                        await asyncio.gather(sub.ready(), self.store.prefetch(key))
                        early = False
                    else:
                        await sub.ready()
                    now = self.clock()
                    rule = _open_rule(req, now, self.break_timeout, first)
                    out = await self._committed(
                        self._apply(req.file, rule, lambda o: _woken(req.file, o), _notices),
                        lambda o: self._undo_open(req, o),
                    )
                    if out.result is None or out.result.status == STATUS_SUCCESS:
                        recorded.append(True)
                    if out.result is None and not listening:
                        self.store.prepare_subscribe([file_channel(req.file)])
                    if out.released:
                        await self._finish_released(req.file, out.released)
                    await self._send(out.notices)
                    if out.wake:
                        await self._wake(req.file, file_too=True)
                    if out.result is not None:
                        return out.result
                    first = False
                    if not listening:
                        listening = True
                        continue
                    until = out.wait_until if out.wait_until is not None else now
                    await sub.wait(max(0.0, until - self.clock()))
                    # What woke us may have granted the open already (see
                    # _admit): then the record says so, and only reading it
                    # is left. A grant once seen stays true, so a value seen
                    # here needs no check that it is current.
                    admitted = _admitted(self.store.peek(key), req.open_id)
                    if admitted is not None:
                        return admitted
        finally:
            if lid is not None:
                await asyncio.shield(self.leases.release(lid, req.file))

    def _admit(self, st: FileState | None, now: float) -> tuple[FileState | None, bool]:
        """Grant, in the same transaction, the waiting opens that an ack or a
        close unblocked (rules.admit_waiting): each opener is spared the
        round trip of committing its open itself once woken."""
        if st is None or not st.pending:
            return st, False
        st, admitted = rules.admit_waiting(st, now=now, break_timeout=self.break_timeout)
        return st, bool(admitted)

    async def close(self, file: FileKey, open_id: OpenId) -> None:
        if self._unrecorded.pop((file, open_id), None) is not None:
            return
        now = self.clock()

        def forget(st: FileState | None) -> tuple[FileState | None, rules.CloseOutcome]:
            out = rules.close(st, open_id, now=now)
            new, _ = self._admit(out.state, now)  # the close's wake-up tells them
            return new, out

        out = await self._apply(
            file, forget, lambda o: _channels(file, o.finished_waiters, file_too=True)
        )
        await self._finish_close(file, out.finished_waiters, out.dropped_leases, out.durable_keys)

    async def _finish_released(self, file: FileKey, released: Released) -> None:
        """What a rule that closed disconnected opens left to the coordinator."""
        await self._finish_close(
            file, released.finished_waiters, released.dropped_leases, released.durable_keys
        )

    async def _finish_close(
        self,
        file: FileKey,
        waiters: Iterable[str],
        leases: Iterable[str],
        durable_keys: Iterable[str],
    ) -> None:
        """After opens left a record: wake who waited, unbind their last leases,
        forget index entries of disconnected ones."""
        await self._wake(file, waiters, file_too=True)
        for lid in leases:
            await self.leases.dropped(lid, file)
        for key in durable_keys:
            await self._unindex(key, file)

    # -- acknowledgements -----------------------------------------------------------

    async def ack_oplock(self, file: FileKey, open_id: OpenId, level: int) -> AckResult:
        await self._record(file, open_id)
        now = self.clock()
        prepared = self._prepared.pop((file, open_id), None)
        if prepared is not None and (
            prepared.level != level or not 0 <= now - prepared.at <= PREPARED_ACK_SECONDS
        ):
            prepared = None
        out = await self._apply(
            file,
            self._ack_rule(open_id, level, now),
            lambda o: _channels(file, file_too=o.wake),
            _notices,
            prepared,
        )
        await self._send(out.notices)
        if out.wake:
            await self._wake(file, file_too=True)
        return out.result

    def _ack_rule(
        self, open_id: OpenId, level: int, now: float
    ) -> Callable[[FileState | None], tuple[FileState | None, rules.AckOutcome]]:
        def ack(st: FileState | None) -> tuple[FileState | None, rules.AckOutcome]:
            out = rules.ack_oplock(st, open_id, level, now=now)
            new, admitted = self._admit(out.state, now)
            return new, dataclasses.replace(out, wake=True) if admitted else out

        return ack

    def _prepare_ack(self, notice: BreakNotice) -> None:
        """Work out the ack of an oplock break while the client decides.

        A client that acknowledges at once does so within a network round
        trip, during which this node is idle; the ack then only checks that
        the record is still the one it was worked out on (its rules would
        decide the same) and commits, which takes the rules' CPU time off
        the path of the opener waiting on the other node.
        """
        assert notice.open_id is not None
        doc = self.store.peek(file_doc_key(notice.file))
        if doc is None:
            return
        now = self.clock()
        rule = self._ack_rule(notice.open_id, notice.new_level, now)
        new_doc, outcome = _evaluate(doc, rule)
        if len(self._prepared) >= PREPARED_ACKS_MAX:
            self._prepared.pop(next(iter(self._prepared)))
        self._prepared[(notice.file, notice.open_id)] = _PreparedAck(
            notice.new_level, now, doc, new_doc, outcome
        )

    async def ack_lease(self, key: LeaseKey, state: int) -> AckResult:
        lid = lease_id(key)
        file = await self.leases.lookup(lid)
        if file is None:
            return AckResult(STATUS_OBJECT_NAME_NOT_FOUND)
        now = self.clock()

        def ack(st: FileState | None) -> tuple[FileState | None, rules.AckOutcome]:
            out = rules.ack_lease(st, lid, state, now=now, break_timeout=self.break_timeout)
            new, admitted = self._admit(out.state, now)
            return new, dataclasses.replace(out, wake=True) if admitted else out

        out = await self._apply(file, ack, lambda o: _channels(file, file_too=o.wake), _notices)
        await self._send(out.notices)
        if out.wake:
            await self._wake(file, file_too=True)
        return out.result

    async def lease_file(self, key: LeaseKey) -> FileKey | None:
        return await self.leases.lookup(lease_id(key))

    # -- operations ------------------------------------------------------------------

    async def break_for(self, file: FileKey, open_id: OpenId, op: Operation) -> None:
        listening = not self.store.lazy_subscribe
        while True:
            with self._listen(file, listening) as sub:
                await sub.ready()
                now = self.clock()
                rule = _operation_rule(open_id, op, now, self.break_timeout)
                out = await self._apply(file, rule, lambda o: _woken(file, o), _notices)
                if out.wait_until is not None and not listening:
                    self.store.prepare_subscribe([file_channel(file)])
                if out.released:
                    await self._finish_released(file, out.released)
                await self._send(out.notices)
                if out.wake:
                    await self._wake(file, file_too=True)
                if out.wait_until is None:
                    return
                if not listening:
                    listening = True
                    continue
                await sub.wait(max(0.0, out.wait_until - self.clock()))

    async def set_delete_pending(self, file: FileKey, pending: bool) -> None:
        await self._apply(file, lambda st: (rules.set_delete_pending(st, pending), None))

    # -- byte-range locks -----------------------------------------------------------

    async def lock(
        self,
        file: FileKey,
        open_id: OpenId,
        ranges: list[LockRange],
        *,
        wait: bool,
        sequence: LockSequence | None = None,
    ) -> int:
        await self._record(file, open_id)
        specs = [RangeSpec(r.offset, r.length, r.exclusive) for r in ranges]
        waiter_id = uuid.uuid4().hex

        def take(st: FileState | None) -> tuple[FileState | None, rules.LockOutcome]:
            out = rules.lock(st, open_id, specs, wait=wait, waiter_id=waiter_id)
            return with_lock_sequence(out.state, open_id, sequence, out.status), out

        def collect(st: FileState | None) -> tuple[FileState | None, rules.LockOutcome]:
            new, out = _collected(st, waiter_id)
            return with_lock_sequence(new, open_id, sequence, out.status), out

        # Subscribe first (a release may grant us between the two steps),
        # unless subscribing costs a round trip: then only a queued request
        # subscribes, and collects once right after, as a poll would.
        early = wait and not self.store.lazy_subscribe
        channel = waiter_channel(file, waiter_id)
        sub = self.store.subscribe([channel]) if early else UNSUBSCRIBED
        try:
            out = await self._committed(
                self._apply(file, take),
                lambda o: self._undo_lock(file, open_id, ranges, o, sequence),
            )
            if out.status is not None:
                return out.status
            try:
                if not early:
                    sub = self.store.subscribe([channel])
                    await sub.ready()
                    done = await self._apply(file, collect)
                    if done.status is not None:
                        return done.status
                while True:
                    await sub.wait(WAITER_POLL_SECONDS)
                    done = await self._apply(file, collect)
                    if done.status is not None:
                        return done.status
            except asyncio.CancelledError:
                await asyncio.shield(self._withdraw(file, waiter_id))
                raise
        finally:
            sub.close()

    async def _undo_lock(
        self,
        file: FileKey,
        open_id: OpenId,
        ranges: list[LockRange],
        out: rules.LockOutcome,
        sequence: LockSequence | None,
    ) -> None:
        if out.status == STATUS_SUCCESS:
            await self.unlock(file, open_id, ranges)
            if sequence is not None:
                # Undone: a replay of this request must run it again.
                await self._apply(
                    file,
                    lambda st: (with_lock_sequence(st, open_id, sequence, STATUS_CANCELLED), None),
                )
        elif out.status is None:
            await self._withdraw(file, out.waiter_id)

    async def _withdraw(self, file: FileKey, waiter_id: str) -> None:
        def cancel(st: FileState | None) -> tuple[FileState | None, rules.LockOutcome]:
            out = rules.cancel_waiter(st, waiter_id)
            return out.state, out

        out = await self._apply(
            file, cancel, lambda o: _channels(file, o.finished_waiters, file_too=False)
        )
        await self._wake(file, out.finished_waiters, file_too=False)

    async def unlock(
        self,
        file: FileKey,
        open_id: OpenId,
        ranges: list[LockRange],
        sequence: LockSequence | None = None,
    ) -> int:
        await self._record(file, open_id)
        specs = [RangeSpec(r.offset, r.length, r.exclusive) for r in ranges]

        def release(st: FileState | None) -> tuple[FileState | None, rules.LockOutcome]:
            out = rules.unlock(st, open_id, specs)
            return with_lock_sequence(out.state, open_id, sequence, out.status), out

        out = await self._apply(
            file, release, lambda o: _channels(file, o.finished_waiters, file_too=False)
        )
        await self._wake(file, out.finished_waiters, file_too=False)
        assert out.status is not None
        return out.status

    async def check_io(
        self, file: FileKey, open_id: OpenId, offset: int, length: int, write: bool
    ) -> bool:
        return rules.check_io(await self._load(file), open_id, offset, length, write)

    # -- node failure ---------------------------------------------------------------

    async def drop_node(self, node_id: NodeId, epoch: int | None = None) -> int:
        """Release what a (dead) node owned: plain opens close (their locks go,
        their breaks end); durable opens that may be reclaimed stay,
        disconnected, for any node to take over (``oplock_bus.disconnected``).

        Liveness detection (heartbeats with a TTL) decides when to call
        this; with ``epoch``, only opens made under that registration epoch
        or an older one go (the node may be back under a newer one).
        Returns how many opens were closed or disconnected.
        """
        released = 0
        for key in await self.store.keys("file:"):
            _, doc = await self.store.load(key)
            if doc is None:
                continue
            # Waiting opens too: one granted to a dead node would hold the file.
            for open_id, entry in doc.get("pending", {}).items():
                if entry.get("node_id") == node_id:
                    await self.close(doc["file"], open_id)
                    released += 1
            for open_id, entry in doc.get("opens", {}).items():
                if entry.get("node_id") != node_id:
                    continue
                if epoch is None or entry.get("epoch", 0) <= epoch:
                    await self.disconnect(doc["file"], open_id)
                    released += 1
        return released

    async def disconnect(
        self, file: FileKey, open_id: OpenId, leaving: Leaving | None = None
    ) -> bool:
        now = self.clock()

        def leave(st: FileState | None) -> tuple[FileState | None, rules.DisconnectOutcome]:
            out = rules.disconnect(st, open_id, now=now, leaving=leaving)
            return out.state, out

        out = await self._apply(
            file, leave, lambda o: _channels(file, o.closed.finished_waiters, file_too=True)
        )
        closed = out.closed
        await self._finish_close(
            file, closed.finished_waiters, closed.dropped_leases, closed.durable_keys
        )
        entry = out.state.opens.get(open_id) if out.kept and out.state is not None else None
        if entry is not None and entry.durable_key:
            index = {"file": file, "open_id": open_id, "expires": entry.expires()}
            await self.store.transact(
                durable_doc_key(entry.durable_key), lambda _doc: (index, None)
            )
            if entry.replay_key:
                by_create = {"durable": entry.durable_key, "expires": entry.expires()}
                await self.store.transact(
                    replay_doc_key(entry.replay_key), lambda _doc: (by_create, None)
                )
            # It lives nowhere else now: not in the node's memory, only here.
            await self.store.persist()
            log.info("open %s of %s kept for %d ms for its client", open_id, file, entry.durable_ms)
            return True
        return False

    async def find_replayable(self, replay_key: str) -> DisconnectedOpen | None:
        key = replay_doc_key(replay_key)
        _, index = await self.store.load(key)
        if index is None:
            return None
        found = await self.find_disconnected(index["durable"])
        if found is None:  # taken over or closed since: the entry is done
            await self._forget_if(key, index)
        return found

    async def _unindex(self, key: str, file: FileKey) -> None:
        def forget(doc: Any) -> tuple[Any, None]:
            return (None if doc is not None and doc["file"] == file else doc), None

        await self.store.transact(durable_doc_key(key), forget)

    async def find_disconnected(self, durable_key: str) -> DisconnectedOpen | None:
        _, index = await self.store.load(durable_doc_key(durable_key))
        if index is None:
            return None
        st = await self._load(index["file"])
        entry = st.opens.get(index["open_id"]) if st is not None else None
        if st is None or entry is None or not entry.disconnected:
            return None
        return _disconnected_view(st, entry)

    async def find_connected(self, file: FileKey, durable_key: str) -> OpenId | None:
        return connected_holder(await self._load(file), durable_key)

    async def _epoch(self, node_id: NodeId) -> int:
        """The registration epoch an open of ``node_id`` is made under (none here)."""
        return 0

    async def reconnect(
        self, found: DisconnectedOpen, open_id: OpenId, node_id: NodeId
    ) -> DisconnectedOpen | None:
        epoch = await self._epoch(node_id)
        now = self.clock()

        def take(
            st: FileState | None,
        ) -> tuple[FileState | None, tuple[DisconnectedOpen, OpenEntry] | None]:
            new, entry = rules.reconnect(st, found.open_id, open_id, node_id, epoch, now=now)
            if new is None or entry is None:
                return new, None
            return new, (_disconnected_view(new, entry), entry)

        taken = await self._apply(found.file, take)
        if taken is None:
            return None
        view, entry = taken
        if entry.durable_key:
            await self._unindex(entry.durable_key, found.file)
        if entry.replay_key:
            await self.store.transact(replay_doc_key(entry.replay_key), lambda _doc: (None, None))
        return view

    async def sweep_disconnected(self) -> int:
        """Close the disconnected opens whose timeout ran out; how many went.
        Any live node may run it: the close is idempotent."""
        closed = 0
        now = self.clock()
        for key in await self.store.keys("durable:"):
            _, index = await self.store.load(key)
            if index is not None and now >= index["expires"]:
                closed += await self._expire(key, index, now)
        for key in await self.store.keys("replay:"):
            _, index = await self.store.load(key)
            if index is not None and now >= index["expires"]:
                await self._forget_if(key, index)
        return closed

    async def _forget_if(self, key: str, index: dict[str, Any]) -> None:
        """Delete the index entry ``key`` unless someone rewrote it meanwhile."""
        await self.store.transact(key, lambda doc: (None if doc == index else doc, None))

    async def _expire(self, key: str, index: dict[str, Any], now: float) -> int:
        file, open_id = index["file"], index["open_id"]

        def expire(st: FileState | None) -> tuple[FileState | None, rules.CloseOutcome]:
            out = rules.close_disconnected(st, open_id, now=now)
            return out.state, out

        out = await self._apply(
            file, expire, lambda o: _channels(file, o.finished_waiters, file_too=True)
        )
        await self._finish_close(file, out.finished_waiters, out.dropped_leases, ())
        # Closed now, or earlier, or taken over: the index entry is done.
        await self._forget_if(key, index)
        if out.durable_keys:
            log.info("disconnected open %s of %s expired unclaimed", open_id, file)
            return 1
        return 0

    async def reassert(self, mine: FileState, epoch: int, now: float) -> rules.ReassertOutcome:
        """Put back what a node holds in one file after the bus lost it
        (``oplock_bus.recovery``)."""

        def put_back(st: FileState | None) -> tuple[FileState | None, rules.ReassertOutcome]:
            out = rules.reassert(st, mine, epoch, now=now)
            return out.state, out

        return await self._apply(mine.file, put_back)

    # -- introspection ---------------------------------------------------------------

    async def snapshot(self) -> dict[str, Any]:
        files: dict[str, Any] = {}
        for key in await self.store.keys("file:"):
            _, doc = await self.store.load(key)
            if doc is not None:
                files[doc["file"]] = doc
        leases: dict[str, Any] = {}
        for key in await self.store.keys("lease:"):
            _, doc = await self.store.load(key)
            if doc is not None:
                leases[key.removeprefix("lease:{").removesuffix("}")] = doc
        return {"files": files, "leases": leases}


def _evaluate(
    doc: Doc | None, rule: Callable[[FileState | None], tuple[FileState | None, T]]
) -> tuple[Doc | None, T]:
    """``rule`` on a stored document: the document to store and the outcome."""
    old = FileState.from_dict(doc) if doc is not None else None
    new, result = rule(old)
    if new is None or new.is_idle():
        return None, result
    new_doc = new.to_dict()
    if doc is not None and _same(doc, new_doc):
        return doc, result
    new_doc["version"] = (old.version if old is not None else 0) + 1
    return new_doc, result


@dataclasses.dataclass(frozen=True)
class _PreparedAck:
    """An oplock ack worked out ahead (Coordinator._prepare_ack): on ``doc``,
    at ``at``, it stores ``new_doc`` and comes out as ``outcome``."""

    level: int
    at: float
    doc: Doc
    new_doc: Doc | None
    outcome: Any


def _disconnected_view(st: FileState, entry: OpenEntry) -> DisconnectedOpen:
    lease = st.leases.get(entry.lease_id) if entry.lease_id is not None else None
    return DisconnectedOpen(
        file=st.file,
        open_id=entry.open_id,
        persistent=entry.persistent,
        reclaim=dict(entry.reclaim or {}),
        oplock=OPLOCK_LEASE if lease is not None else entry.oplock,
        lease_state=lease.state if lease is not None else 0,
        lease_epoch=lease.epoch & 0xFFFF if lease is not None else 0,
        lease_version=lease.version if lease is not None else 0,
        lock_sequences={int(i): n for i, n in entry.lock_sequences.items()},
    )


def _open_rule(
    req: OpenRequest, now: float, timeout: float, first_attempt: bool
) -> Callable[[FileState | None], tuple[FileState | None, rules.OpenOutcome]]:
    def rule(st: FileState | None) -> tuple[FileState | None, rules.OpenOutcome]:
        out = rules.evaluate_waiting_open(
            st, req, now=now, break_timeout=timeout, first_attempt=first_attempt
        )
        return out.state, out

    return rule


def _admitted(doc: Doc | None, open_id: OpenId) -> OpenResult | None:
    entry = doc.get("opens", {}).get(open_id) if doc is not None else None
    if entry is None or entry.get("result") is None:
        return None
    return result_from_list(entry["result"])


def _operation_rule(
    open_id: OpenId, op: Operation, now: float, timeout: float
) -> Callable[[FileState | None], tuple[FileState | None, rules.OperationOutcome]]:
    def rule(st: FileState | None) -> tuple[FileState | None, rules.OperationOutcome]:
        out = rules.evaluate_operation(st, open_id, op, now=now, break_timeout=timeout)
        return out.state, out

    return rule


def _collected(st: FileState | None, waiter_id: str) -> tuple[FileState | None, rules.LockOutcome]:
    out = rules.collect_waiter(st, waiter_id)
    return out.state, out


def _notices(outcome: Any) -> list[BreakNotice]:
    notices: list[BreakNotice] = outcome.notices
    return notices


def _woken(file: FileKey, out: rules.OpenOutcome | rules.OperationOutcome) -> list[str]:
    """Whom an open's or operation's commit wakes: the file's waiters if it
    changed, and the lock waiters of disconnected opens it closed."""
    waiters = out.released.finished_waiters if out.released else ()
    return _channels(file, waiters, file_too=out.wake)


def _channels(file: FileKey, waiters: Iterable[str] = (), *, file_too: bool) -> list[str]:
    channels = [waiter_channel(file, w) for w in waiters]
    if file_too:
        channels.append(file_channel(file))
    return channels


def _same(a: Doc, b: Doc) -> bool:
    # Structural equality of JSON-able data: no serialisation on the hot path.
    return a == b
