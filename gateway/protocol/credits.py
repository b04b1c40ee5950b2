"""A connection's command sequence window and its credits (MS-SMB2 3.3.1.1,
3.3.5.2.3, 3.3.5.2.5). Sans-IO: numbers in, numbers out.

The client may send a request only with MessageIds the server granted and
has not seen used: every id from ``low`` (the lowest not yet used) to ``high``
(one past the highest granted) is in the window unless ``used`` holds it.
A request of CreditCharge ``n`` uses ``n`` consecutive ids. An id outside the
window, or used before (a replayed message), ends the connection, as Windows
and smbd do: a request the client had no credit for is not a client's
mistake. CANCEL takes no id (the server does not check it).

Each reply grants credits: what the client asks for, while the ids it holds
stay within ``max_credits``, and always at least one to a client holding
none, so it never stalls.
"""

from __future__ import annotations

PAYLOAD_PER_CREDIT = 65536


class SequenceError(Exception):
    """A MessageId outside the window or used before: the connection must end."""


class CreditWindow:
    __slots__ = ("low", "high", "used", "max_credits")

    def __init__(self, max_credits: int = 8192) -> None:
        self.low = 0
        self.high = 1  # MessageId 0, for the first NEGOTIATE
        self.used: set[int] = set()  # ids in [low, high) used out of order
        self.max_credits = max_credits

    @property
    def outstanding(self) -> int:
        """Credits the client holds: ids granted and not yet used."""
        return self.high - self.low - len(self.used)

    def consume(self, message_id: int, charge: int) -> None:
        """Take ``charge`` ids from ``message_id`` on; SequenceError if any is not free."""
        charge = max(1, charge)
        end = message_id + charge
        if message_id < self.low or end > self.high:
            window = f"[{self.low}, {self.high})"
            raise SequenceError(f"MessageId {message_id} (+{charge - 1}) outside {window}")
        ids = range(message_id, end)
        if any(i in self.used for i in ids):
            raise SequenceError(f"MessageId {message_id} used before")
        if message_id == self.low:
            self.low = end
        else:
            self.used.update(ids)
        while self.low in self.used:
            self.used.discard(self.low)
            self.low += 1

    def grant(self, requested: int) -> int:
        """Credits for one reply: ``requested`` (at least 1), within ``max_credits``."""
        room = self.max_credits - self.outstanding
        granted = min(max(1, requested), room)
        if granted < 1:
            granted = 1 if self.outstanding == 0 else 0
        self.high += granted
        return granted


def check_payload(size: int, charge: int, multi_credit: bool) -> bool:
    """Whether a request's payload (the larger of what it sends and asks back) fits
    its CreditCharge (MS-SMB2 3.3.5.2.5): 64 KiB a credit, a charge of 0 counting as 1."""
    if not multi_credit:
        return size <= PAYLOAD_PER_CREDIT
    return size <= PAYLOAD_PER_CREDIT * max(1, charge)
