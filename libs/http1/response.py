"""A response whose head has arrived (its body buffered by the connection and consumed here), and a whole one."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import msgspec

from switchyard_gateway.http1.wire import AnswerTooLarge, AnswerTooSlow, ResponseCut

if TYPE_CHECKING:
    from switchyard_gateway.http1.conn import Connection


class Response:
    """A response whose head has arrived; the body is read with `read()` or `async for`.

    The connection goes back to the pool as soon as the whole body has arrived, read or not;
    call `release()` when done all the same: it closes the connection if the body is unfinished.
    """

    __slots__ = ("status", "headers", "_conn", "_chunks", "_size", "_done", "_exc", "_waiter")

    def __init__(self, status: int, headers: dict[str, str], conn: Connection) -> None:
        self.status = status
        self.headers = headers  # lower-case names; repeated headers joined with ", "
        self._conn: Connection | None = conn  # None once the exchange ended
        self._chunks: list[bytes] = []  # received, not yet consumed
        self._size = 0
        self._done = False  # the whole body arrived
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<Response {self.status}>"

    async def read(self, limit: int | None = None, within_s: float | None = None) -> bytes:
        """The whole (rest of the) body; raises ResponseCut or ReadTimeout if it breaks off, AnswerTooLarge
        (closing the connection) once it is over `limit` bytes, and AnswerTooSlow (closing it) if it has not all
        arrived `within_s` seconds after this call, however steadily it came (the connection's read timeout
        bounds only the silence between bytes). The body is taken as it arrives, so that the connection, which
        stops reading while what it holds is unread (PAUSE_ABOVE_BYTES), goes on reading."""
        parts: list[bytes] = []
        size = 0
        deadline: float | None = None
        while True:
            if self._chunks:
                data = self._take()
                size += len(data)
                if limit is not None and size > limit:
                    self.release()
                    raise AnswerTooLarge(f"the response body is larger than {limit} bytes")
                parts.append(data)
                continue
            if self._done:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            if self._exc is not None:
                raise self._exc
            if within_s is None:
                await self._wait()
                continue
            if deadline is None:    # only a body that did not arrive with its head needs the clock
                deadline = self._loop().time() + within_s
            await self._wait(deadline, within_s)

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes:
        """The body bytes that arrived since the last call (de-chunked), waiting for some."""
        while not self._chunks:
            if self._exc is not None:
                raise self._exc
            if self._done:
                raise StopAsyncIteration
            await self._wait()
        return self._take()

    def release(self) -> None:
        """Done with this response; closes the connection if its body has not all arrived."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            self._exc = ResponseCut("the response was released before its body was read")
            conn.abort()

    def _take(self) -> bytes:
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        if self._conn is not None:
            self._conn.resume()
        return data

    def _loop(self) -> asyncio.AbstractEventLoop:
        conn = self._conn
        return conn.loop if conn is not None else asyncio.get_running_loop()   # no lookup (a system call)

    async def _wait(self, deadline: float | None = None, within_s: float = 0.0) -> None:
        loop = self._loop()
        self._waiter = waiter = loop.create_future()
        timer = None if deadline is None else loop.call_at(deadline, self._too_slow, waiter, within_s)
        try:
            await waiter
        except asyncio.CancelledError:
            self.release()
            raise
        except AnswerTooSlow:
            self.release()
            raise
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    @staticmethod
    def _too_slow(waiter: asyncio.Future[None], within_s: float) -> None:
        if not waiter.done():
            waiter.set_exception(AnswerTooSlow(f"the response body did not all arrive within {within_s:g} s"))


class Fetched:
    """A whole response, as `Pool.fetch` returns it: status, headers (lower-case names) and body."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def __repr__(self) -> str:
        return f"<Fetched {self.status} {len(self.body)} bytes>"

    def json(self) -> Any:
        """The body decoded as JSON; ValueError if it is not JSON."""
        try:
            return msgspec.json.decode(self.body)
        except msgspec.DecodeError as exc:
            raise ValueError(str(exc)) from None

    def text(self) -> str:
        """The body as text (UTF-8, undecodable bytes replaced)."""
        return self.body.decode("utf-8", "replace")
