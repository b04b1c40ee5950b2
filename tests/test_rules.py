"""The pure rules engine, case by case.

Each table row names the MS-FSA / MS-SMB2 section or the smbtorture test
(source4/torture/smb2/{oplock,lease,lock}.c) whose expectation it mirrors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oplock_bus import rules
from oplock_bus.api import (
    LEASE_FLAG_BREAK_IN_PROGRESS,
    OPLOCK_BATCH,
    OPLOCK_EXCLUSIVE,
    OPLOCK_II,
    OPLOCK_LEASE,
    OPLOCK_NONE,
    STATUS_DELETE_PENDING,
    STATUS_FILE_CLOSED,
    STATUS_INVALID_DEVICE_STATE,
    STATUS_INVALID_LOCK_RANGE,
    STATUS_INVALID_OPLOCK_PROTOCOL,
    STATUS_INVALID_PARAMETER,
    STATUS_LOCK_NOT_GRANTED,
    STATUS_OBJECT_NAME_NOT_FOUND,
    STATUS_RANGE_NOT_LOCKED,
    STATUS_REQUEST_NOT_ACCEPTED,
    STATUS_SHARING_VIOLATION,
    STATUS_SUCCESS,
    STATUS_UNSUCCESSFUL,
    BreakNotice,
    Disposition,
    LeaseKey,
    LeaseRequest,
    OpenRequest,
    Operation,
)
from oplock_bus.model import (
    FileState,
    RangeSpec,
    lease_id,
    request_from_dict,
    request_to_dict,
    result_from_list,
)
from oplock_bus.ranges import overlap, range_valid

NOW = 1_000.0
TIMEOUT = 35.0

READ = 0x1
WRITE = 0x2
APPEND = 0x4
EXECUTE = 0x20
READ_ATTR = 0x80
WRITE_ATTR = 0x100
DELETE = 0x10000
READ_CONTROL = 0x20000
WRITE_DAC = 0x40000
SYNC = 0x100000
RW = READ | WRITE
ALL_ACCESS = 0x1F01FF
SH_R, SH_W, SH_D = 1, 2, 4
SH_RW = SH_R | SH_W
SH_ALL = SH_R | SH_W | SH_D

GUID = b"client-guid-0001"
OPLOCKS = {"": OPLOCK_NONE, "s": OPLOCK_II, "x": OPLOCK_EXCLUSIVE, "b": OPLOCK_BATCH}


def bits(state: str) -> int:
    return (1 if "R" in state else 0) | (2 if "H" in state else 0) | (4 if "W" in state else 0)


def lkey(n: int, guid: bytes = GUID) -> LeaseKey:
    return LeaseKey(guid, n.to_bytes(16, "little"))


def lreq(
    n: int, state: str, *, version: int = 1, epoch: int = 0, guid: bytes = GUID
) -> LeaseRequest:
    return LeaseRequest(lkey(n, guid), bits(state), version, epoch)


def req(
    oid: str,
    *,
    access: int = RW,
    share: int = SH_RW,
    oplock: int = OPLOCK_NONE,
    lease: LeaseRequest | None = None,
    overwrite: bool = False,
    file_size: int | None = None,
    directory: bool = False,
    created: bool = False,
) -> OpenRequest:
    return OpenRequest(
        open_id=oid,
        node_id="node-" + oid.split("/")[0],
        file="f",
        access=access,
        share=share,
        oplock=OPLOCK_LEASE if lease is not None else oplock,
        lease=lease,
        disposition=Disposition.OVERWRITE if overwrite else Disposition.OPEN,
        is_directory=directory,
        owner_data={"conn": oid},
        file_size=file_size,
        created=created,
    )


def attempt(
    state: FileState | None, r: OpenRequest, *, first: bool = True, now: float = NOW
) -> rules.OpenOutcome:
    return rules.evaluate_open(state, r, now=now, break_timeout=TIMEOUT, first_attempt=first)


def granted(state: FileState | None, *reqs: OpenRequest) -> FileState:
    """Open each request; every one must be granted at once."""
    st = state
    for r in reqs:
        out = attempt(st, r)
        assert out.result is not None, f"{r.open_id} had to wait: {out.notices}"
        assert out.result.status == STATUS_SUCCESS, hex(out.result.status)
        st = out.state
    assert st is not None
    return st


def ack_all(st: FileState, notices: tuple[BreakNotice, ...]) -> FileState:
    """Acknowledge every break that wants it, to the level offered."""
    for n in notices:
        if not n.ack_required:
            continue
        if n.lease is not None:
            out = rules.ack_lease(
                st, lease_id(n.lease), n.new_level, now=NOW, break_timeout=TIMEOUT
            )
        else:
            assert n.open_id is not None
            out = rules.ack_oplock(st, n.open_id, n.new_level, now=NOW)
        assert out.result.status == STATUS_SUCCESS
        assert out.state is not None
        st = out.state
    return st


def open_after_acks(
    st: FileState, r: OpenRequest
) -> tuple[rules.OpenOutcome, tuple[BreakNotice, ...]]:
    """Open; if it must wait, ack the breaks and evaluate again (as the bus does)."""
    out = attempt(st, r)
    notices = out.notices
    first = True
    while out.result is None:
        first = False
        st = ack_all(out.state, out.notices)
        out = attempt(st, r, first=first)
        notices += out.notices
    return out, notices


def table(text: str) -> list[tuple[str, ...]]:
    """Rows of whitespace-separated cells; "-" is the empty state."""
    rows = [line.split() for line in text.strip().splitlines()]
    return [tuple("" if cell == "-" else cell for cell in row) for row in rows]


def lease_state(st: FileState, n: int) -> int:
    return st.leases[lease_id(lkey(n))].state


# -- MS-FSA 2.1.5.1.2.2 share access ------------------------------------------------------

SHARE_CASES = [
    # (existing access, existing share, new access, new share, violation?)
    (READ, SH_R, READ, SH_RW, False),  # readers sharing read
    (READ, SH_R, WRITE, SH_RW, True),  # existing does not share write
    (WRITE, SH_RW, READ, SH_R, True),  # new does not share write with a writer
    (READ, SH_ALL, DELETE, SH_ALL, False),
    (READ, SH_RW, DELETE, SH_ALL, True),  # delete needs FILE_SHARE_DELETE
    (DELETE, SH_ALL, READ, SH_RW, True),  # existing deleter needs the new open to share delete
    (EXECUTE, 0, READ, SH_ALL, True),  # execute counts as read
    (APPEND, SH_R, READ, SH_ALL, False),  # append counts as write; new only reads
    (READ_ATTR, 0, READ, 0, False),  # attribute-only opens take no part
    (READ, 0, READ_ATTR | WRITE_ATTR, 0, False),
    (READ_CONTROL | WRITE_DAC, 0, RW, 0, False),  # no data access: no part
    (RW, SH_RW, RW, SH_RW, False),
]


@pytest.mark.parametrize(("acc1", "sh1", "acc2", "sh2", "violation"), SHARE_CASES)
def test_share_access_check(acc1: int, sh1: int, acc2: int, sh2: int, violation: bool) -> None:
    st = granted(None, req("a/1", access=acc1, share=sh1))
    out = attempt(st, req("b/1", access=acc2, share=sh2))
    assert out.result is not None
    expected = STATUS_SHARING_VIOLATION if violation else STATUS_SUCCESS
    assert out.result.status == expected
    assert ("b/1" in out.state.opens) == (not violation)


def test_delete_pending_refuses_opens() -> None:
    # MS-FSA 2.1.5.1.2: an open of a file with delete pending fails.
    st = rules.set_delete_pending(granted(None, req("a/1", share=SH_ALL)), True)
    out = attempt(st, req("b/1", access=READ_ATTR, share=SH_ALL))
    assert out.result is not None and out.result.status == STATUS_DELETE_PENDING


def test_duplicate_open_id_is_refused() -> None:
    st = granted(None, req("a/1"))
    out = attempt(st, req("a/1"))
    assert out.result is not None and out.result.status == STATUS_INVALID_PARAMETER


# -- oplocks: MS-FSA 2.1.4.12 / 2.1.5.17, smbtorture smb2.oplock ---------------------------


@dataclass(frozen=True)
class OplockCase:
    name: str
    held: int
    share: int
    second: OpenRequest
    notice: tuple[int, bool] | None  # level offered to the holder, ack wanted?
    waits: bool
    status: int
    level: int | None  # oplock granted to the second open


def _second(
    access: int = RW, share: int = SH_RW, oplock: int = OPLOCK_NONE, **kw: Any
) -> OpenRequest:
    return req("b/1", access=access, share=share, oplock=oplock, **kw)


STAT = READ_ATTR | WRITE_ATTR | SYNC
OPLOCK_CASES = [
    OplockCase("batch6: 2nd open breaks Batch to II", OPLOCK_BATCH, SH_RW,
               _second(oplock=OPLOCK_BATCH), (OPLOCK_II, True), True, STATUS_SUCCESS, OPLOCK_II),
    OplockCase("brl1: an opener without oplock still breaks to II", OPLOCK_BATCH, SH_RW,
               _second(), (OPLOCK_II, True), True, STATUS_SUCCESS, OPLOCK_NONE),
    OplockCase("exclusive2: Exclusive to II", OPLOCK_EXCLUSIVE, SH_ALL,
               _second(share=SH_ALL, oplock=OPLOCK_EXCLUSIVE), (OPLOCK_II, True), True,
               STATUS_SUCCESS, OPLOCK_II),
    OplockCase("an overwrite breaks Batch to none", OPLOCK_BATCH, SH_RW,
               _second(overwrite=True), (OPLOCK_NONE, True), True, STATUS_SUCCESS, OPLOCK_NONE),
    OplockCase("exclusive1: sharing violation, Exclusive kept", OPLOCK_EXCLUSIVE, 0,
               _second(share=0, oplock=OPLOCK_EXCLUSIVE), None, False,
               STATUS_SHARING_VIOLATION, None),
    OplockCase("batch5: Batch broken to II, then sharing violation", OPLOCK_BATCH, 0,
               _second(share=0, oplock=OPLOCK_BATCH), (OPLOCK_II, True), True,
               STATUS_SHARING_VIOLATION, None),
    OplockCase("Level II kept beside a plain open", OPLOCK_II, SH_RW,
               _second(oplock=OPLOCK_II), None, False, STATUS_SUCCESS, OPLOCK_II),
    OplockCase("Level II to none by an overwrite, no ack", OPLOCK_II, SH_RW,
               _second(overwrite=True), (OPLOCK_NONE, False), False, STATUS_SUCCESS, OPLOCK_NONE),
    OplockCase("batch8: attribute-only open breaks nothing, gets nothing", OPLOCK_BATCH, 0,
               _second(access=STAT, share=0, oplock=OPLOCK_BATCH), None, False,
               STATUS_SUCCESS, OPLOCK_NONE),
    OplockCase("statopen1: READ_CONTROL is not an oplock stat open", OPLOCK_BATCH, SH_ALL,
               _second(access=READ_CONTROL, share=SH_ALL), (OPLOCK_II, True), True,
               STATUS_SUCCESS, OPLOCK_NONE),
    OplockCase("batch13: an attribute-only overwrite still truncates", OPLOCK_BATCH, SH_ALL,
               _second(access=STAT, share=SH_ALL, oplock=OPLOCK_II, overwrite=True),
               (OPLOCK_NONE, True), True, STATUS_SUCCESS, OPLOCK_II),
    OplockCase("exclusive5: ... and a truncating open needs write sharing", OPLOCK_EXCLUSIVE,
               SH_R | SH_D, _second(access=STAT, share=SH_ALL, overwrite=True), None, False,
               STATUS_SHARING_VIOLATION, None),
]  # fmt: skip


@pytest.mark.parametrize("case", OPLOCK_CASES, ids=[c.name for c in OPLOCK_CASES])
def test_oplock_breaks_on_open(case: OplockCase) -> None:
    st = granted(None, req("a/1", access=RW, share=case.share, oplock=case.held))
    assert st.opens["a/1"].oplock == case.held
    out = attempt(st, case.second)
    if case.notice is None:
        assert out.notices == ()
    else:
        offered = [(n.open_id, n.new_level, n.ack_required) for n in out.notices]
        assert offered == [("a/1", *case.notice)]
        assert out.notices[0].node_id == "node-a"
        assert out.notices[0].owner_data == {"conn": "a/1"}
    assert (out.result is None) == case.waits
    if case.waits:
        assert out.wait_until == NOW + TIMEOUT
        st = ack_all(out.state, out.notices)
        out = attempt(st, case.second, first=False)
        assert out.notices == ()
    assert out.result is not None and out.result.status == case.status
    if case.level is not None:
        assert out.result.oplock == case.level


def test_attribute_only_open_that_creates_may_get_batch() -> None:
    # smbtorture batch9: the stat open that creates the file gets Batch; a
    # normal open breaks it to II; a third open gets II without a break.
    st = granted(None, req("a/1", access=STAT, share=SH_ALL, oplock=OPLOCK_BATCH, created=True))
    assert st.opens["a/1"].oplock == OPLOCK_BATCH
    out, notices = open_after_acks(
        st, req("b/1", access=ALL_ACCESS, share=SH_ALL, oplock=OPLOCK_BATCH)
    )
    assert [(n.open_id, n.new_level) for n in notices] == [("a/1", OPLOCK_II)]
    assert out.result is not None and out.result.oplock == OPLOCK_II
    third = attempt(out.state, req("c/1", access=ALL_ACCESS, share=SH_ALL, oplock=OPLOCK_BATCH))
    assert third.notices == () and third.result is not None and third.result.oplock == OPLOCK_II


def test_second_evaluation_does_not_resend_a_break() -> None:
    # MS-SMB2 3.3.4.6: one notice per break; a retried open just waits.
    st = granted(None, req("a/1", oplock=OPLOCK_BATCH))
    first = attempt(st, req("b/1"))
    again = attempt(first.state, req("b/1"), first=False)
    assert len(first.notices) == 1 and again.notices == () and again.result is None


def test_close_of_breaking_open_completes_the_break() -> None:
    # smbtorture batch7: the holder closes instead of acking; the opener gets Batch.
    st = granted(None, req("a/1", share=0, oplock=OPLOCK_BATCH))
    out = attempt(st, req("b/1", share=0, oplock=OPLOCK_BATCH))
    assert out.result is None
    closed = rules.close(out.state, "a/1", now=NOW)
    assert closed.state is None  # nothing left: the record goes
    out = attempt(closed.state, req("b/1", share=0, oplock=OPLOCK_BATCH), first=False)
    assert out.result is not None and out.result.oplock == OPLOCK_BATCH


def test_break_timeout_forces_none() -> None:
    # MS-SMB2 3.3.6.1: an unacknowledged break is completed to none.
    st = granted(None, req("a/1", oplock=OPLOCK_BATCH))
    out = attempt(st, req("b/1", oplock=OPLOCK_BATCH))
    assert out.result is None and out.wait_until is not None
    late = attempt(out.state, req("b/1", oplock=OPLOCK_BATCH), first=False, now=out.wait_until)
    assert late.result is not None and late.result.oplock == OPLOCK_II
    assert late.state.opens["a/1"].oplock == OPLOCK_NONE and not late.state.opens["a/1"].breaking
    assert late.wake


# -- oplock acknowledgements: MS-SMB2 3.3.5.22.1 --------------------------------------------


def _breaking(to_none: bool) -> FileState:
    st = granted(None, req("a/1", oplock=OPLOCK_BATCH))
    return attempt(st, req("b/1", overwrite=to_none)).state


ACK_CASES = [
    ("ack to the offered II", False, OPLOCK_II, STATUS_SUCCESS, OPLOCK_II),
    ("ack below the offer", False, OPLOCK_NONE, STATUS_SUCCESS, OPLOCK_NONE),
    ("ack above a break to none", True, OPLOCK_II, STATUS_INVALID_OPLOCK_PROTOCOL, OPLOCK_NONE),
    ("ack with Exclusive", False, OPLOCK_EXCLUSIVE, STATUS_INVALID_OPLOCK_PROTOCOL, OPLOCK_NONE),
    ("ack with the lease level", False, OPLOCK_LEASE, STATUS_INVALID_PARAMETER, OPLOCK_NONE),
]


@pytest.mark.parametrize(
    ("to_none", "ack", "status", "after"), [c[1:] for c in ACK_CASES], ids=[c[0] for c in ACK_CASES]
)
def test_oplock_ack(to_none: bool, ack: int, status: int, after: int) -> None:
    out = rules.ack_oplock(_breaking(to_none), "a/1", ack, now=NOW)
    assert out.result.status == status
    assert out.state is not None
    holder = out.state.opens["a/1"]
    # Whatever the status, the break is over and waiters are woken.
    assert holder.oplock == after and not holder.breaking and out.wake


def test_ack_outside_a_break_is_invalid_device_state() -> None:
    st = granted(None, req("a/1", oplock=OPLOCK_BATCH))
    assert (
        rules.ack_oplock(st, "a/1", OPLOCK_II, now=NOW).result.status == STATUS_INVALID_DEVICE_STATE
    )
    assert rules.ack_oplock(st, "zz/9", OPLOCK_II, now=NOW).result.status == STATUS_FILE_CLOSED


def test_ack_after_level2_break_to_none_is_protocol_error() -> None:
    # smbtorture levelii500: a write breaks the writer's own II to none (no
    # ack wanted); acknowledging it anyway fails with INVALID_OPLOCK_PROTOCOL.
    st = granted(None, req("a/1", oplock=OPLOCK_II))
    assert st.opens["a/1"].oplock == OPLOCK_II
    w = rules.evaluate_operation(st, "a/1", Operation.WRITE, now=NOW, break_timeout=TIMEOUT)
    assert [(n.open_id, n.new_level, n.ack_required) for n in w.notices] == [
        ("a/1", OPLOCK_NONE, False)
    ]
    assert w.wait_until is None and w.state is not None
    out = rules.ack_oplock(w.state, "a/1", OPLOCK_NONE, now=NOW)
    assert out.result.status == STATUS_INVALID_OPLOCK_PROTOCOL


def test_narrowed_oplock_break_goes_on_to_none_after_ack() -> None:
    # MS-FSA BREAK_TO_TWO_TO_NONE (smbtorture levelii501): Exclusive breaking
    # to II, an overwrite arrives; the II ack succeeds, then II goes to none.
    st = granted(None, req("a/1", oplock=OPLOCK_EXCLUSIVE))
    out = attempt(st, req("b/1"))
    out2 = attempt(out.state, req("c/1", overwrite=True))
    assert out2.notices == () and out2.result is None
    ack = rules.ack_oplock(out2.state, "a/1", OPLOCK_II, now=NOW)
    assert ack.result.status == STATUS_SUCCESS and ack.result.level == OPLOCK_II
    assert [(n.new_level, n.ack_required) for n in ack.notices] == [(OPLOCK_NONE, False)]
    assert ack.state is not None and ack.state.opens["a/1"].oplock == OPLOCK_NONE


# -- operations: MS-FSA 2.1.4.12 WRITE / LOCK / SET_INFORMATION ---------------------------------


def test_write_breaks_level2_everywhere_without_waiting() -> None:
    # smbtorture batch6 tail: a write by one of two II holders breaks both to none.
    st = granted(None, req("a/1", oplock=OPLOCK_II), req("b/1", oplock=OPLOCK_II))
    out = rules.evaluate_operation(st, "a/1", Operation.WRITE, now=NOW, break_timeout=TIMEOUT)
    assert sorted((n.open_id, n.new_level, n.ack_required) for n in out.notices) == [
        ("a/1", OPLOCK_NONE, False),
        ("b/1", OPLOCK_NONE, False),
    ]
    assert out.wait_until is None


def test_own_batch_is_not_broken_by_own_lock() -> None:
    # smbtorture brl2: a self byte-range lock does not break a Batch oplock.
    st = granted(None, req("a/1", oplock=OPLOCK_BATCH))
    out = rules.evaluate_operation(st, "a/1", Operation.LOCK, now=NOW, break_timeout=TIMEOUT)
    assert out.notices == () and out.wait_until is None


OPERATION_LEASE_CASES = [
    # op, other lease held, notice (current, new, ack) or None, waits?
    (Operation.WRITE, "RH", ("RH", "", True), False),  # lease.lock1: RH to none, no wait
    (Operation.LOCK, "R", ("R", "", False), False),
    (Operation.SET_SIZE, "RW", ("RW", "", True), True),
    (Operation.RENAME, "RH", ("RH", "R", True), True),  # handle caching must go first
    (Operation.DELETE, "RH", ("RH", "R", True), True),
    (Operation.DELETE, "R", None, False),
]


@pytest.mark.parametrize(("op", "held", "notice", "waits"), OPERATION_LEASE_CASES)
def test_operation_breaks_other_leases(
    op: Operation, held: str, notice: tuple[str, str, bool] | None, waits: bool
) -> None:
    # The operating open's own lease is never broken (MS-FSA 2.1.4.12.2 oplock keys).
    st = granted(None, req("a/1", share=SH_ALL, lease=lreq(1, held)))
    st = granted(st, req("b/1", access=READ_ATTR, share=SH_ALL, lease=lreq(2, "RH")))
    assert lease_state(st, 1) == bits(held)
    out = rules.evaluate_operation(st, "b/1", op, now=NOW, break_timeout=TIMEOUT)
    if notice is None:
        assert out.notices == ()
    else:
        (n,) = out.notices
        assert (n.lease, n.current_state, n.new_level, n.ack_required) == (
            lkey(1),
            bits(notice[0]),
            bits(notice[1]),
            notice[2],
        )
    assert (out.wait_until is not None) == waits


def test_rename_breaks_batch_of_others_delete_does_not() -> None:
    # MS-FSA 2.1.4.12 SET_INFORMATION: rename breaks a Batch oplock to none;
    # delete-on-close breaks only handle *leases* (smbtorture exclusive2: no break).
    st = granted(None, req("a/1", share=SH_ALL, oplock=OPLOCK_BATCH))
    st = granted(st, req("b/1", access=READ_ATTR, share=SH_ALL))
    delete = rules.evaluate_operation(st, "b/1", Operation.DELETE, now=NOW, break_timeout=TIMEOUT)
    assert delete.notices == ()
    rename = rules.evaluate_operation(st, "b/1", Operation.RENAME, now=NOW, break_timeout=TIMEOUT)
    assert [(n.open_id, n.new_level, n.ack_required) for n in rename.notices] == [
        ("a/1", OPLOCK_NONE, True)
    ]
    assert rename.wait_until is not None


# -- leases: MS-SMB2 3.3.4.7 / 3.3.5.9.8, smbtorture smb2.lease --------------------------------

# smbtorture lease.c break_results: held, requested by another key, held broken to, granted.
BREAK_RESULTS = table("""
    R    R    R   R
    R    RH   R   RH
    R    RW   R   R
    R    RHW  R   RH
    RH   R    RH  R
    RH   RH   RH  RH
    RH   RW   RH  R
    RH   RHW  RH  RH
    RW   R    R   R
    RW   RH   R   RH
    RW   RW   R   R
    RW   RHW  R   RH
    RHW  R    RH  R
    RHW  RH   RH  RH
    RHW  RW   RH  R
    RHW  RHW  RH  RH
