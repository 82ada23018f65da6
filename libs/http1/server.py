"""An HTTP/1.1 server on asyncio.Protocol for RSGI applications: the request handed over in the loop that reads it.

    server = Server(app)                     # app: an RSGI application (`__rsgi__(scope, proto)`)
    await server.serve(sock)                 # until stop(); then in-flight requests get `grace_s` to finish
    server.stop()

The gateway's hot path spends most of its time waiting for upstreams and sending small answers. A server
whose HTTP runs in other threads (granian's Rust runtime) pays a hand-off between threads on the way in
and on the way out of every call; here the request is parsed where the app runs, and the answer is one
`write` (docs/performance.md measures the difference). What it speaks:

- HTTP/1.1 and 1.0: keep-alive (1.1's default, 1.0's when asked), requests on one connection served in
  order (pipelined ones wait their turn), `Expect: 100-continue`, bodies by Content-Length or chunked;
- the RSGI calls the gateway uses: `await proto()` (the whole body), `async for chunk in proto`,
  `response_bytes/str/empty`, `response_stream` (chunked; `send_bytes`/`send_str`, ended when the handler
  returns), `client_disconnect()`; WebSocket upgrades (`proto.accept()`, `receive()`,
  `send_bytes`/`send_str`, `close(code)`: an HTTP status before the accept, a close frame's code after);
- what it refuses, then closes: a malformed request line or header (400), a head over `max_head_bytes`
  (431), conflicting or malformed framing (400: Content-Length and Transfer-Encoding together, two
  different lengths), a transfer coding other than chunked (501), an HTTP version other than 1.x (505);
- what it does not wait for: a request head not complete within `head_timeout_s` of its first byte, a
  body with no byte for `body_timeout_s`, a connection idle for `keep_alive_s` between requests.

Header names reach the app lower-cased; `scope.headers.get(name)` is the first value,
`get_all(name)` every one. The path is percent-decoded, the query string as sent.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import signal
import struct
import time
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import structlog

from switchyard_gateway.http1.wire import ChunkedDecoder, ResponseCut

log = structlog.get_logger()

MAX_HEAD_BYTES = 64 * 1024        # request line and headers
HEAD_TIMEOUT_S = 30.0             # from a request head's first byte to its blank line
BODY_TIMEOUT_S = 60.0             # between two bytes of a body the app waits for
KEEP_ALIVE_S = 75.0               # an idle connection between requests
GRACE_S = 5.0                     # at stop: how long requests in flight may take to finish
BODY_HIGH_WATER = 256 * 1024      # body bytes buffered ahead of the app before reading pauses
WS_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_FRAMING = frozenset(("content-length", "transfer-encoding", "connection"))
_METHODS = frozenset((b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"OPTIONS"))
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class ClientDisconnected(ConnectionError):
    """The client's connection closed before the request's body was read, or while the answer was sent."""


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


def _head(version: bytes, status: int, headers: list[tuple[str, str]], framing: bytes,
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
                 "parts", "buffered", "complete", "waiter", "responded", "stream")

    def __init__(self, conn: Connection, version: bytes, head_only: bool, close_after: bool, continue_: bool,
                 length: int, chunked: bool) -> None:
        self.conn, self.version, self.head_only, self.close_after = conn, version, head_only, close_after
        self.continue_ = continue_              # the client waits for "100 Continue" before its body
        self.left = length                      # body bytes still to come (Content-Length)
        self.decoder = ChunkedDecoder() if chunked else None
        self.chunks: list[bytes] = []           # a chunked body's pieces, from the decoder
        self.parts: list[bytes] = []            # body bytes received and not yet taken by the app
        self.buffered = 0
        self.complete = not chunked and length == 0
        self.waiter: asyncio.Future[None] | None = None
        self.responded = False
        self.stream: Stream | None = None

    # --- the body ---------------------------------------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        """Take the body's bytes from `data`; return what follows the body (the next request's)."""
        rest = b""
        if self.decoder is not None:
            try:
                after = self.decoder.feed(data, self.chunks)
            except ResponseCut as exc:
                self.conn.refuse(400, f"malformed chunked body: {exc}")
                return b""
            if self.chunks:
                self.parts.extend(self.chunks)
                self.buffered += sum(len(chunk) for chunk in self.chunks)
                self.chunks.clear()
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
            if not self.left:
                self.complete = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.buffered > BODY_HIGH_WATER and not self.complete:
            self.conn.pause_reading()
        return rest

    async def _more(self) -> None:
        """Wait for more of the body (or its end); ClientDisconnected if the client leaves first."""
        conn = self.conn
        if conn.lost:
            raise ClientDisconnected("the client closed the connection before sending the whole body")
        if self.continue_:
            self.continue_ = False
            conn.write(self.version + b" 100 Continue\r\n\r\n")
        conn.resume_reading()
        self.waiter = waiter = conn.loop.create_future()
        timer = conn.loop.call_later(BODY_TIMEOUT_S, _timed_out, waiter)
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
        head = _head(self.version, status, headers, framing, self)
        self.responded = True
        return head

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        if self.head_only:                      # the length a GET would have, when the app says it
            length = next((value for name, value in headers if name.lower() == "content-length"), None)
            if length is not None and length.isdigit():
                self.conn.write(self._start(status, headers, b"content-length: %s\r\n" % length.encode()))
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
            self.stream = stream = Stream(self, chunked=False)
        else:
            self.conn.write(self._start(status, headers, b"transfer-encoding: chunked\r\n"))
            self.stream = stream = Stream(self, chunked=True)
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


def _timed_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(ClientDisconnected("no byte of the request body for BODY_TIMEOUT_S"))


class Connection(asyncio.Protocol):
    """One client connection: parses requests, runs one at a time through the app, writes their answers."""

    def __init__(self, server: Server) -> None:
        self.server, self.app, self.loop = server, server.app, server.loop
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.request: Request | None = None     # the request being served
        self.task: asyncio.Task[None] | None = None
        self.lost = False
        self.reading_paused = False
        self.write_paused: asyncio.Future[None] | None = None
        self.watchers: list[asyncio.Future[None]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.client = self.local = ""
        self.websocket: WebSocket | None = None
        self.head_started = False               # a request head's first bytes are here: its timer runs

    # --- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport              # type: ignore[assignment]
        self.server.connections.add(self)
        peer, local = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
        self.client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ""
        self.local = f"{local[0]}:{local[1]}" if isinstance(local, tuple) else ""
        self._arm(KEEP_ALIVE_S)

    def data_received(self, data: bytes) -> None:
        if self.websocket is not None:
            self.websocket.feed(data)
            return
        request = self.request
        if request is not None and not request.complete:
            data = request.feed(data)
            if not data:
                return
        if self.buffer:
            data = self.buffer + data
        self.buffer = data
        if request is None:
            self._next()
        elif len(data) > MAX_HEAD_BYTES:        # pipelined requests pile up: wait until this one is answered
            self.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server.connections.discard(self)
        self._disarm()
        for watcher in self.watchers:
            if not watcher.done():
                watcher.set_result(None)
        self.watchers.clear()
        request = self.request
        if request is not None and request.waiter is not None and not request.waiter.done():
            request.waiter.set_exception(ClientDisconnected("the client closed the connection"))
        if self.write_paused is not None and not self.write_paused.done():
            self.write_paused.set_exception(ClientDisconnected("the client closed the connection"))
        if self.websocket is not None:
            self.websocket.lost()

    def pause_writing(self) -> None:
        if self.write_paused is None:
            self.write_paused = self.loop.create_future()

    def resume_writing(self) -> None:
        paused, self.write_paused = self.write_paused, None
        if paused is not None and not paused.done():
            paused.set_result(None)

    async def drained(self) -> None:
        paused = self.write_paused
        if paused is not None:
            await asyncio.shield(paused)

    def write(self, data: bytes) -> None:
        if not self.lost:
            self.transport.write(data)          # type: ignore[union-attr]

    def pause_reading(self) -> None:
        if not self.reading_paused and not self.lost:
            self.reading_paused = True
            self.transport.pause_reading()      # type: ignore[union-attr]

    def resume_reading(self) -> None:
        if self.reading_paused and not self.lost:
            self.reading_paused = False
            self.transport.resume_reading()     # type: ignore[union-attr]

    # --- timers -----------------------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(seconds, self._expire)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expire(self) -> None:
        self.timer = None
        if self.request is None and not self.lost:
            if self.buffer:
                self.refuse(408, "the request head did not arrive in time")
            else:
                self.transport.close()          # type: ignore[union-attr]

    # --- requests ---------------------------------------------------------------------------------

    def _next(self) -> None:
        """Start the next request in the buffer, if its head is complete."""
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD_BYTES:
                self.refuse(431, "the request head is larger than the limit")
            elif buffer and not self.server.stopping:
                if buffer.strip(b"\r\n") == b"":
                    self.buffer = b""           # blank lines between requests are allowed
                elif not self.head_started:
                    self.head_started = True
                    self._arm(HEAD_TIMEOUT_S)
            return
        if end > MAX_HEAD_BYTES:
            self.refuse(431, "the request head is larger than the limit")
            return
        self._disarm()
        self.head_started = False
        self.buffer = buffer[end + 4:]
        try:
            scope, request = self._parse(buffer[:end].lstrip(b"\r\n"))
        except _Refused as refused:
            self.refuse(refused.status, refused.reason)
            return
        self.request = request
        if not request.complete and self.buffer:
            rest, self.buffer = self.buffer, b""
            self.buffer = request.feed(rest)
            if self.request is None:            # its chunked body was malformed: refused
                return
        if scope.proto == "ws":
            self.task = self.loop.create_task(self._websocket(scope, request))
        else:
            self.task = self.loop.create_task(self._serve(scope, request))

    def _parse(self, head: bytes) -> tuple[Scope, Request]:
        eol = head.find(b"\r\n")
        line = head if eol < 0 else head[:eol]
        method, _, rest = line.partition(b" ")
        target, _, version = rest.partition(b" ")
        if not target or b" " in version or (method not in _METHODS and not (method and all(c in _TOKEN for c in method))):
            raise _Refused(400, "malformed request line")
        if version == b"HTTP/1.1":
            http_version = "1.1"
        elif version == b"HTTP/1.0":
            http_version = "1.0"
        elif version.startswith(b"HTTP/") and len(version) == 8:
            raise _Refused(505, "HTTP version not supported")
        else:
            raise _Refused(400, "malformed request line")
        pairs: list[tuple[str, str]] = []
        if eol >= 0:
            for field in head[eol + 2:].decode("latin-1").split("\r\n"):
                name, sep, value = field.partition(":")
                if not sep or not name or name != name.strip() or "\n" in field or "\r" in field:
                    raise _Refused(400, "malformed header line")
                pairs.append((name.lower(), value.strip(" \t")))
        headers = Headers(pairs)
        target_text = target.decode("latin-1")
        if target_text[:1] != "/":
            if target_text.startswith(("http://", "https://")):     # absolute form: the path is what counts
                target_text = "/" + target_text.split("/", 3)[3] if target_text.count("/") >= 3 else "/"
            elif target_text == "*" and method == b"OPTIONS":
                pass
            else:
                raise _Refused(400, "malformed request target")
        path, _, query = target_text.partition("?")
        path = unquote(path, "utf-8", "replace") if "%" in path else path
        connection = headers.get("connection", "").lower()
        close_after = "close" in connection if http_version == "1.1" else "keep-alive" not in connection
        length, chunked = 0, False
        encoding = headers.get("transfer-encoding")
        if encoding is not None:
            if "content-length" in headers or http_version == "1.0":
                raise _Refused(400, "Transfer-Encoding with Content-Length, or in HTTP/1.0")
            if encoding.lower().replace(" ", "") != "chunked" or len(headers.get_all("transfer-encoding")) > 1:
                raise _Refused(501, f"transfer coding {encoding!r} not supported")
            chunked = True
        elif "content-length" in headers:
            copies = {value.strip() for value in headers.get_all("content-length") for value in value.split(",")}
            value = copies.pop() if len(copies) == 1 else ""
            if not (value.isascii() and value.isdigit()) or len(value) > 18:
                raise _Refused(400, "malformed or conflicting Content-Length")
            length = int(value)
        method_text = method.decode()
        proto = "http"
        if "upgrade" in connection and headers.get("upgrade", "").lower() == "websocket" and method == b"GET":
            proto = "ws"
        continue_ = headers.get("expect", "").lower() == "100-continue" and (chunked or length > 0)
        scope = Scope(proto, http_version, method_text, path, query, headers, self.client, self.local)
        request = Request(self, version, method == b"HEAD", close_after or self.server.stopping, continue_,
                          length, chunked)
        return scope, request

    async def _serve(self, scope: Scope, request: Request) -> None:
        try:
            await self.app.__rsgi__(scope, request)
        except Exception:  # noqa: BLE001 — the app's own failure: a 500 if nothing was sent, else the end
            log.exception("http.app_failed", path=scope.path, method=scope.method)
            if not request.responded:
                request.close_after = True
                request.response_bytes(500, [("content-type", "text/plain")], b"Internal Server Error")
        finally:
            self.task = None
        if not request.responded:
            request.close_after = True
            request.response_bytes(500, [("content-type", "text/plain")], b"The application sent no response")
        elif request.stream is not None:
            request.stream.end()
            return
        self.answered(request)

    def answered(self, request: Request) -> None:
        """The request's answer is complete: go on with the next request, or close."""
        if request is not self.request or self.lost:
            return
        self.request = None
        if request.close_after or not request.complete or self.server.stopping:
            self.transport.close()              # type: ignore[union-attr]
            return
        self.resume_reading()
        if self.buffer:
            self._next()
        if self.request is None and not self.lost:
            self._arm(KEEP_ALIVE_S)

    def refuse(self, status: int, reason: str) -> None:
        """Answer a request this server cannot serve, then close the connection."""
        if self.lost:
            return
        body = json.dumps({"error": {"message": reason, "type": "invalid_request_error", "param": None,
                                     "code": "bad_request"}}).encode()
        self.transport.write(_head(b"HTTP/1.1", status, [("content-type", "application/json")],  # type: ignore[union-attr]
                                   b"content-length: %d\r\nconnection: close\r\n" % len(body)) + body)
        self.transport.close()                  # type: ignore[union-attr]
        self.buffer = b""
        self.request = None

    def close_if_idle(self) -> None:
        if self.request is None and not self.lost:
            self.transport.close()              # type: ignore[union-attr]

    # --- WebSocket --------------------------------------------------------------------------------

    async def _websocket(self, scope: Scope, request: Request) -> None:
        upgrade = WebSocketUpgrade(self, scope, request)
        try:
            await self.app.__rsgi__(scope, upgrade)
        except Exception:  # noqa: BLE001 — the app's failure: the socket closes
            log.exception("http.app_failed", path=scope.path, method="WEBSOCKET")
        finally:
            self.task = None
            upgrade.finish()


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


