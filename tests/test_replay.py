"""Replayed requests (gateway.smb.replay): the ChannelSequence rule and the
CreateGuid cache, on their own; and smbtorture's replay of a persistent handle
waiting on the bus. The whole smb2.replay suite (tests/test_torture.py, 35 of
56 on a plain share, as one smbd) runs them with a real client.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.protocol.constants import Command, Dialect, NtStatusError, Status
from gateway.smb.replay import ReplayCache, used
from gateway.smb.state import Open

from .conftest import start_gateway
from .test_torture import NODE_ARGS, run_suite

GUID_A, GUID_B = b"A" * 16, b"B" * 16


def _open(tmp_path: Path, persistent: bool = False) -> Open:
    # Only the fields the replay rules read; no tree is looked at.
    return Open(
        persistent_id=1, volatile_id=1, tree=None,  # type: ignore[arg-type]
        smb_name="f", host_path=str(tmp_path / "f"), is_dir=False, access=0,
        share_access=0, create_options=0, persistent=persistent,
    )  # fmt: skip


# smbtorture smb2.replay.channel-sequence's table: (ChannelSequence, accepted),
# in order, for WRITE, SET_INFO and IOCTL, with or without the replay flag.
TABLE = [
    (0, True), (0x8000, False), (0x8001, False), (0xC000, False), (0xFFFF, False),
    (0x7FFF, True), (0x7FFE, False), (0, False), (0x1234, False), (0x8000, True),
    (0xFFFF, True), (0, True), (1, True), (0, False), (1, True), (0xFFFF, False),
]  # fmt: skip


@pytest.mark.parametrize("command", [Command.WRITE, Command.SET_INFO, Command.IOCTL])
def test_a_request_from_before_a_channel_change_is_refused(
    tmp_path: Path, command: Command
) -> None:
    cache, op = ReplayCache(), _open(tmp_path)
    for sequence, accepted in TABLE:
        try:
            used(cache, op, command, sequence, Dialect.SMB3_1_1)
            got = True
        except NtStatusError as e:
            assert e.status == Status.FILE_NOT_AVAILABLE
            got = False
        assert got == accepted, (hex(sequence), accepted)


def test_other_commands_move_the_sequence_but_are_never_refused(tmp_path: Path) -> None:
    cache, op = ReplayCache(), _open(tmp_path)
    for sequence in (30000, 60000, 0, 0x8000):  # smb2.replay.replay7's GETINFOs, and one more
        used(cache, op, Command.QUERY_INFO, sequence, Dialect.SMB3_1_1)
    assert op.channel_sequence == 0  # 0x8000 was too far ahead to be taken
    with pytest.raises(NtStatusError):
        used(cache, op, Command.WRITE, 0x8000, Dialect.SMB3_1_1)


def test_before_smb3_the_sequence_is_not_looked_at(tmp_path: Path) -> None:
    cache, op = ReplayCache(), _open(tmp_path)
    used(cache, op, Command.WRITE, 0x8000, Dialect.SMB2_1)
    assert op.channel_sequence == 0


def test_a_create_is_replayable_until_its_open_is_used(tmp_path: Path) -> None:
    cache, op = ReplayCache(), _open(tmp_path)
    key = ReplayCache.key(GUID_A, GUID_B)
    assert key is not None
    assert cache.lookup(key) == (False, None)
    cache.begin(key)
    assert cache.lookup(key) == (True, None)  # still running: a replay must wait
    cache.made(key, op)
    assert cache.lookup(key) == (True, op)
    used(cache, op, Command.READ, 0, Dialect.SMB3_1_1)
    assert cache.lookup(key) == (False, None)  # a replay now opens anew


def test_a_persistent_open_stays_replayable_and_a_closed_one_does_not(tmp_path: Path) -> None:
    cache, op = ReplayCache(), _open(tmp_path, persistent=True)
    key = ReplayCache.key(GUID_A, GUID_B)
    assert key is not None
    cache.begin(key)
    cache.made(key, op)
    used(cache, op, Command.WRITE, 0, Dialect.SMB3_1_1)
    assert cache.lookup(key) == (True, op)
    op.closed = True
    assert cache.lookup(key) == (False, None)


def test_a_failed_create_leaves_nothing_and_a_zero_guid_is_not_cached() -> None:
    cache = ReplayCache()
    key = ReplayCache.key(GUID_A, GUID_B)
    assert key is not None
    cache.begin(key)
    cache.abandon(key)
    assert cache.lookup(key) == (False, None)
    assert ReplayCache.key(GUID_A, bytes(16)) is None


@pytest.mark.torture
def test_a_persistent_handle_is_replayed_after_its_connection_dropped(tmp_path: Path) -> None:
    """smbtorture smb2.replay.replay5 on a CA share (smbd skips it, having none):
    a persistent open's connection drops; on a new connection a CREATE with its
    CreateGuid is DUPLICATE_OBJECTID, its replay gets the open back from the bus."""
    node = start_gateway(tmp_path / "gw", extra=[*NODE_ARGS, "--ca"])
    try:
        results = run_suite([node.host], node.port, "smb2.replay.replay5", tmp_path / "out")
    finally:
        assert node.stop() == 0
    assert results == {"smb2.replay.replay5": "success"}, node.log()[-3000:]
    assert "Traceback" not in node.log()