""")


@pytest.mark.parametrize(("held", "contend", "broken_to", "grant"), BREAK_RESULTS)
def test_lease_break_results(held: str, contend: str, broken_to: str, grant: str) -> None:
    st = granted(None, req("a/1", lease=lreq(1, held, version=2, epoch=7)))
    assert lease_state(st, 1) == bits(held)
    out, notices = open_after_acks(st, req("b/1", lease=lreq(2, contend)))
    assert out.result is not None and out.result.status == STATUS_SUCCESS
    assert out.result.oplock == OPLOCK_LEASE and out.result.lease_state == bits(grant)
    if held == broken_to:
        assert notices == ()
    else:
        (n,) = notices
        assert (n.current_state, n.new_level, n.ack_required) == (bits(held), bits(broken_to), True)
        assert n.epoch == 7 + 2 and n.version == 2  # +1 for the grant, +1 for the break
    assert lease_state(out.state, 1) == bits(broken_to)
    # Upgrading the broken lease afterwards changes nothing and breaks nothing.
    again = attempt(out.state, req("a/2", lease=lreq(1, "RHW")))
    assert again.notices == () and again.result is not None
    assert again.result.lease_state == bits(broken_to)


# smbtorture lease.c oplock_results: a lease held, an oplock requested.
LEASE_VS_OPLOCK = table("""
    R    s  R   s
    R    x  R   s
    R    b  R   s
    RH   s  RH  -
    RH   x  RH  -
    RH   b  RH  -
    RW   s  R   s
    RW   x  R   s
    RW   b  R   s
    RHW  s  RH  -
    RHW  x  RH  -
    RHW  b  RH  -