# --- WebSocket (RFC 6455) -------------------------------------------------------------------------

class Message:
    """A WebSocket message as RSGI gives it: kind 0 closed, 1 bytes, 2 text."""

    __slots__ = ("kind", "data")

    def __init__(self, kind: int, data: Any) -> None:
        self.kind, self.data = kind, data


class WebSocketUpgrade:
    """The RSGI protocol object of a WebSocket request: `accept()` or `close(status)`."""

    def __init__(self, conn: Connection, scope: Scope, request: Request) -> None:
        self.conn, self.scope, self.request = conn, scope, request
        self.socket: WebSocket | None = None

    async def accept(self) -> WebSocket:
        key = self.scope.headers.get("sec-websocket-key", "")
        if self.scope.headers.get("sec-websocket-version") != "13" or len(key) != 24:
            self._status(400)
            raise ClientDisconnected("not a WebSocket handshake this server speaks (version 13)")
        accept = base64.b64encode(hashlib.sha1(key.encode() + _WS_GUID).digest()).decode()
        self.request.responded = True
        self.conn.write(_head(b"HTTP/1.1", 101, [], b"upgrade: websocket\r\nconnection: Upgrade\r\n"
                                                    b"sec-websocket-accept: %s\r\n" % accept.encode()))
        self.conn._disarm()
        self.socket = WebSocket(self.conn)
        self.conn.websocket = self.socket
        if self.conn.buffer:
            rest, self.conn.buffer = self.conn.buffer, b""
            self.socket.feed(rest)
        return self.socket

    def close(self, status: int = 1000) -> None:
        if self.socket is not None:
            self.socket.close(status)
        elif not self.request.responded:
            self._status(status if 400 <= status < 600 else 403)

    def _status(self, status: int) -> None:
        self.request.close_after = True
        self.request.response_bytes(status, [], b"")

    def finish(self) -> None:
        self.request.close_after = True
        if self.socket is not None:
            self.socket.close(1000)
        elif not self.request.responded:
            self._status(500)
        self.conn.answered(self.request)


