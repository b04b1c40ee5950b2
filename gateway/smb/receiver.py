"""A connection's frames, received straight into their buffers.

asyncio's StreamReader copies every read twice (into its buffer, then out of
it) before the frame decoder copies it again; an 8 MiB WRITE so went through
five copies. ``FrameReceiver`` is the transport's protocol instead: as a
``BufferedProtocol`` it lets the socket write into ``FrameDecoder``'s buffers
(MS-SMB2 2.1 framing, see ``gateway.protocol.framing``), and queues whole
frames for the connection's loop. The StreamReaderProtocol it replaces still
gets what concerns the writing side (flow control, the connection's end), so
``StreamWriter.drain`` and ``close`` work as before.
"""

from __future__ import annotations

import asyncio
from collections import deque

from ..protocol.framing import FrameDecoder, FramingError

# Frame bytes queued before the socket is no longer read (as StreamReader's
# 2 x 1 MiB limit); a WRITE received meanwhile may take it past that once.
QUEUE_HIGH = 2 * 1024 * 1024


class FrameReceiver(asyncio.BufferedProtocol):
    """Takes over a transport's reading from its StreamReaderProtocol."""

    def __init__(
        self,
        transport: asyncio.Transport,
        decoder: FrameDecoder,
        data: bytes = b"",
        *,
        eof: bool = False,
    ) -> None:
        """``data``: what the stream read before; ``eof``: whether it saw the end."""
        self._decoder = decoder
        self._transport = transport
        self._stream = transport.get_protocol()
        self._frames: deque[bytes] = deque()
        self._queued = 0
        self._error: FramingError | None = None
        self._recheck = False  # whether _error may pass under a raised limit
        self._eof = eof
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        try:
            self._add(decoder.feed(data))
        except FramingError as e:
            self._fail(e)
        transport.set_protocol(self)

    # -- the transport's side ------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._decoder.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        try:
            self._add(self._decoder.buffer_updated(nbytes))
        except FramingError as e:
            self._fail(e)
            self._recheck = True

    def eof_received(self) -> bool | None:
        self._eof = True
        self._wake()
        if isinstance(self._stream, asyncio.Protocol):
            return self._stream.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._wake()
        self._stream.connection_lost(exc)

    def pause_writing(self) -> None:
        self._stream.pause_writing()

    def resume_writing(self) -> None:
        self._stream.resume_writing()

    # -- the connection's side -----------------------------------------------

    async def next_frame(self) -> bytes | None:
        """The next whole frame; None once the peer closed and all were taken."""
        while not self._frames:
            if self._error is not None:
                if not self._recheck:
                    raise self._error
                # Frames are cut as they arrive, before the requests ahead of
                # them ran: a frame over the pre-logon limit is judged again
                # once they have, as the connection may have raised the limit
                # (its session became valid) meanwhile. The decoder kept it.
                self._error = None
                self._recheck = False
                self._add(self._decoder.buffer_updated(0))
                continue
            if self._eof:
                return None
            self._resume()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        frame = self._frames.popleft()
        self._queued -= len(frame)
        if self._queued < QUEUE_HIGH:
            self._resume()
        return frame

    # -- helpers ---------------------------------------------------------------

    def _add(self, frames: list[bytes]) -> None:
        if frames:
            self._frames.extend(frames)
            self._queued += sum(len(f) for f in frames)
            if self._queued >= QUEUE_HIGH:
                self._pause()
            self._wake()

    def _fail(self, error: FramingError) -> None:
        self._error = error
        self._pause()  # nothing more is read from a peer that broke the framing
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _pause(self) -> None:
        if not self._paused and not self._transport.is_closing():
            self._paused = True
            self._transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and self._error is None and not self._transport.is_closing():
            self._paused = False
            self._transport.resume_reading()
