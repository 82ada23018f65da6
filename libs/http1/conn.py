"""One pooled upstream connection: an asyncio.Protocol that parses responses as bytes arrive.

A connection runs one exchange at a time: `send()` writes the request and returns a future
for the Response, set once the head has arrived; body bytes then go straight into the
Response's buffer (its private fields are this module's to fill). When the body is complete
and keep-alive holds, the connection goes back to its pool at once, consumed or not.

The read timeout is one lazily re-armed timer per connection: `data_received` only notes
the time, and the timer, when it fires, either fails the exchange or re-arms itself.
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any

from switchyard_gateway.http1.response import Response
from switchyard_gateway.http1.wire import (
    CHUNKED,
    MAX_HEAD_BYTES,
    UNTIL_CLOSE,
    ChunkedDecoder,
    ReadTimeout,
    ResponseCut,
    body_length,
    head_end,
    parse_head,
)

if TYPE_CHECKING:
    from switchyard_gateway.http1.pool import Host

PAUSE_ABOVE_BYTES = 1024 * 1024  # stop reading when the consumer is this far behind
TIMER_SLACK_S = 0.001  # timers may fire this early

_IDLE, _HEAD, _LENGTH, _CHUNKED, _CLOSE, _DEAD = range(6)


class NoResponse(ResponseCut):
    """The connection closed before any byte of the response: safe to retry if it was reused."""


class Connection(asyncio.Protocol):
    """A keep-alive HTTP/1.1 connection to one upstream host."""

    __slots__ = (
        "_host", "loop", "_transport", "_state", "_buf", "_waiter", "_resp", "_head_only",
        "_left", "_decoder", "_keep", "_seen", "_paused", "_timeout_s", "_last_io", "_timer",
        "_timer_at", "uses", "idle_since",
    )  # fmt: skip

    def __init__(self, host: Host, loop: asyncio.AbstractEventLoop) -> None:
        self._host = host
        self.loop = loop
        self._transport: asyncio.Transport | None = None
        self._state = _IDLE
        self._buf = b""  # an incomplete head
        self._waiter: asyncio.Future[Response] | None = None  # set when the head arrives
        self._resp: Response | None = None  # whose body is arriving
        self._head_only = False
        self._left = 0  # Content-Length bytes still to come
        self._decoder: ChunkedDecoder | None = None
        self._keep = True
        self._seen = False  # a byte of this exchange's response arrived
        self._paused = False
        self._timeout_s = 0.0
        self._last_io = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.uses = 0  # exchanges started
        self.idle_since = 0.0

    @property
    def closing(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def send(self, message: bytes, head_only: bool, timeout_s: float) -> asyncio.Future[Response]:
        """Write one request; the future's result is the Response once its head arrived."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise NoResponse("the connection closed before the request was sent")
        self.uses += 1
        self._state = _HEAD
        self._head_only = head_only
        self._seen = False
        self._waiter = waiter = self.loop.create_future()
        self._timeout_s = timeout_s
        self._last_io = now = self.loop.time()
        if self._timer is None or self._timer_at > now + timeout_s:
            self._arm(now + timeout_s)
        transport.write(message)
        return waiter

    def abandon(self, waiter: asyncio.Future[Response]) -> None:
        """The sender of `waiter` was cancelled: close unless its exchange already finished."""
        if self._waiter is waiter:
            self.abort()
        elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            waiter.result().release()

    def abort(self) -> None:
        """Drop the connection now; it is never reused."""
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._host.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        state = self._state
        self._state = _DEAD
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if state == _HEAD:
            if self._seen:
                self._fail(ResponseCut("the connection closed in the middle of the response head"))
            else:
                self._fail(NoResponse("the connection closed before any byte of the response"))
        elif state == _CLOSE and exc is None:
            self._finish(b"")
        elif state != _IDLE and state != _DEAD:
            reason = f": {exc}" if exc is not None else ""
            self._fail(ResponseCut(f"the connection closed in the middle of the body{reason}"))
        self._host.lost(self)

    def data_received(self, data: bytes) -> None:
        self._last_io = self.loop.time()
        state = self._state
        try:
            if state == _LENGTH:
                self._on_length(data)
            elif state == _HEAD:
                self._seen = True
                self._on_head(data)
            elif state == _CHUNKED:
                self._on_chunked(data)
            elif state == _CLOSE:
                self._feed(data)
            elif state == _IDLE:  # bytes nobody asked for: the stream is out of step
                self._state = _DEAD
                self.abort()
        except ResponseCut as exc:
            self._fail(exc)

    def eof_received(self) -> None:
        return None  # close; connection_lost ends a close-delimited body or fails the exchange

    # --- reading the response ----------------------------------------------------------

    def _on_head(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        while True:
            end, after = head_end(buf)
            if end < 0:         # the head's end yet to come: it will be longer than what is here
                if len(buf) >= MAX_HEAD_BYTES:
                    raise ResponseCut(f"the response head is larger than {MAX_HEAD_BYTES} bytes")
                self._buf = buf
                return
            if after > MAX_HEAD_BYTES:      # the same limit for a head that came in one piece
                raise ResponseCut(f"the response head is larger than {MAX_HEAD_BYTES} bytes")
            status, headers, keep = parse_head(buf, end)
            buf = buf[after:]
            if status >= 200 or status == 101:
                break
            if not buf:  # an interim 1xx reply: the real head follows
                self._buf = b""
                return
        self._buf = b""
        length = body_length(status, headers, self._head_only)  # may raise: the waiter fails
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():  # its sender was cancelled
            self._state = _DEAD
            self.abort()
            return
        self._keep = keep and length != UNTIL_CLOSE and status != 101
        self._resp = resp = Response(status, headers, self)
        waiter.set_result(resp)
        if length == 0:
            self._finish(buf)
        elif length > 0:
            self._state = _LENGTH
            self._left = length
            if buf:
                self._on_length(buf)
        elif length == CHUNKED:
            self._state = _CHUNKED
            self._decoder = ChunkedDecoder()
            if buf:
                self._on_chunked(buf)
        else:
            self._state = _CLOSE
            if buf:
                self._feed(buf)

    def _on_length(self, data: bytes) -> None:
        left = self._left
        size = len(data)
        if size < left:
            self._left = left - size
            self._feed(data)
        elif size == left:
            self._feed(data)
            self._finish(b"")
        else:
            self._feed(data[:left])
            self._finish(data[left:])

    def _on_chunked(self, data: bytes) -> None:
        pieces: list[bytes] = []
        rest = self._decoder.feed(data, pieces)
        for piece in pieces:
            self._feed(piece)
        if rest is not None:
            self._decoder = None
            self._finish(rest)

    def _feed(self, data: bytes) -> None:
        resp = self._resp
        resp._chunks.append(data)
        resp._size += len(data)
        if resp._size > PAUSE_ABOVE_BYTES and not self._paused:
            self._paused = True
            self._transport.pause_reading()
        waiter = resp._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _finish(self, rest: bytes) -> None:
        """The body is complete: hand the connection back, or close it."""
        resp, self._resp = self._resp, None
        resp._conn = None
        resp._done = True
        waiter = resp._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._state == _DEAD:
            return
        self._state = _IDLE
        if self._paused:
            self._paused = False
            self._transport.resume_reading()
        if rest or not self._keep:
            self._state = _DEAD
            self.close()
        else:
            self._host.release(self)

    def _fail(self, exc: ResponseCut | ReadTimeout) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        resp, self._resp = self._resp, None
        if resp is not None:
            resp._conn = None
            resp._exc = exc
            if resp._waiter is not None and not resp._waiter.done():
                resp._waiter.set_result(None)
        if self._state != _DEAD:
            self._state = _DEAD
            self.abort()

    def resume(self) -> None:
        """The consumer caught up: read again."""
        if self._paused:
            self._paused = False
            self._last_io = self.loop.time()
            if self._transport is not None:
                self._transport.resume_reading()

    # --- the read timeout --------------------------------------------------------------

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._state == _IDLE or self._state == _DEAD:
            return
        now = self.loop.time()
        if self._paused:  # the consumer is behind, not the upstream
            self._arm(now + self._timeout_s)
            return
        deadline = self._last_io + self._timeout_s
        if now + TIMER_SLACK_S >= deadline:
            self._fail(ReadTimeout(f"no bytes from the upstream for {self._timeout_s:g} s"))
        else:
            self._arm(deadline)