""")


@pytest.mark.parametrize(("held", "contend", "broken_to", "grant"), LEASE_VS_OPLOCK)
def test_lease_held_oplock_requested(held: str, contend: str, broken_to: str, grant: str) -> None:
    st = granted(None, req("a/1", lease=lreq(1, held)))
    out, _ = open_after_acks(st, req("b/1", oplock=OPLOCKS[contend]))
    assert out.result is not None and out.result.oplock == OPLOCKS[grant]
    assert lease_state(out.state, 1) == bits(broken_to)


# smbtorture lease.c oplock_results_2: an oplock held, a lease requested.
OPLOCK_VS_LEASE = table("""
    s  R    s  R
    s  RH   s  R
    s  RW   s  R
    s  RHW  s  R
    x  R    s  R
    x  RH   s  R
    x  RW   s  R
    x  RHW  s  R
    b  R    s  R
    b  RH   s  R
    b  RW   s  R
    b  RHW  s  R
""")


@pytest.mark.parametrize(("held", "contend", "broken_to", "grant"), OPLOCK_VS_LEASE)
def test_oplock_held_lease_requested(held: str, contend: str, broken_to: str, grant: str) -> None:
    st = granted(None, req("a/1", oplock=OPLOCKS[held]))
    out, _ = open_after_acks(st, req("b/1", lease=lreq(1, contend)))
    assert out.result is not None and out.result.lease_state == bits(grant)
    assert out.state.opens["a/1"].oplock == OPLOCKS[broken_to]


# smbtorture lease.c upgrade2: same key, uncontended.
UPGRADE2 = table("""
    -    -    -
    -    R    R
    -    RH   RH
    -    RW   RW
    -    RWH  RWH
    R    -    R
    R    R    R
    R    RH   RH
    R    RW   RW
    R    RWH  RWH
    RH   -    RH
    RH   R    RH
    RH   RH   RH
    RH   RW   RH
    RH   RWH  RWH
    RW   -    RW
    RW   R    RW
    RW   RH   RW
    RW   RW   RW
    RW   RWH  RWH
    RWH  -    RWH
    RWH  R    RWH
    RWH  RH   RWH
    RWH  RW   RWH
    RWH  RWH  RWH