class WebSocket:
    """An accepted WebSocket: messages in (pings answered, fragments joined), messages out, a close frame."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.buffer = b""
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self.fragments: list[bytes] = []
        self.fragment_kind = 0
        self.closed = False                     # a close frame sent, or the connection gone

    def feed(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        while True:
            if len(buffer) < 2:
                break
            first, second = buffer[0], buffer[1]
            length, at = second & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    break
                length, at = struct.unpack_from("!H", buffer, 2)[0], 4
            elif length == 127:
                if len(buffer) < 10:
                    break
                length, at = struct.unpack_from("!Q", buffer, 2)[0], 10
            if not second & 0x80:
                self._fail(1002, "client frames must be masked")
                return
            if length > WS_MAX_MESSAGE_BYTES:
                self._fail(1009, "message too big")
                return
            if len(buffer) < at + 4 + length:
                break
            mask = buffer[at:at + 4]
            payload = _unmask(buffer[at + 4:at + 4 + length], mask)
            buffer = buffer[at + 4 + length:]
            if not self._frame(first, payload):
                return
        self.buffer = buffer

    def _frame(self, first: int, payload: bytes) -> bool:
        opcode, fin = first & 0x0F, first & 0x80
        if opcode == 0x8:                       # close: answer it, end
            code = struct.unpack_from("!H", payload)[0] if len(payload) >= 2 else 1000
            self.close(code if 1000 <= code < 5000 else 1000)
            self.messages.put_nowait(Message(0, None))
            return False
        if opcode == 0x9:                       # ping: pong
            self._send(0xA, payload)
            return True
        if opcode == 0xA:
            return True
        if opcode in (0x1, 0x2):
            if self.fragments:
                self._fail(1002, "a new message before the last one ended")
                return False
            if fin:
                self._deliver(opcode, payload)
            else:
                self.fragment_kind, self.fragments = opcode, [payload]
            return True
        if opcode == 0x0 and self.fragments:
            self.fragments.append(payload)
            if sum(len(part) for part in self.fragments) > WS_MAX_MESSAGE_BYTES:
                self._fail(1009, "message too big")
                return False
            if fin:
                parts, self.fragments = self.fragments, []
                self._deliver(self.fragment_kind, b"".join(parts))
            return True
        self._fail(1002, "unknown opcode")
        return False

    def _deliver(self, opcode: int, payload: bytes) -> None:
        if opcode == 0x1:
            try:
                self.messages.put_nowait(Message(2, payload.decode()))
            except UnicodeDecodeError:
                self._fail(1007, "text message is not UTF-8")
        else:
            self.messages.put_nowait(Message(1, payload))

    def _fail(self, code: int, reason: str) -> None:
        self.close(code, reason)
        self.messages.put_nowait(Message(0, None))

    def _send(self, opcode: int, payload: bytes) -> None:
        length = len(payload)
        if length < 126:
            head = bytes((0x80 | opcode, length))
        elif length < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 126, length)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 127, length)
        self.conn.write(head + payload)

    async def receive(self) -> Message:
        if self.closed and self.messages.empty():
            return Message(0, None)
        return await self.messages.get()

    async def send_bytes(self, data: bytes) -> None:
        await self._send_message(0x2, data)

    async def send_str(self, data: str) -> None:
        await self._send_message(0x1, data.encode())

    async def _send_message(self, opcode: int, payload: bytes) -> None:
        if self.closed or self.conn.lost:
            raise ClientDisconnected("the WebSocket is closed")
        self._send(opcode, payload)
        if self.conn.write_paused is not None:
            await self.conn.drained()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame with `code` (once), then close the connection."""
        if self.closed:
            return
        self.closed = True
        if not self.conn.lost:
            self._send(0x8, struct.pack("!H", code) + reason.encode()[:120])
            self.conn.transport.close()         # type: ignore[union-attr]

    def lost(self) -> None:
        self.closed = True
        self.messages.put_nowait(Message(0, None))


