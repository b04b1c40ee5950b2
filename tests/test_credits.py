"""The command sequence window (gateway.protocol.credits), without a socket."""

from __future__ import annotations

import pytest

from gateway.protocol.credits import CreditWindow, SequenceError, check_payload


def test_ids_are_spent_once_in_any_order() -> None:
    w = CreditWindow(max_credits=64)
    w.consume(0, 1)  # NEGOTIATE
    assert w.grant(10) == 10 and (w.low, w.high) == (1, 11)
    w.consume(5, 2)  # out of order, a 2-credit request
    w.consume(1, 1)
    assert w.outstanding == 7
    with pytest.raises(SequenceError):
        w.consume(6, 1)  # used by the 2-credit request
    with pytest.raises(SequenceError):
        w.consume(1, 1)  # a replay
    for i in (2, 3, 4):
        w.consume(i, 1)
    assert w.low == 7 and not w.used  # the window closed up behind them
    with pytest.raises(SequenceError):
        w.consume(10, 2)  # runs past what was granted
    with pytest.raises(SequenceError):
        w.consume(10**15, 1)


def test_grants_stay_within_max_credits_and_never_leave_zero() -> None:
    w = CreditWindow(max_credits=8)
    w.consume(0, 1)
    assert w.grant(100) == 8
    assert w.grant(5) == 0  # holding 8 already
    for i in range(1, 9):
        w.consume(i, 1)
    assert w.outstanding == 0 and w.grant(0) == 1  # asked for none, still one


def test_payload_costs_a_credit_per_64k() -> None:
    assert check_payload(65536, 0, True) and check_payload(65536, 1, True)
    assert not check_payload(65537, 1, True) and check_payload(65537, 2, True)
    assert not check_payload(8 << 20, 127, True) and check_payload(8 << 20, 128, True)
    assert not check_payload(65537, 2, False)  # 2.0.2: single credit only
