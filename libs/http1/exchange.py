"""One HTTP request as an RSGI app sees it: its scope and headers, its body in, its answer out (`server.py` runs it).

The body is read as it arrives (`await proto()` for all of it, `async for chunk in proto` piece by piece; a body
with no new byte for the server's `body_timeout_s`, or slower on the whole than `body_timeout_s` and a second per
BODY_MIN_RATE bytes, or whose client leaves, fails the read with ClientDisconnected), and the
connection stops reading while BODY_HIGH_WATER bytes wait for the app. The answer is one `write` of head and
body, or a chunked stream (`response_stream`; close-delimited for HTTP/1.0) whose `send_bytes` waits while the
client is not reading (up to the server's `send_timeout_s` without progress: then the client is dropped and the
send fails with ClientDisconnected). An answer sent before the body was read to its end closes the connection
after it. A 204 or 304 carries no length, and HEAD gets no body, streamed or not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import TYPE_CHECKING

from switchyard_gateway.http1.wire import ChunkedDecoder, ResponseCut

if TYPE_CHECKING:
    from switchyard_gateway.http1.server import Connection

BODY_TIMEOUT_S = 60.0             # between two bytes of a body the app waits for (the server's default)
BODY_MIN_RATE = 500               # bytes/s: a body may take body_timeout_s, and one second more per this many bytes
BODY_HIGH_WATER = 256 * 1024      # body bytes buffered ahead of the app before reading pauses

_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_FRAMING = frozenset(("content-length", "transfer-encoding", "connection"))


class ClientDisconnected(ConnectionError):
    """The client's connection closed before the request's body was read, or while the answer was sent."""


class BodyRefused(ClientDisconnected):
    """The request's body broke the framing (a malformed chunk, too many chunks): this server answered the client
    with `status` and closed the connection."""

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.status = status


class Headers(dict[str, str]):
    """A request's headers: name (lower-case) -> its first value; `items()` and `get_all()` see every copy."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        super().__init__(reversed(pairs))           # the first copy of a name wins
        self.pairs = pairs

    def items(self) -> list[tuple[str, str]]:       # type: ignore[override]
        return self.pairs

    def get_all(self, name: str) -> list[str]:
        return [value for key, value in self.pairs if key == name]


class Scope:
    """The RSGI scope of one request."""

    __slots__ = ("proto", "http_version", "method", "scheme", "path", "query_string", "headers", "client",
                 "server", "authority")

    def __init__(self, proto: str, http_version: str, method: str, path: str, query_string: str,
                 headers: Headers, client: str, server: str) -> None:
        self.proto, self.http_version, self.method = proto, http_version, method
        self.scheme = "http" if proto == "http" else "ws"
        self.path, self.query_string, self.headers = path, query_string, headers
        self.client, self.server, self.authority = client, server, None


class _Date:
    """The `date` header's line, made once a second."""

    second = 0
    line = b""

    @classmethod
    def now(cls) -> bytes:
        second = int(time.time())
        if second != cls.second:
            cls.second = second
            cls.line = b"date: " + time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(second)).encode() + b"\r\n"
        return cls.line


def response_head(version: bytes, status: int, headers: list[tuple[str, str]], framing: bytes,
          request: Request | None = None) -> bytes:
    """A response head: status line, the app's headers (CR and LF refused; its own framing headers left out: the
    server frames the body, and an app's `connection: close` closes the connection after), our framing
    headers, `connection` for `request`, date."""
    lines = [version, b" %d " % status, _REASONS.get(status, b"Unknown"), b"\r\n"]
    for name, value in headers:
        lowered = name.lower()
        if lowered in _FRAMING:
            if lowered == "connection" and request is not None and "close" in value.lower():
                request.close_after = True
            continue
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
            raise ValueError(f"header {name!r} has a line break")
        lines.append(f"{name}: {value}\r\n".encode("latin-1", "replace"))
    lines.append(framing)
    if request is not None:
        if request.close_after:
            lines.append(b"connection: close\r\n")
        elif request.version == b"HTTP/1.0":
            lines.append(b"connection: keep-alive\r\n")
    lines.append(_Date.now())
    lines.append(b"\r\n")
    return b"".join(lines)