def _unmask(payload: bytes, mask: bytes) -> bytes:
    if not payload:
        return payload
    key = int.from_bytes(mask * (len(payload) // 4 + 1), "little")
    return (int.from_bytes(payload, "little") ^ (key & ((1 << (8 * len(payload))) - 1))).to_bytes(len(payload),
                                                                                                  "little")


# --- the server -----------------------------------------------------------------------------------

class Server:
    """Serves an RSGI app on listening sockets in the running loop until `stop()`."""

    def __init__(self, app: Any, loop: asyncio.AbstractEventLoop | None = None, grace_s: float = GRACE_S) -> None:
        self.app, self.grace_s = app, grace_s
        self.loop = loop or asyncio.get_event_loop()
        self.connections: set[Connection] = set()
        self.stopping = False
        self._stopped = asyncio.Event()

    async def serve(self, sock: Any, backlog: int = 2048, signals: bool = False) -> None:
        """Accept on `sock` until `stop()` (or SIGTERM/SIGINT when `signals`); then stop accepting, close idle
        connections, and give requests in flight `grace_s` to finish before closing the rest."""
        server = await self.loop.create_server(lambda: Connection(self), sock=sock, backlog=backlog)
        if signals:
            for number in (signal.SIGTERM, signal.SIGINT):
                self.loop.add_signal_handler(number, self.stop)
        try:
            await self._stopped.wait()
        finally:
            server.close()
            deadline = self.loop.time() + self.grace_s
            while self.connections and self.loop.time() < deadline:
                for conn in list(self.connections):
                    conn.close_if_idle()
                if not any(conn.request is not None for conn in self.connections):
                    break
                await asyncio.sleep(0.05)
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.close()

    def stop(self) -> None:
        self.stopping = True
        self._stopped.set()
