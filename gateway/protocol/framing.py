"""Direct TCP transport framing (MS-SMB2 2.1): a zero byte, a 24-bit length, the message.

Sans-IO, and built to be read into (an asyncio ``BufferedProtocol``, see
``gateway.smb.receiver``): ``get_buffer`` says where the next received bytes
go, ``buffer_updated`` cuts the frames they complete. Small frames land in one
reused scratch buffer; a frame larger than it (a WRITE of up to 8 MiB) gets a
buffer of its announced length once its header is read, and the socket fills
that buffer directly. Each byte is copied once on its way to the ``bytes``
frame, whatever the number of reads a large frame takes.
"""

from __future__ import annotations

import struct


class FramingError(Exception):
    """The peer broke the framing; the only safe answer is to disconnect."""


_LEN = struct.Struct(">I")
# Where small frames are received; a frame longer than this has its own
# buffer. Every connection holds one, so it stays small.
SCRATCH_SIZE = 64 * 1024
# Less free room than this at the end of the scratch buffer: the unparsed
# bytes move to its start before the next read.
_MIN_ROOM = 4 * 1024


def frame(payload: bytes | bytearray | memoryview) -> bytes:
    n = len(payload)
    if n > 0xFFFFFF:
        raise FramingError(f"message of {n} bytes exceeds the 24-bit frame length")
    return _LEN.pack(n) + bytes(payload)


def frame_header(length: int) -> bytes:
    if length > 0xFFFFFF:
        raise FramingError(f"message of {length} bytes exceeds the 24-bit frame length")
    return _LEN.pack(length)


class FrameDecoder:
    """Cuts received bytes into whole messages.

    ``max_size`` bounds a message so that a peer announcing 16 MiB cannot make
    us buffer it before we refuse it.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size  # the connection may raise it once a client logs on
        self._scratch = bytearray(SCRATCH_SIZE)
        self._start = 0  # the first byte not yet cut into a frame
        self._end = 0  # the end of what was received into the scratch buffer
        self._big: bytearray | None = None  # a frame too long for the scratch buffer
        self._filled = 0  # bytes of it received

    def _length(self, buf: bytes | bytearray | memoryview, pos: int) -> int:
        word: int = _LEN.unpack_from(buf, pos)[0]
        if word >> 24:
            raise FramingError("first byte of a Direct TCP frame must be zero")
        if word > self.max_size:
            raise FramingError(f"frame of {word} bytes exceeds the limit of {self.max_size}")
        return word

    def get_buffer(self) -> memoryview:
        """Where the next received bytes go (never empty)."""
        if self._big is not None:
            return memoryview(self._big)[self._filled :]
        if self._start == self._end:
            self._start = self._end = 0
        elif SCRATCH_SIZE - self._end < _MIN_ROOM:
            n = self._end - self._start
            view = memoryview(self._scratch)
            view[:n] = view[self._start : self._end]
            self._start, self._end = 0, n
        return memoryview(self._scratch)[self._end :]

    def buffer_updated(self, n: int) -> list[bytes]:
        """``n`` bytes were written at ``get_buffer()``: the frames they complete."""
        out: list[bytes] = []
        if self._big is not None:
            self._filled += n
            if self._filled == len(self._big):
                out.append(bytes(self._big))
                self._big = None
                self._filled = 0
            return out
        self._end += n
        view = memoryview(self._scratch)
        while self._end - self._start >= 4:
            word = self._length(view, self._start)
            body = self._start + 4
            if 4 + word > SCRATCH_SIZE:
                # Too long for the scratch buffer: the rest of it is received
                # into a buffer of its own, and nothing after it is read yet.
                have = self._end - body
                self._big = bytearray(word)
                self._big[:have] = view[body : self._end]
                self._filled = have
                self._start = self._end = 0
                break
            if self._end - body < word:
                break
            out.append(bytes(view[body : body + word]))
            self._start = body + word
        return out

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """The frames ``data`` completes (for callers that read into their own buffers)."""
        out: list[bytes] = []
        view = memoryview(data)
        while view:
            room = self.get_buffer()
            n = min(len(room), len(view))
            room[:n] = view[:n]
            out += self.buffer_updated(n)
            view = view[n:]
        return out

    @property
    def buffered(self) -> int:
        """Bytes received and not yet cut into a frame."""
        return self._end - self._start + self._filled
