"""Replayed requests (MS-SMB2 3.3.5.2.10, 3.3.5.9.10).

A client that lost a channel, or got no answer, sends a request again with
SMB2_FLAGS_REPLAY_OPERATION, on another channel of the session or later on
the same one. Two things keep a replay from acting twice:

- **CreateGuid.** A CREATE with a DH2Q names itself by (ClientGuid,
  CreateGuid). While it runs, a replay of it is refused with
  STATUS_FILE_NOT_AVAILABLE (the client tries again); once it made an open,
  a replay gets that open back, answered as the first time, and a new
  CREATE (no replay flag) naming it is STATUS_DUPLICATE_OBJECTID. Any other
  request on a non-persistent open ends that: a replay then opens anew.
- **ChannelSequence.** Each open remembers the newest ChannelSequence its
  client used; a WRITE, SET_INFO or IOCTL carrying an older one (more than
  0x7FFF behind, in 16-bit arithmetic) was sent before the client moved to
  another channel and is refused with STATUS_FILE_NOT_AVAILABLE, so it cannot
  overwrite what was done since. Requests complete before the next is read
  per open here, so the spec's outstanding-request counts are not kept.
"""

from __future__ import annotations

from ..protocol.constants import Command, Dialect, NtStatusError, Status
from .state import Open

ReplayKey = tuple[bytes, bytes]  # (ClientGuid, CreateGuid)

# The commands a stale ChannelSequence must not let through (3.3.5.2.10).
_GUARDED = frozenset({Command.WRITE, Command.SET_INFO, Command.IOCTL})


def replay_bus_key(key: ReplayKey) -> str:
    """How the bus names a create for a replay of it (opaque to the bus)."""
    return f"{key[0].hex()}:{key[1].hex()}"


class ReplayCache:
    """The node's DH2Q creates by (ClientGuid, CreateGuid): running, or the
    open each made while that open is still eligible for a replay."""

    def __init__(self) -> None:
        self._creates: dict[ReplayKey, Open | None] = {}  # None: still running

    @staticmethod
    def key(client_guid: bytes, create_guid: bytes) -> ReplayKey | None:
        return None if create_guid == bytes(16) else (client_guid, create_guid)

    def lookup(self, key: ReplayKey) -> tuple[bool, Open | None]:
        """(known, its open): known with no open means the create still runs."""
        if key not in self._creates:
            return False, None
        op = self._creates[key]
        if op is not None and op.closed:
            del self._creates[key]
            return False, None
        return True, op

    def begin(self, key: ReplayKey) -> None:
        self._creates[key] = None

    def made(self, key: ReplayKey, op: Open) -> None:
        self._creates[key] = op
        op.replay_key = key

    def abandon(self, key: ReplayKey) -> None:
        """The create failed: nothing to replay."""
        if self._creates.get(key, 0) is None:
            del self._creates[key]

    def forget(self, op: Open) -> None:
        if op.replay_key is not None and self._creates.get(op.replay_key) is op:
            del self._creates[op.replay_key]
        op.replay_key = None


def used(cache: ReplayCache, op: Open, command: int, sequence: int, dialect: int) -> None:
    """A request other than CREATE names ``op``: it is no longer replayable
    as a create (unless persistent), and its ChannelSequence is checked."""
    if op.replay_key is not None and not op.persistent:
        cache.forget(op)
    if dialect < Dialect.SMB3_0:
        return
    ahead = (sequence - op.channel_sequence) & 0xFFFF
    if ahead == 0:
        return
    if ahead <= 0x7FFF:
        op.channel_sequence = sequence
    elif command in _GUARDED:
        raise NtStatusError(Status.FILE_NOT_AVAILABLE, "stale ChannelSequence")
