"""Durable opens that outlive their connection and their node (MS-SMB2
3.3.7.1, 3.3.5.9.7/12).

When a client's connection drops, or its node dies, each of its durable opens
that may still be reclaimed (a persistent one, or one holding handle caching)
stays in the file's record, disconnected: no node, the time it was left
behind. Whichever node the client reconnects through takes it over. Its share mode, lease and
byte-range locks keep holding, so nobody slips in before its client comes back
through another node, until its timeout. What it cannot do is answer a break:

- a durable (not persistent) open that a break would need is closed instead,
  as a disconnected open on a live node is (Samba does the same);
- a persistent open is never given up for another opener: an open that would
  break it, or conflict with its share mode, is refused at once with
  STATUS_FILE_NOT_AVAILABLE; an operation of an open that already shares the
  file lowers its caching without waiting (nobody is there to flush).

Pure, as the rest of the rules: the coordinator wakes waiters, unbinds leases
and forgets index entries for what these functions close (``Released``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .api import STATUS_SUCCESS, BreakNotice, Leaving, LockSequence, NodeId, OpenId
from .brl import release_open
from .caching import H, caching_of
from .model import FileState, OpenEntry


@dataclass
class Released:
    """What a rule closed on its own, for the coordinator to finish."""

    finished_waiters: list[str] = field(default_factory=list)
    dropped_leases: list[str] = field(default_factory=list)
    durable_keys: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.finished_waiters or self.dropped_leases or self.durable_keys)



def drop_open(st: FileState, open_id: OpenId, released: Released) -> OpenEntry:
    """Remove an open from ``st`` in place: its lease reference, locks, queued locks."""
    o = st.opens.pop(open_id)
    if o.lease_id is not None and o.lease_id in st.leases:
        lease = st.leases[o.lease_id]
        lease.opens = [i for i in lease.opens if i != open_id]
        if not lease.opens:
            del st.leases[o.lease_id]
            released.dropped_leases.append(o.lease_id)
    released.finished_waiters += release_open(st, open_id)
    if o.disconnected and o.durable_key:
        released.durable_keys.append(o.durable_key)
    if not st.opens:
        st.delete_pending = False
    return o


def any_disconnected(st: FileState) -> bool:
    return any(o.disconnected for o in st.opens.values())


def close_expired(st: FileState, now: float, released: Released) -> bool:
    """Close the disconnected opens nobody reclaimed in time; whether any went."""
    gone = [o.open_id for o in st.opens.values() if o.disconnected and now >= o.expires()]
    for open_id in gone:
        drop_open(st, open_id, released)
    return bool(gone)


def _breaking(st: FileState, o: OpenEntry) -> bool:
    if o.lease_id is not None:
        lease = st.leases.get(o.lease_id)
        return lease is not None and lease.breaking
    return o.breaking


def keeps(st: FileState, o: OpenEntry) -> bool:
    """Whether ``o`` may stay, disconnected, once its node is gone."""
    if not o.durable_ms:
        return False
    if o.persistent or o.resilient:
        return True
    # Without handle caching the client could not keep the handle; in a break,
    # the ack it owes can no longer come.
    return bool(caching_of(st, o) & H) and not _breaking(st, o)


def settle_break(st: FileState, o: OpenEntry) -> None:
    """End a break a disconnected open cannot acknowledge: at the level it
    had to reach, as the acknowledgement timer would (MS-SMB2 3.3.6.1)."""
    if o.lease_id is not None:
        lease = st.leases.get(o.lease_id)
        if lease is not None and lease.breaking:
            lease.breaking = False
            lease.state = lease.break_to_required
    elif o.breaking:
        o.breaking = False
        o.oplock = o.break_to_required


def disconnect(
    st: FileState, open_id: OpenId, now: float, released: Released, leaving: Leaving | None = None
) -> bool:
    """Its node died, or its client's connection (``leaving`` says what its
    node knew of it then): keep ``open_id`` disconnected if it may be
    reclaimed, else close it. In place; whether it was kept."""
    o = st.opens[open_id]
    if leaving is not None:
        o.resilient = o.resilient or leaving.resilient
        o.durable_ms = leaving.timeout_ms or o.durable_ms
        o.durable_key = o.durable_key or leaving.durable_key
        o.replay_key = o.replay_key or leaving.replay_key
        if leaving.lock_sequences is not None:
            o.lock_sequences = {str(i): n for i, n in leaving.lock_sequences.items()}
        if leaving.handle:
            o.reclaim = {**(o.reclaim or {}), **leaving.handle}
    if not keeps(st, o):
        drop_open(st, open_id, released)
        return False
    settle_break(st, o)
    o.node_id = ""
    o.epoch = 0
    o.disconnected = now
    o.result = None
    # Its node's queued lock requests died with the node.
    st.waiters = [w for w in st.waiters if w.open_id != open_id]
    return True


def reconnect(st: FileState, open_id: OpenId, new_id: OpenId, node_id: NodeId, epoch: int) -> None:
    """Give the disconnected ``open_id`` to ``node_id`` as ``new_id``, in place.

    Open ids name their node, so the open is renamed wherever the record
    refers to it; everything it holds goes with it."""
    o = st.opens.pop(open_id)
    o.open_id = new_id
    o.node_id = node_id
    o.epoch = epoch
    o.disconnected = 0.0
    st.opens[new_id] = o
    if o.lease_id is not None and o.lease_id in st.leases:
        lease = st.leases[o.lease_id]
        lease.opens = [new_id if i == open_id else i for i in lease.opens]
    for held in st.locks:
        if held.open_id == open_id:
            held.open_id = new_id


def connected_holder(st: FileState | None, durable_key: str) -> OpenId | None:
    """The open of ``st`` kept under ``durable_key`` while still connected."""
    if st is None or not durable_key:
        return None
    for o in st.opens.values():
        if o.durable_key == durable_key and not o.disconnected:
            return o.open_id
    return None


def with_lock_sequence(
    st: FileState | None, open_id: OpenId, sequence: LockSequence | None, status: int | None
) -> FileState | None:
    """``st`` once a LOCK carrying ``sequence`` on ``open_id`` ended with
    ``status``: the entry is valid after a success and forgotten after a
    failure (MS-SMB2 3.3.5.14: invalid while the request runs). Kept with the
    open so that whichever node takes it over knows a replay when it sees one,
    its own node dead or not. A copy when it changes, else ``st`` itself."""
    if st is None or sequence is None or status is None or open_id not in st.opens:
        return st
    index, number = str(sequence[0]), sequence[1]
    held = st.opens[open_id].lock_sequences
    if held.get(index) == (number if status == STATUS_SUCCESS else None):
        return st
    st = st.clone()
    held = st.opens[open_id].lock_sequences
    if status == STATUS_SUCCESS:
        held[index] = number
    else:
        held.pop(index, None)
    return st


def hit_by(st: FileState, notices: list[BreakNotice]) -> tuple[list[OpenId], list[BreakNotice]]:
    """The disconnected opens that ``notices`` would need an answer from, and
    the notices left to deliver. A break that needs no acknowledgement has
    already taken effect: it is simply not sent."""
    hit: list[OpenId] = []
    kept: list[BreakNotice] = []
    for n in notices:
        if n.node_id:
            kept.append(n)
        elif n.ack_required:
            if n.open_id is not None:
                hit.append(n.open_id)
            else:
                lid = str(n.lease)
                hit += [o.open_id for o in st.opens.values() if o.lease_id == lid]
    return hit, kept


def lower_without_ack(st: FileState, trial: FileState, open_id: OpenId) -> None:
    """A persistent disconnected open broken by an operation: its caching in
    ``st`` drops at once to where ``trial``'s break was taking it."""
    o, t = st.opens[open_id], trial.opens[open_id]
    if o.lease_id is not None:
        lease, target = st.leases.get(o.lease_id), trial.leases.get(o.lease_id)
        if lease is not None and target is not None:
            lease.state = target.break_to_required if target.breaking else target.state
            lease.epoch = target.epoch
            lease.breaking = False
    else:
        o.oplock = t.break_to_required if t.breaking else t.oplock
        o.breaking = False