class Request:
    """One HTTP request's RSGI protocol object: its body in, its answer out."""

    __slots__ = ("conn", "head_only", "version", "close_after", "continue_", "left", "chunks", "decoder",
                 "parts", "buffered", "complete", "waiter", "received", "body_since", "responded", "stream")

    def __init__(self, conn: Connection, version: bytes, head_only: bool, close_after: bool, continue_: bool,
                 length: int, chunked: bool) -> None:
        self.conn, self.version, self.head_only, self.close_after = conn, version, head_only, close_after
        self.continue_ = continue_              # the client waits for "100 Continue" before its body
        self.left = length                      # body bytes still to come (Content-Length)
        self.decoder = ChunkedDecoder(strict=True) if chunked else None
        self.chunks: list[bytes] = []           # a chunked body's pieces, from the decoder
        self.parts: list[bytes] = []            # body bytes received and not yet taken by the app
        self.buffered = 0
        self.complete = not chunked and length == 0
        self.waiter: asyncio.Future[None] | None = None
        self.received = 0                       # body bytes received, for the body's whole deadline
        self.body_since = 0.0                   # when the app first waited for the body
        self.responded = False
        self.stream: Stream | None = None

    # --- the body ---------------------------------------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        """Take the body's bytes from `data`; return what follows the body (the next request's)."""
        rest = b""
        decoder = self.decoder
        if decoder is not None:
            try:
                after = decoder.feed(data, self.chunks)
            except ResponseCut as exc:
                self.conn.refuse(400, f"malformed chunked body: {exc}")
                return b""
            if decoder.chunks > self.conn.server.max_body_chunks:
                self._too_many_chunks()
                return b""
            chunks = self.chunks
            if chunks:                          # one part per read, however many chunks it held
                part = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                self.parts.append(part)
                self.buffered += len(part)
                self.received += len(part)
                chunks.clear()
            if after is not None:
                self.complete, rest = True, after
        else:
            take = self.left
            if len(data) > take:
                data, rest = data[:take], data[take:]
            self.left = take - len(data)
            if data:
                self.parts.append(data)
                self.buffered += len(data)
                self.received += len(data)
            if not self.left:
                self.complete = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.buffered > BODY_HIGH_WATER and not self.complete:
            self.conn.pause_reading()
        return rest

    def _too_many_chunks(self) -> None:
        """A body in more chunks than the server reads for one request: each chunk costs a parse, so a body of
        1-byte chunks costs the worker about six times the CPU of its bytes, before any key is looked at.
        Refused; or, once answered (a 413, whose body is read on so that the client hears it), dropped."""
        conn = self.conn
        if not self.responded:
            conn.refuse(400, f"a chunked body in more than {conn.server.max_body_chunks} chunks")
            return
        self.fail("the request body came in too many chunks")
        conn.request = None
        if not conn.lost:
            conn.transport.close()              # type: ignore[union-attr]

    def fail(self, reason: str, status: int = 0) -> None:
        """The body will not come: whoever waits for it hears it now (BodyRefused when this server refused it with
        `status`, else ClientDisconnected)."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(BodyRefused(reason, status) if status else ClientDisconnected(reason))

    async def _more(self) -> None:
        """Wait for more of the body (or its end); ClientDisconnected if the client leaves first."""
        conn = self.conn
        if conn.lost or conn.request is not self:      # gone, or its body was refused
            raise ClientDisconnected("the client closed the connection before sending the whole body")
        if self.continue_:
            self.continue_ = False
            if not self.responded:              # RFC 9110 10.1.1: never after the final answer
                conn.write(self.version + b" 100 Continue\r\n\r\n")
        conn.resume_reading()
        now, per_byte = conn.loop.time(), conn.server.body_timeout_s
        if not self.body_since:
            self.body_since = now
        # a byte a minute would hold the connection and this task for ever: the whole body has a deadline too
        whole = self.body_since + per_byte + self.received / BODY_MIN_RATE - now
        if whole <= 0:
            raise ClientDisconnected("the request body came too slowly")
        self.waiter = waiter = conn.loop.create_future()
        timer = conn.loop.call_later(whole, _too_slow, waiter) if whole < per_byte else \
            conn.loop.call_later(per_byte, _timed_out, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None

    def _take(self) -> list[bytes]:
        parts, self.parts, self.buffered = self.parts, [], 0
        return parts

    async def __call__(self) -> bytes:
        while not self.complete:
            await self._more()
        parts = self._take()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        while True:
            if self.parts:
                for part in self._take():
                    yield part
            if self.complete:
                return
            await self._more()

    # --- the answer -------------------------------------------------------------------------------

    def _start(self, status: int, headers: list[tuple[str, str]], framing: bytes) -> bytes:
        if self.responded:
            raise RuntimeError("the response has already started")
        if not self.complete or self.conn.server.stopping:    # the body not all read: no telling where the
            self.close_after = True                             # next request starts; or the server is stopping
        head = response_head(self.version, status, headers, framing, self)
        self.responded = True
        return head

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        if self.head_only:                      # the length a GET would have, when the app says it
            length = next((value for name, value in headers if name.lower() == "content-length"), None)
            if length is not None and length.isdigit():
                self.conn.write(self._start(status, headers, b"content-length: %s\r\n" % length.encode()))
                return
        if not body and (status == 204 or status == 304):     # RFC 9110 8.6: no length (a 304's is the 200's)
            self.conn.write(self._start(status, headers, b""))
            return
        head = self._start(status, headers, b"content-length: %d\r\n" % len(body))
        self.conn.write(head if self.head_only or not body else head + body)

    def response_str(self, status: int, headers: list[tuple[str, str]], body: str) -> None:
        self.response_bytes(status, headers, body.encode())

    def response_empty(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.response_bytes(status, headers, b"")

    def response_stream(self, status: int, headers: list[tuple[str, str]]) -> Stream:
        if self.version == b"HTTP/1.0":         # no chunked coding: the body ends when the connection does
            self.close_after = True
            self.conn.write(self._start(status, headers, b""))
            chunked = False
        else:
            self.conn.write(self._start(status, headers, b"transfer-encoding: chunked\r\n"))
            chunked = True
        # HEAD: the head a GET would have, and none of the body
        self.stream = stream = _HeadStream(self, False) if self.head_only else Stream(self, chunked)
        return stream

    async def client_disconnect(self) -> None:
        """Completes when the client's connection closes."""
        conn = self.conn
        if conn.lost:
            return
        waiter = conn.loop.create_future()
        conn.watchers = [w for w in conn.watchers if not w.done()]
        conn.watchers.append(waiter)
        await waiter


class Stream:
    """A streamed answer: chunks out as they are sent; the last chunk when the handler returns."""

    __slots__ = ("request", "chunked", "ended")

    def __init__(self, request: Request, chunked: bool) -> None:
        self.request, self.chunked, self.ended = request, chunked, False

    async def send_bytes(self, data: bytes) -> None:
        conn = self.request.conn
        if conn.lost or self.ended:
            raise ClientDisconnected("the client closed the connection")
        if data:
            conn.write(b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)
            if conn.write_paused is not None:
                await conn.drained()

    async def send_str(self, data: str) -> None:
        await self.send_bytes(data.encode())

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            request = self.request
            if self.chunked and not request.conn.lost:
                request.conn.write(b"0\r\n\r\n")
            request.stream = None
            request.conn.answered(request)


class _HeadStream(Stream):
    """A streamed answer to HEAD: its head is sent, what the app streams is not."""

    __slots__ = ()

    async def send_bytes(self, data: bytes) -> None:
        if self.request.conn.lost or self.ended:
            raise ClientDisconnected("the client closed the connection")


def _timed_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(ClientDisconnected("no byte of the request body in time"))


def _too_slow(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(ClientDisconnected("the request body came too slowly"))