""")


@pytest.mark.parametrize(("initial", "upgrade", "expected"), UPGRADE2)
def test_lease_upgrade_uncontended(initial: str, upgrade: str, expected: str) -> None:
    st = granted(None, req("a/1", lease=lreq(1, initial, version=2, epoch=3)))
    out = attempt(st, req("a/2", lease=lreq(1, upgrade)))
    assert out.notices == () and out.result is not None
    assert out.result.lease_state == bits(expected)
    first_epoch = 3 + (1 if initial else 0)
    changed = bits(expected) != bits(initial)
    assert out.result.lease_epoch == first_epoch + (1 if changed else 0)


# smbtorture lease.c upgrade3: two keys held, key 1 tries to upgrade, nothing breaks.
UPGRADE3 = table("""
    R   R   -    R
    R   R   R    R
    R   R   RW   R
    R   R   RH   RH
    R   R   RHW  R
    R   RH  -    R
    R   RH  R    R
    R   RH  RW   R
    R   RH  RH   RH
    R   RH  RHW  R
    RH  R   -    RH
    RH  R   R    RH
    RH  R   RW   RH
    RH  R   RH   RH
    RH  R   RHW  RH
    RH  RH  -    RH
    RH  RH  R    RH
    RH  RH  RW   RH
    RH  RH  RH   RH
    RH  RH  RHW  RH
