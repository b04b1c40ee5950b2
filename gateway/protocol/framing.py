"""Direct TCP transport framing (MS-SMB2 2.1): a zero byte, a 24-bit length, the message."""

from __future__ import annotations

import struct


class FramingError(Exception):
    """The peer broke the framing; the only safe answer is to disconnect."""


_LEN = struct.Struct(">I")


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
    """Accumulates received bytes and yields whole messages.

    ``max_size`` bounds a message so that a peer announcing 16 MiB cannot make
    us buffer it before we refuse it.
    """

    def __init__(self, max_size: int) -> None:
        self._buf = bytearray()
        self.max_size = max_size  # the connection may raise it once a client logs on

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 4:
            word = _LEN.unpack_from(buf, pos)[0]
            if word >> 24:
                raise FramingError("first byte of a Direct TCP frame must be zero")
            if word > self.max_size:
                raise FramingError(f"frame of {word} bytes exceeds the limit of {self.max_size}")
            if len(buf) - pos - 4 < word:
                break
            out.append(bytes(buf[pos + 4 : pos + 4 + word]))
            pos += 4 + word
        if pos:
            del buf[:pos]
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)