""")


@pytest.mark.parametrize(("held1", "held2", "upgrade", "expected"), UPGRADE3)
def test_lease_upgrade_contended(held1: str, held2: str, upgrade: str, expected: str) -> None:
    st = granted(None, req("a/1", lease=lreq(1, held1)), req("b/1", lease=lreq(2, held2)))
    out = attempt(st, req("a/2", lease=lreq(1, upgrade)))
    assert out.notices == () and out.result is not None
    assert out.result.lease_state == bits(expected)
    assert lease_state(out.state, 2) == bits(held2)


@pytest.mark.parametrize(
    ("requested", "granted_state"),
    [("H", ""), ("W", ""), ("HW", ""), ("RHW", "RHW")],  # smbtorture lease.request
)
def test_only_valid_lease_states_are_granted(requested: str, granted_state: str) -> None:
    out = attempt(None, req("a/1", lease=lreq(1, requested)))
    assert out.result is not None and out.result.oplock == OPLOCK_LEASE
    assert out.result.lease_state == bits(granted_state)


def test_lease_stat_open_breaks_no_lease() -> None:
    # smbtorture lease.statopen4: READ_CONTROL / attribute opens keep RWH intact.
    st = granted(None, req("a/1", share=SH_ALL, lease=lreq(1, "RWH")))
    for access in (READ_ATTR, WRITE_ATTR, READ_CONTROL):
        out = attempt(st, req("b/1", access=access, share=SH_ALL))
        assert out.notices == () and out.result is not None
    out = attempt(st, req("b/1", access=DELETE, share=SH_ALL))
    assert len(out.notices) == 1


def test_lease_ack_rules() -> None:
    # smbtorture lease.breaking1 (MS-SMB2 3.3.5.22.2).
    st = granted(None, req("a/1", share=SH_ALL, lease=lreq(1, "RWH")))
    out = attempt(st, req("b/1", share=SH_ALL, overwrite=True))
    (n,) = out.notices
    assert (n.current_state, n.new_level, n.ack_required) == (bits("RWH"), 0, True)
    lid = lease_id(lkey(1))
    # The same key opens while the break runs: current state, BREAK_IN_PROGRESS.
    same = attempt(out.state, req("a/2", share=SH_ALL, lease=lreq(1, "RWH")))
    assert same.result is not None
    assert (same.result.lease_state, same.result.lease_flags) == (
        bits("RWH"),
        LEASE_FLAG_BREAK_IN_PROGRESS,
    )
    for wrong in ("RWH", "RW", "WH", "RH", "W", "H", "R"):
        bad = rules.ack_lease(out.state, lid, bits(wrong), now=NOW, break_timeout=TIMEOUT)
        assert bad.result.status == STATUS_REQUEST_NOT_ACCEPTED
    ok = rules.ack_lease(out.state, lid, 0, now=NOW, break_timeout=TIMEOUT)
    assert ok.result.status == STATUS_SUCCESS and ok.result.level == 0 and ok.notices == ()
    assert ok.state is not None
    again = rules.ack_lease(ok.state, lid, 0, now=NOW, break_timeout=TIMEOUT)
    assert again.result.status == STATUS_UNSUCCESSFUL
    unknown = rules.ack_lease(ok.state, lease_id(lkey(9)), 0, now=NOW, break_timeout=TIMEOUT)
    assert unknown.result.status == STATUS_OBJECT_NAME_NOT_FOUND
    granted_after = attempt(ok.state, req("b/1", share=SH_ALL, overwrite=True), first=False)
    assert granted_after.result is not None and granted_after.result.status == STATUS_SUCCESS


def test_lease_break_steps_while_narrowed() -> None:
    # smbtorture lease.v2_breaking3: RWH breaking to RH, an overwrite narrows the
    # target to none silently; the RH ack brings RH -> R (ack, same epoch), the R
    # ack brings R -> none (no ack); only then do both opens proceed.
    st = granted(None, req("a/1", share=SH_ALL, lease=lreq(1, "RWH", version=2, epoch=0x11)))
    lid = lease_id(lkey(1))
    out2 = attempt(st, req("b/1", share=SH_ALL))
    (n,) = out2.notices
    assert (n.current_state, n.new_level, n.epoch) == (bits("RWH"), bits("RH"), 0x13)
    out3 = attempt(out2.state, req("c/1", share=SH_ALL, overwrite=True))
    assert out3.notices == () and out3.result is None
    ack1 = rules.ack_lease(out3.state, lid, bits("RH"), now=NOW, break_timeout=TIMEOUT)
    assert ack1.result.status == STATUS_SUCCESS and ack1.result.level == bits("RH")
    (step,) = ack1.notices
    assert (step.current_state, step.new_level, step.ack_required, step.epoch) == (
        bits("RH"),
        bits("R"),
        True,
        0x13,
    )
    assert ack1.state is not None
    for r in (req("b/1", share=SH_ALL), req("c/1", share=SH_ALL, overwrite=True)):
        assert attempt(ack1.state, r, first=False).result is None  # still breaking: wait
    ack2 = rules.ack_lease(ack1.state, lid, bits("R"), now=NOW, break_timeout=TIMEOUT)
    (last,) = ack2.notices
    assert (last.current_state, last.new_level, last.ack_required) == (bits("R"), 0, False)
    assert ack2.state is not None and lease_state(ack2.state, 1) == 0
    st = granted(ack2.state, req("b/1", share=SH_ALL), req("c/1", share=SH_ALL, overwrite=True))


def test_lease_break_timeout_forces_none() -> None:
    st = granted(None, req("a/1", lease=lreq(1, "RWH")))
    out = attempt(st, req("b/1"))
    assert out.result is None and out.wait_until is not None
    late = attempt(out.state, req("b/1"), first=False, now=out.wait_until + 0.001)
    assert late.result is not None and lease_state(late.state, 1) == 0


def test_lease_shared_by_opens_is_dropped_with_the_last() -> None:
    st = granted(None, req("a/1", lease=lreq(1, "RH")), req("a/2", lease=lreq(1, "RH")))
    lid = lease_id(lkey(1))
    one = rules.close(st, "a/1", now=NOW)
    assert one.dropped_leases == () and one.state is not None and lid in one.state.leases
    two = rules.close(one.state, "a/2", now=NOW)
    assert two.dropped_leases == (lid,) and two.state is None


def test_byte_range_locks_stop_shared_caching() -> None:
    # MS-FSA 2.1.5.17 / smbtorture lease.lock1-3: no R/H grant beside a lock
    # inside the file, unless the open overwrites or the lock lies past EOF.
    st = rules.lock(
        granted(None, req("a/1", share=SH_ALL)),
        "a/1",
        [RangeSpec(0, 1, True)],
        wait=False,
        waiter_id="w",
    ).state
    assert st is not None

    def lease_granted(**kw: Any) -> int:
        out = attempt(st, req("b/1", share=SH_ALL, lease=lreq(2, "RH"), **kw))
        assert out.result is not None
        return out.result.lease_state

    assert lease_granted() == 0
    assert lease_granted(file_size=0) == bits("RH")
    assert lease_granted(overwrite=True) == bits("RH")


def test_directories_get_no_caching() -> None:
    out = attempt(None, req("a/1", access=READ, oplock=OPLOCK_BATCH, directory=True))
    assert out.result is not None and out.result.oplock == OPLOCK_NONE
    # smbtorture lease.request: a directory open with a lease gets oplock none.
    out = attempt(None, req("a/1", access=READ, lease=lreq(1, "RWH"), directory=True))
    assert out.result is not None and out.result.oplock == OPLOCK_NONE
    assert out.state.leases == {}


@pytest.mark.parametrize(("first", "second"), [(2, 1), (1, 2)])
def test_lease_keeps_its_version(first: int, second: int) -> None:
    # smbtorture lease.v2_epoch2/v2_epoch3: the lease answers in its own version.
    st = granted(None, req("a/1", lease=lreq(1, "R", version=first, epoch=0x4711)))
    out = attempt(st, req("a/2", lease=lreq(1, "RH", version=second)))
    assert out.result is not None and out.result.lease_version == first
    assert out.result.lease_state == bits("RH")


# -- byte ranges: MS-FSA 2.1.4.10 / 2.1.5.8, smbtorture smb2.lock ------------------------------

OVERLAP_CASES = [
    ((0, 10), (5, 10), True),
    ((0, 10), (10, 5), False),  # adjacent
    ((5, 0), (0, 10), True),  # zero-length inside a range conflicts (lock.errorcode)
    ((5, 0), (5, 5), False),  # ... but not at its first byte
    ((5, 0), (0, 5), False),  # ... nor just past its end
    ((0, 0), (0, 10), False),  # the empty range at 0 overlaps nothing
    ((5, 0), (5, 0), False),
    ((2**64 - 1, 1), (2**64 - 10, 20), True),  # an invalid range reaches the end
]


@pytest.mark.parametrize(("a", "b", "expected"), OVERLAP_CASES)
def test_range_overlap(a: tuple[int, int], b: tuple[int, int], expected: bool) -> None:
    assert overlap(*a, *b) is expected
    assert overlap(*b, *a) is expected


def test_range_validity() -> None:
    assert range_valid(2**64 - 1, 1) and range_valid(2**64 - 1, 0)
    assert not range_valid(2**64 - 1, 2)  # lock.c "max/2 lock"
    assert not range_valid(2**64 - 1, 2**64 - 1)


def _locked(*opens: str) -> FileState:
    return granted(None, *(req(o, share=SH_ALL) for o in opens))


def _lock(
    st: FileState, oid: str, *ranges: tuple[int, int, bool], wait: bool = False, wid: str = "w"
) -> rules.LockOutcome:
    return rules.lock(st, oid, [RangeSpec(*r) for r in ranges], wait=wait, waiter_id=wid)


LOCK_CASES = [
    # held by a/1, requested by (open, range), status
    ((100, 10, True), ("a/1", (100, 10, True)), STATUS_LOCK_NOT_GRANTED),  # errorcode: same handle
    (
        (100, 10, True),
        ("b/1", (100, 10, True)),
        STATUS_LOCK_NOT_GRANTED,
    ),  # never FILE_LOCK_CONFLICT in SMB2
    ((100, 10, True), ("b/1", (102, 0, True)), STATUS_LOCK_NOT_GRANTED),  # zero-length inside
    ((100, 10, True), ("a/1", (102, 5, False)), STATUS_SUCCESS),  # shared stacks on own exclusive
    ((100, 10, True), ("b/1", (102, 5, False)), STATUS_LOCK_NOT_GRANTED),
    ((100, 10, False), ("b/1", (100, 10, False)), STATUS_SUCCESS),  # shared + shared
    (
        (100, 10, False),
        ("a/1", (100, 10, True)),
        STATUS_LOCK_NOT_GRANTED,
    ),  # own shared blocks own excl
    ((100, 10, True), ("b/1", (110, 10, True)), STATUS_SUCCESS),
]


@pytest.mark.parametrize(("held", "request_", "status"), LOCK_CASES)
def test_lock_conflicts(
    held: tuple[int, int, bool], request_: tuple[str, tuple[int, int, bool]], status: int
) -> None:
    st = _lock(_locked("a/1", "b/1"), "a/1", held).state
    assert st is not None
    oid, rng = request_
    out = _lock(st, oid, rng)
    assert out.status == status
    assert out.state is not None and len(out.state.locks) == (2 if status == STATUS_SUCCESS else 1)


def test_multi_element_lock_is_all_or_nothing() -> None:
    st = _lock(_locked("a/1", "b/1"), "a/1", (50, 10, True)).state
    assert st is not None
    out = _lock(st, "b/1", (0, 10, True), (20, 10, True), (55, 1, True))
    assert (
        out.status == STATUS_LOCK_NOT_GRANTED
        and out.state is not None
        and len(out.state.locks) == 1
    )
    # Elements of one request conflict with each other too.
    assert _lock(st, "b/1", (0, 10, True), (5, 1, True)).status == STATUS_LOCK_NOT_GRANTED
    assert _lock(st, "b/1", (0, 10, True), (20, 10, True)).status == STATUS_SUCCESS


def test_invalid_lock_range_and_unknown_open() -> None:
    st = _locked("a/1")
    assert _lock(st, "a/1", (2**64 - 1, 2, True)).status == STATUS_INVALID_LOCK_RANGE
    assert _lock(st, "zz/1", (0, 1, True)).status == STATUS_FILE_CLOSED


def test_unlock_needs_the_exact_range() -> None:
    st = _lock(_locked("a/1", "b/1"), "a/1", (10, 10, True), (30, 5, False)).state
    assert st is not None
    for oid, rng in (("a/1", (10, 5)), ("a/1", (10, 11)), ("b/1", (10, 10))):
        assert rules.unlock(st, oid, [RangeSpec(*rng, True)]).status == STATUS_RANGE_NOT_LOCKED
    # Elements are processed in order; the first miss stops (earlier ones stay unlocked).
    out = rules.unlock(
        st, "a/1", [RangeSpec(10, 10, True), RangeSpec(99, 1, True), RangeSpec(30, 5, False)]
    )
    assert out.status == STATUS_RANGE_NOT_LOCKED
    assert out.state is not None and [(x.offset, x.length) for x in out.state.locks] == [(30, 5)]


# smbtorture lock.rw-shared / rw-exclusive: a/1 locks [100, 110); who may read/write?
IO_CASES = [
    (exclusive == "excl", oid, op == "write", allowed == "ok")
    for exclusive, oid, op, allowed in table("""
        shared  a/1  read   ok
        shared  a/1  write  conflict
        shared  b/1  read   ok
        shared  b/1  write  conflict
        excl    a/1  read   ok
        excl    a/1  write  ok
        excl    b/1  read   conflict
        excl    b/1  write  conflict
    """)
]


@pytest.mark.parametrize(("exclusive", "oid", "write", "allowed"), IO_CASES)
def test_check_io(exclusive: bool, oid: str, write: bool, allowed: bool) -> None:
    st = _lock(_locked("a/1", "b/1"), "a/1", (100, 10, exclusive)).state
    assert rules.check_io(st, oid, 105, 10, write) is allowed
    assert rules.check_io(st, oid, 110, 10, write) is True


def test_blocking_waiters_are_granted_fifo_one_at_a_time() -> None:
    # Three waiters for the same bytes: each release grants exactly the oldest.
    st = _lock(_locked("a/1", "b/1", "c/1", "d/1"), "a/1", (0, 10, True)).state
    assert st is not None
    for oid in ("b/1", "c/1", "d/1"):
        out = _lock(st, oid, (0, 10, True), wait=True, wid=oid)
        assert out.status is None and out.state is not None
        st = out.state
    holder = "a/1"
    for expected in ("b/1", "c/1", "d/1"):
        out = rules.unlock(st, holder, [RangeSpec(0, 10, True)])
        assert out.finished_waiters == (expected,)
        assert out.state is not None
        collected = rules.collect_waiter(out.state, expected)
        assert collected.status == STATUS_SUCCESS and collected.state is not None
        st = collected.state
        holder = expected


def test_new_blocking_request_queues_behind_an_earlier_waiter() -> None:
    st = _lock(_locked("a/1", "b/1", "c/1"), "a/1", (0, 10, True)).state
    assert st is not None
    st = _lock(st, "b/1", (5, 10, True), wait=True, wid="b").state  # waits on a/1
    assert st is not None
    # [12, 14) is free but overlaps b's request: FIFO says c waits too...
    queued = _lock(st, "c/1", (12, 2, True), wait=True, wid="c")
    assert queued.status is None
    # ...while a fail-immediately request only looks at granted locks.
    assert _lock(st, "c/1", (12, 2, True)).status == STATUS_SUCCESS


def test_cancel_and_close_remove_waiters() -> None:
    st = _lock(_locked("a/1", "b/1", "c/1"), "a/1", (0, 10, True)).state
    assert st is not None
    st = _lock(st, "b/1", (0, 10, True), wait=True, wid="b").state
    assert st is not None
    st = _lock(st, "c/1", (0, 10, True), wait=True, wid="c").state
    assert st is not None
    cancelled = rules.cancel_waiter(st, "b")
    assert cancelled.state is not None and [w.waiter_id for w in cancelled.state.waiters] == ["c"]
    # A closed open's pending lock fails with RANGE_NOT_LOCKED (lock.cancel-tdis).
    closed = rules.close(cancelled.state, "c/1", now=NOW)
    assert closed.finished_waiters == ("c",)
    assert rules.collect_waiter(closed.state, "c").status == STATUS_RANGE_NOT_LOCKED
    # Closing the holder grants the next waiter.
    st = _lock(st, "c/1", (50, 1, True)).state
    done = rules.close(st, "a/1", now=NOW)
    assert done.finished_waiters == ("b",)


def test_cancel_after_grant_gives_the_locks_back() -> None:
    st = _lock(_locked("a/1", "b/1", "c/1"), "a/1", (0, 10, True)).state
    assert st is not None
    for oid, wid in (("b/1", "b"), ("c/1", "c")):
        queued = _lock(st, oid, (0, 10, True), wait=True, wid=wid).state
        assert queued is not None
        st = queued
    released = rules.unlock(st, "a/1", [RangeSpec(0, 10, True)]).state  # grants b
    out = rules.cancel_waiter(released, "b")  # ...whose client had cancelled meanwhile
    assert out.finished_waiters == ("c",)
    assert out.state is not None and [x.open_id for x in out.state.locks] == ["c/1"]


# -- invariants over random operation sequences (hypothesis) ------------------------------------

ACCESSES = [READ, WRITE, RW, READ_ATTR, DELETE, READ_CONTROL, RW | DELETE]
SHARES = [0, SH_R, SH_RW, SH_ALL]
REQUESTS = ["", "s", "x", "b", "R", "RH", "RW", "RWH"]


@dataclass(frozen=True)
class DoOpen:
    handle: int
    access: int
    share: int
    want: str  # "", an oplock letter, or a lease state
    overwrite: bool


@dataclass(frozen=True)
class DoClose:
    handle: int


@dataclass(frozen=True)
class DoOperation:
    handle: int
    op: Operation


@dataclass(frozen=True)
class DoLock:
    handle: int
    offset: int
    length: int
    exclusive: bool


@dataclass(frozen=True)
class Tick:
    """Time passes beyond every break deadline."""


HANDLE = st.integers(0, 4)
STEP = st.one_of(
    st.builds(
        DoOpen,
        HANDLE,
        st.sampled_from(ACCESSES),
        st.sampled_from(SHARES),
        st.sampled_from(REQUESTS),
        st.booleans(),
    ),
    st.builds(DoClose, HANDLE),
    st.builds(DoOperation, HANDLE, st.sampled_from(list(Operation))),
    st.builds(DoLock, HANDLE, st.integers(0, 6), st.integers(0, 4), st.booleans()),
    st.builds(Tick),
)


def _step(state: FileState | None, step: object, now: float) -> FileState | None:
    if isinstance(step, DoOpen):
        lease = lreq(step.handle % 3, step.want) if step.want[:1] == "R" else None
        r = req(
            f"{step.handle}/1",
            access=step.access,
            share=step.share,
            oplock=OPLOCKS.get(step.want, OPLOCK_NONE),
            lease=lease,
            overwrite=step.overwrite,
        )
        if state is not None and r.open_id in state.opens:
            return state
        return rules.evaluate_open(
            state, r, now=now, break_timeout=TIMEOUT, first_attempt=True
        ).state
    if isinstance(step, DoClose):
        return rules.close(state, f"{step.handle}/1", now=now).state
    if isinstance(step, DoOperation):
        oid = f"{step.handle}/1"
        return rules.evaluate_operation(state, oid, step.op, now=now, break_timeout=TIMEOUT).state
    if isinstance(step, DoLock):
        rng = [RangeSpec(step.offset, step.length, step.exclusive)]
        return rules.lock(state, f"{step.handle}/1", rng, wait=False, waiter_id="w").state
    return state


@settings(max_examples=150, deadline=None, database=None)
@given(st.lists(STEP, max_size=25))
def test_rules_keep_invariants(steps: list[object]) -> None:
    """Whatever happens, and whether or not clients ack, no state breaks the rules."""
    state: FileState | None = None
    now = NOW
    for step in steps:
        if isinstance(step, Tick):
            now += TIMEOUT + 1
        state = _step(state, step, now)
        if state is None:
            continue
        assert rules.invariant_violations(state) == []
        # Acknowledging whatever is pending must keep it so.
        for o in list(state.opens.values()):
            if o.breaking:
                state = rules.ack_oplock(state, o.open_id, o.break_to, now=now).state or state
        for lease in list(state.leases.values()):
            if lease.breaking:
                acked = rules.ack_lease(
                    state, lease.lease_id, lease.break_to, now=now, break_timeout=TIMEOUT
                )
                state = acked.state or state
        assert rules.invariant_violations(state) == []


def test_state_plain_form_round_trips_and_is_independent() -> None:
    """to_dict/clone keep every field and share no mutable part with the original."""
    import dataclasses

    from oplock_bus.model import (
        ByteRangeLock,
        FileState,
        LeaseEntry,
        LockWaiter,
        OpenEntry,
        RangeSpec,
    )

    st = FileState(file="f:1", version=3, next_seq=2, delete_pending=True)
    st.opens["n/1"] = OpenEntry("n/1", "n", 1, 7, 0, owner_data={"c": 1})
    st.leases["g:k"] = LeaseEntry("g:k", "00", "11", 7, 2, 2, opens=["n/1"])
    st.locks.append(ByteRangeLock("n/1", 0, 10, True))
    st.waiters.append(LockWaiter("w1", "n/1", [RangeSpec(5, 1, False)]))
    st.pending["n/2"] = request_to_dict(req("n/2", lease=lreq(2, "RH", version=2, epoch=4)))
    st.opens["n/1"].result = [0, 1, 0, 0, 0, 0]
    assert st.to_dict() == dataclasses.asdict(st)
    twin = st.clone()
    assert twin == st
    twin.opens["n/1"].owner_data["c"] = 2
    twin.leases["g:k"].opens.append("n/2")
    twin.waiters[0].ranges[0].offset = 9
    assert st.opens["n/1"].owner_data == {"c": 1}
    assert st.leases["g:k"].opens == ["n/1"]
    assert st.waiters[0].ranges[0].offset == 5


# -- waiting opens, granted by whoever unblocks them -------------------------------------------


@pytest.mark.parametrize(
    "r",
    [
        req("a/1"),
        req("a/2", lease=lreq(3, "RWH", version=2, epoch=7), overwrite=True, file_size=9),
        req("a/3", access=READ_ATTR, directory=True, created=True),
    ],
)
def test_a_waiting_request_round_trips(r: OpenRequest) -> None:
    import json

    assert request_from_dict(json.loads(json.dumps(request_to_dict(r)))) == r


def test_an_ack_grants_waiting_opens_in_order_and_stops_at_one_that_cannot_go() -> None:
    st = granted(None, req("a/1", share=SH_RW, oplock=OPLOCK_BATCH))
    waits = []
    for r in (req("b/1", share=SH_RW), req("c/1", access=DELETE, share=SH_ALL), req("d/1")):
        out = rules.evaluate_waiting_open(st, r, now=NOW, break_timeout=TIMEOUT, first_attempt=True)
        st = out.state
        waits.append(out.result)
    assert waits == [None, None, None] and list(st.pending) == ["b/1", "c/1", "d/1"]
    acked = rules.ack_oplock(st, "a/1", OPLOCK_II, now=NOW).state
    assert acked is not None
    st, admitted = rules.admit_waiting(acked, now=NOW, break_timeout=TIMEOUT)
    # b goes in; c (delete access, while a and b do not share delete) would
    # be refused, so it stops there: d waits behind it, and each of them
    # evaluates again itself.
    assert admitted == ["b/1"] and list(st.pending) == ["c/1", "d/1"]
    result = st.opens["b/1"].result
    assert result is not None
    assert result_from_list(result).status == STATUS_SUCCESS
    assert acked.pending.keys() == {"b/1", "c/1", "d/1"}  # the input is left alone
    again = rules.evaluate_waiting_open(
        st, req("b/1", share=SH_RW), now=NOW, break_timeout=TIMEOUT, first_attempt=False
    )
    assert again.state is st and again.result == result_from_list(result)
    refused = rules.evaluate_waiting_open(
        st, req("c/1", access=DELETE, share=SH_ALL), now=NOW, break_timeout=TIMEOUT,
        first_attempt=False,
    )  # fmt: skip
    assert refused.result is not None and refused.result.status == STATUS_SHARING_VIOLATION
    assert list(refused.state.pending) == ["d/1"]
    gone = rules.close(refused.state, "d/1", now=NOW)
    assert gone.state is not None and gone.state.pending == {}
