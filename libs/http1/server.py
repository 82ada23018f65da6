"""An HTTP/1.1 server on asyncio.Protocol for RSGI applications: the request handed over in the loop that reads it.

    server = Server(app)                     # app: an RSGI application (`__rsgi__(scope, proto)`)
    await server.serve(sock)                 # until stop(); then in-flight requests get `grace_s` to finish
    server.stop()

The gateway's hot path spends most of its time waiting for upstreams and sending small answers. A server
whose HTTP runs in other threads (granian's Rust runtime) pays a hand-off between threads on the way in
and on the way out of every call; here the request is parsed where the app runs, and the answer is one
`write` (docs/performance.md measures the difference). What it speaks:

- HTTP/1.1 and 1.0: keep-alive (1.1's default, 1.0's when asked), requests on one connection served in
  order (pipelined ones wait their turn), `Expect: 100-continue` (1.1 only, never after the answer), bodies by
  Content-Length or chunked; a client that shuts its side after a request gets the answer, then the close;
- the RSGI calls the gateway uses: `await proto()` (the whole body), `async for chunk in proto`,
  `response_bytes/str/empty`, `response_stream` (chunked; `send_bytes`/`send_str`, ended when the handler
  returns), `client_disconnect()`; WebSocket upgrades (`proto.accept()`, `receive()`,
  `send_bytes`/`send_str`, `close(code)`: an HTTP status before the accept, a close frame's code after);
- what it refuses, then closes: a malformed request line or header (400; a target with a byte that is not
  ASCII in its query or not UTF-8 in its path too; an HTTP/1.1 request without Host, a Host line given twice, or
  one that is no host and port), a head over `max_head_bytes` (431), conflicting or malformed framing (400:
  Content-Length and Transfer-Encoding together, two different lengths, a chunk extension or trailer RFC 9112
  does not allow, a body in more than `max_body_chunks` chunks), a transfer coding other than chunked (501), an
  HTTP version other than 1.x (505), a WebSocket handshake it cannot accept (426 for another version than 13,
  else 400);
- what it does not wait for (each a `Server` parameter): a request head not complete within `head_timeout_s`
  of its first byte (408), a body with no byte for `body_timeout_s` (the app's read fails), a connection idle
  for `keep_alive_s` between requests, a client that has read none of the output waiting for it for
  `send_timeout_s` (dropped, with that output; the app's send fails), a WebSocket message not whole
  `ws_message_timeout_s` after its first byte (1008); nor does it read a WebSocket message larger than
  `ws_max_message_bytes` (default: the app's `max_body_bytes`; 1009 as soon as a frame's header says so);
- how many connections it holds: at most `max_connections` (default: `default_max_connections()`). One more
  closes the connection idle longest (between requests, or still sending a request head; else the one waiting
  longest for its request's body to begin, if it waited `body_start_s`: by default any) to make room, and is
  answered 503 only when every connection has a request in flight: clients that open connections and hold them cannot take the process's
  open files, which its upstream calls need too.

Header names reach the app lower-cased; `scope.headers.get(name)` is the first value,
`get_all(name)` every one (repeated `Connection` lines are read as one list). The path is percent-decoded, the
query string as sent.
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import signal
from typing import Any
from urllib.parse import unquote

import structlog

from switchyard_gateway.http1.exchange import BODY_TIMEOUT_S, BodyRefused, ClientDisconnected, Headers, Request, \
    Scope, response_head
from switchyard_gateway.http1.websocket import WS_MAX_MESSAGE_BYTES, WS_MESSAGE_TIMEOUT_S, WebSocket, \
    WebSocketUpgrade

__all__ = ["BodyRefused", "ClientDisconnected", "Server"]

log = structlog.get_logger()

MAX_HEAD_BYTES = 64 * 1024        # request line and headers
HEAD_TIMEOUT_S = 30.0             # from a request head's first byte to its blank line
KEEP_ALIVE_S = 75.0               # an idle connection between requests
SEND_TIMEOUT_S = 60.0             # output written and not read by the client, with no byte of it read this long
SEND_LOOKS = 4                    # ... is looked at this many times per SEND_TIMEOUT_S
GRACE_S = 5.0                     # at stop: how long requests in flight may take to finish
MAX_CONNECTIONS = 10_000          # client connections held at once, unless the open-file limit allows fewer
# at the connection limit, the request waiting longest for its body to begin is closed if it waited this long: none
# (a grace let heads sent faster than it lapses, 4,000 a second from one client, keep every caller out for good;
# a caller's body begins within a round trip, and the one waiting longest is a flood's oldest)
BODY_START_S = 0.0
MIN_BODY_CHUNKS = 4096            # a request body may come in this many chunks, or more with a larger body limit,
BYTES_PER_CHUNK = 4               # ... one per this many bytes of the app's `max_body_bytes`: a JSON encoder streamed
                                  # token by token (iterencode into httpx) sends about one chunk per 4 bytes, and at
                                  # ~0.7 us a chunk a body at a 4 MiB limit costs at most ~0.7 s (1-byte chunks had no
                                  # bound: 30 MB of them cost 4.3 s)
SHED_LOG_EVERY_S = 10.0           # connections closed or refused at the limit: one warning at most this often

_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")      # a token (RFC 9110 5.6.2)
# RFC 9112 3.2: a Host value is `uri-host [":" port]` (RFC 3986: a name, an IPv4 address, or an IP literal in [])
_HOST = re.compile(r"[A-Za-z0-9\-._~%!$&'()*+,;=]*(?::[0-9]*)?|\[[0-9A-Fa-f:.vV\-._~!$&'()*+,;=]+\](?::[0-9]*)?")
_METHODS = frozenset((b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"OPTIONS"))


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
        self.send_timer: asyncio.TimerHandle | None = None     # runs while output waits for the client to read
        self.send_mark = 0                      # output unread at the last look (plus what was written since)
        self.send_since = 0.0                   # when the client last read any of it
        self.watchers: list[asyncio.Future[None]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.client = self.local = ""
        self.websocket: WebSocket | None = None
        self.head_started = False               # a request head's first bytes are here: its timer runs
        self.path_seen = ""                     # the path of the request being read or served, once known
        self.scanned = 0                        # the buffer holds no head's end before this offset
        self.held_back = False                  # the next request waits for the client to read its answers

    # --- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport              # type: ignore[assignment]
        server = self.server
        if len(server.connections) >= server.max_connections and not server.make_room():
            self.refuse(503, "the server holds as many connections as it may, each with a request in flight; "
                             "retry shortly")
            return
        server.connections.add(self)
        server.idle[self] = None
        peer, local = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
        self.client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ""
        self.local = f"{local[0]}:{local[1]}" if isinstance(local, tuple) else ""
        self._arm(server.keep_alive_s)

    def data_received(self, data: bytes) -> None:
        if self.websocket is not None:
            self.websocket.feed(data)
            return
        request = self.request
        if request is not None and not request.complete:
            data = request.feed(data)
            if not data:
                return
        buffer = self.buffer
        if buffer:                              # a head arriving in pieces grows in place, not copied per piece
            if type(buffer) is not bytearray:
                buffer = self.buffer = bytearray(buffer)
            buffer += data
        else:
            buffer = self.buffer = data
        if request is None:
            self._next()
        elif len(buffer) > MAX_HEAD_BYTES:      # pipelined requests pile up: wait until this one is answered
            self.pause_reading()

    def eof_received(self) -> bool:
        """The client ended its side: it is taken as gone, and a call in flight is cancelled as any whose client
        leaves (nginx reads it so too, 499). A client that only shut its side and waits for the answer
        (`shutdown(SHUT_WR)`) and one that timed out and closed look alike until something is sent; cancelling is
        the reading that never bills an answer nobody will read."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server.connections.discard(self)
        self.server.idle.pop(self, None)
        self.server.awaiting_body.pop(self, None)
        self._disarm()
        if self.send_timer is not None:
            self.send_timer.cancel()
            self.send_timer = None
        for watcher in self.watchers:
            if not watcher.done():
                watcher.set_result(None)
        self.watchers.clear()
        request = self.request
        if request is not None and request.waiter is not None and not request.waiter.done():
            request.waiter.set_exception(ClientDisconnected("the client closed the connection"))
        if self.write_paused is not None and not self.write_paused.done():
            self.write_paused.set_exception(ClientDisconnected("the client closed the connection"))
            self.write_paused.exception()       # whoever waits hears it; nobody waiting is no error to report
        if self.websocket is not None:
            self.websocket.lost()

    def pause_writing(self) -> None:
        if self.write_paused is None:
            self.write_paused = self.loop.create_future()
        if self.send_timer is None and not self.lost:
            self.send_mark = self.transport.get_write_buffer_size()     # type: ignore[union-attr]
            self.send_since = self.loop.time()
            self.send_timer = self.loop.call_later(self.server.send_timeout_s / SEND_LOOKS, self._send_stalled)

    def resume_writing(self) -> None:
        if self.send_timer is not None:
            self.send_timer.cancel()
            self.send_timer = None
        paused, self.write_paused = self.write_paused, None
        if paused is not None and not paused.done():
            paused.set_result(None)
        if self.held_back and self.request is None and not self.lost:
            self.held_back = False
            self._go_on()
        if self.websocket is not None:
            self.websocket.throttle()

    async def drained(self) -> None:
        paused = self.write_paused
        if paused is not None:
            await asyncio.shield(paused)

    def write(self, data: bytes) -> None:
        if not self.lost:
            self.transport.write(data)          # type: ignore[union-attr]
            if self.send_timer is not None:     # written while the client is behind: not progress of its reading
                self.send_mark += len(data)

    def writelines(self, parts: tuple[bytes, ...]) -> None:
        """`write` of the parts one after the other, without joining them first (uvloop writes them as one)."""
        if not self.lost:
            self.transport.writelines(parts)    # type: ignore[union-attr]
            if self.send_timer is not None:
                self.send_mark += sum(map(len, parts))

    def _send_stalled(self) -> None:
        """The send deadline, looked at SEND_LOOKS times per `send_timeout_s` while output waits for the client to
        read it. Some of it read since the last look is progress (a slow reader is served); none for
        `send_timeout_s` is a client that stopped reading, whose unread answer would hold this process's memory,
        the request's task and its upstream connection for as long as it keeps the connection open. Aborted: the
        buffer is dropped, and whoever sends sees the client gone."""
        self.send_timer = None
        if self.lost:
            return
        unread, now = self.transport.get_write_buffer_size(), self.loop.time()     # type: ignore[union-attr]
        if not unread:
            return
        if unread < self.send_mark:
            self.send_mark, self.send_since = unread, now
        elif now - self.send_since >= self.server.send_timeout_s:
            self.abort()
            return
        self.send_timer = self.loop.call_later(self.server.send_timeout_s / SEND_LOOKS, self._send_stalled)

    def abort(self) -> None:
        """Drop the connection and what it has not sent (`close` would wait, for ever, for a client that does not
        read to take it)."""
        if not self.lost and self.transport is not None:
            self.transport.abort()

    def shut(self) -> None:
        """Close the connection: after its unsent output if there is none waiting, else at once (an idle connection
        closed with an answer still unread is a client that stopped reading it)."""
        transport = self.transport
        if transport is None or self.lost:
            return
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()

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
            if self.held_back:                  # its answers stayed unread: nothing to say that it would read
                self.shut()
            elif self.buffer and self.buffer != b"\r":
                self._refuse_head(408, "the request head did not arrive in time")
            else:
                self.shut()

    # --- requests ---------------------------------------------------------------------------------

    def _next(self) -> None:
        """Start the next request in the buffer, if its head is complete (blank lines before it are skipped, as
        RFC 9112 2.2 asks)."""
        buffer = self.buffer
        if buffer[:2] == b"\r\n":
            buffer = self.buffer = bytes(buffer).lstrip(b"\r\n") or _lone_cr(buffer)
            self.scanned = 0
        end = buffer.find(b"\r\n\r\n", self.scanned)
        if end < 0:
            if len(buffer) > MAX_HEAD_BYTES:
                self._refuse_head(431, "the request head is larger than the limit")
            elif buffer.find(b"\n\n", self.scanned) >= 0 or buffer.find(b"\n\r\n", self.scanned) >= 0:
                self._refuse_head(400, "malformed request head: its lines must end in CRLF")   # not wait out the timer
            elif buffer and not self.server.stopping:
                if buffer.strip(b"\r\n") == b"":
                    self.buffer = _lone_cr(buffer)  # blank lines between requests are allowed
                else:
                    self.scanned = max(0, len(buffer) - 3)      # the next piece is searched from here on
                    if not self.head_started:
                        self.head_started = True
                        self._arm(self.server.head_timeout_s)
            return
        if end > MAX_HEAD_BYTES:
            self._refuse_head(431, "the request head is larger than the limit")
            return
        self._disarm()
        self.head_started = False
        self.path_seen = ""
        self.scanned = 0
        head = buffer[:end]
        if type(buffer) is bytearray:
            head, self.buffer = bytes(head), bytes(buffer[end + 4:])
        else:
            self.buffer = buffer[end + 4:]
        try:
            scope, request = self._parse(head.lstrip(b"\r\n"))
        except _Refused as refused:
            self.refuse(refused.status, refused.reason)
            return
        self.request = request
        self.server.idle.pop(self, None)        # busy: not one to close for room
        if not request.complete:
            if self.buffer:
                rest, self.buffer = self.buffer, b""
                self.buffer = request.feed(rest)
                if self.request is None:        # its chunked body was malformed: refused
                    return
            if not request.received:            # a head that promises a body: until it begins, closable for room
                self.server.awaiting_body[self] = (request, self.loop.time())
        if scope.proto == "ws":
            self.task = self.loop.create_task(self._websocket(scope, request))
        else:
            self.task = self.loop.create_task(self._serve(scope, request))

    def _parse(self, head: bytes) -> tuple[Scope, Request]:
        eol = head.find(b"\r\n")
        line = head if eol < 0 else head[:eol]
        method, _, rest = line.partition(b" ")
        target, _, version = rest.partition(b" ")
        known = method in _METHODS or (method and all(c in _TOKEN for c in method))
        if not target or b" " in version or not known:
            raise _Refused(400, "malformed request line")
        if version == b"HTTP/1.1":
            http_version = "1.1"
        elif version == b"HTTP/1.0":
            http_version = "1.0"
        elif version.startswith(b"HTTP/") and len(version) == 8:
            raise _Refused(505, "HTTP version not supported")
        else:
            raise _Refused(400, "malformed request line")
        if target.isascii():
            target_text = target.decode("ascii")
        else:                                   # RFC 9112 3.2: the target is ASCII; a raw UTF-8 path is tolerated
            before, mark, after = target.partition(b"?")
            try:
                target_text = before.decode("utf-8") + mark.decode() + after.decode("ascii")
            except UnicodeDecodeError:
                raise _Refused(400, "malformed request target: bytes that are not ASCII") from None
        if target_text[:1] != "/":
            if target_text.startswith(("http://", "https://")):     # absolute form: the path is what counts
                target_text = "/" + target_text.split("/", 3)[3] if target_text.count("/") >= 3 else "/"
            elif target_text == "*" and method == b"OPTIONS":
                pass
            else:
                raise _Refused(400, "malformed request target")
        path, _, query = target_text.partition("?")
        path = unquote(path, "utf-8", "replace") if "%" in path else path
        self.path_seen = path                   # a refusal of the headers below answers in this path's shape
        pairs: list[tuple[str, str]] = []
        if eol >= 0:
            for field in head[eol + 2:].decode("latin-1").split("\r\n"):
                name, sep, value = field.partition(":")
                if not sep or not name or "\n" in field or "\r" in field or "\x00" in value or \
                        not _HEADER_NAME.fullmatch(name):            # a name is a token: no space, no NUL
                    raise _Refused(400, "malformed header line")
                pairs.append((name.lower(), value.strip(" \t")))
        headers = Headers(pairs)
        host = headers.get("host")
        if host is None:
            if http_version == "1.1":                        # RFC 9112 3.2: an HTTP/1.1 request names its host
                raise _Refused(400, "missing Host")
        elif not _HOST.fullmatch(host) or len(headers) != len(pairs) and len(headers.get_all("host")) > 1:
            raise _Refused(400, "malformed or repeated Host")            # RFC 9112 3.2
        connection = headers.get("connection", "").lower()
        if len(headers) != len(pairs) and "connection" in headers:     # RFC 9110 5.3: repeated lines are one list
            connection = ", ".join(headers.get_all("connection")).lower()
        close_after = "close" in connection if http_version == "1.1" else "keep-alive" not in connection
        length, chunked = 0, False
        encoding = headers.get("transfer-encoding")
        if encoding is not None:
            if "content-length" in headers or http_version == "1.0":
                raise _Refused(400, "Transfer-Encoding with Content-Length, or in HTTP/1.0")
            if encoding.lower().strip(" \t") != "chunked" or len(headers.get_all("transfer-encoding")) > 1:
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
            proto = "ws"                        # an HTTP/1.0 one too: refused as a handshake, not served as a GET
        continue_ = http_version == "1.1" and (chunked or length > 0) and \
            headers.get("expect", "").lower() == "100-continue"      # RFC 9110 15.2: not to an HTTP/1.0 client
        scope = Scope(proto, http_version, method_text, path, query, headers, self.client, self.local)
        request = Request(self, version, method == b"HEAD", close_after or self.server.stopping, continue_,
                          length, chunked)
        return scope, request

    async def _serve(self, scope: Scope, request: Request) -> None:
        try:
            await self.app.__rsgi__(scope, request)
        except Exception:  # noqa: BLE001 — the app's own failure: a 500 if nothing was sent, else a cut stream
            log.exception("http.app_failed", path=scope.path, method=scope.method)
            if not request.responded:
                request.close_after = True
                request.response_bytes(500, [("content-type", "text/plain")], b"Internal Server Error")
            elif request.stream is not None:    # no last chunk: the client must not take the stream for whole
                request.stream.ended, request.stream = True, None
                request.close_after = True
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
        if self.write_paused is not None:       # a client that does not read its answers gets no more of them:
            self.held_back = True               # pipelined requests would each add an answer to the unsent pile
            self.pause_reading()
            self._arm(self.server.keep_alive_s)
            self.server.idle[self] = None
            return
        self._go_on()

    def _go_on(self) -> None:
        """Read again, and start the next request the buffer holds (else wait, idle, for one)."""
        self.resume_reading()
        if self.buffer:
            self._next()
        if self.request is None and not self.lost:
            if not self.head_started:           # else the next head has begun: its own timer runs
                self._arm(self.server.keep_alive_s)
            self.server.idle[self] = None       # idle from now: the last to be closed for room

    def refuse(self, status: int, reason: str) -> None:
        """Answer a request this server cannot serve, then close the connection. The body is the app's
        `error_body(path, status, message)` when it has one (its error shape for that path), else OpenAI's."""
        if self.lost:
            return
        body = self.error_body(status, reason)
        framing = b"content-length: %d\r\nconnection: close\r\n" % len(body)
        self.transport.write(response_head(  # type: ignore[union-attr]
            b"HTTP/1.1", status, [("content-type", "application/json")], framing) + body)
        self.transport.close()                  # type: ignore[union-attr]
        self.buffer = b""
        self.scanned = 0
        if self.request is not None:            # an app waiting for the refused body hears it now
            self.request.fail(reason, status)
        self.request = None

    def error_body(self, status: int, reason: str) -> bytes:
        """A refusal's body: the app's `error_body(path, status, message)` when it has one, else OpenAI's shape."""
        render = self.server.error_body
        return render(self.path_seen, status, reason) if render is not None else json.dumps(
            {"error": {"message": reason, "type": "invalid_request_error", "param": None, "code": None}}).encode()

    def _refuse_head(self, status: int, reason: str) -> None:
        """Refuse the request whose head the buffer holds, unparsed, in the error shape of its path."""
        self.path_seen = _path_of(self.buffer)
        self.refuse(status, reason)

    def close_if_idle(self) -> None:
        if self.request is None and not self.lost:
            self.transport.close()              # type: ignore[union-attr]

    # --- WebSocket --------------------------------------------------------------------------------

    async def _websocket(self, scope: Scope, request: Request) -> None:
        upgrade = WebSocketUpgrade(self, scope, request)
        problem = upgrade.handshake_problem()
        if problem is not None:                 # not a handshake to accept: refused here, the app not troubled
            upgrade.refuse_handshake(problem[0], self.error_body(*problem))
            self.task = None
            upgrade.finish()
            return
        try:
            await self.app.__rsgi__(scope, upgrade)
        except Exception:  # noqa: BLE001 — the app's failure: the socket closes
            log.exception("http.app_failed", path=scope.path, method="WEBSOCKET")
        finally:
            self.task = None
            upgrade.finish()


def _lone_cr(blank: bytes | bytearray) -> bytes:
    """What is kept of blank lines between requests: a CR that ended the read, whose LF is in the next one (else
    that LF would start the next request's head and have it refused)."""
    return b"\r" if blank[-1:] == b"\r" else b""


def _path_of(head: bytes | bytearray) -> str:
    """The path of a request line at the start of `head`, as far as it can be read: for the error shape of a
    refusal that comes before the head is parsed."""
    line = bytes(head[:min(len(head), 8192)]).lstrip(b"\r\n").split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    return parts[1].partition(b"?")[0].decode("ascii", "replace") if len(parts) > 1 else ""


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def default_max_connections(open_files: int | None = None) -> int:
    """The connections a server holds by default: MAX_CONNECTIONS, or fewer when the process's open-file limit
    (`open_files`, default: the soft RLIMIT_NOFILE) would not leave room beside them for what the process opens
    itself (upstream connections, NATS, Valkey, journals): a quarter of the limit, at least 64 and at most 2,048
    files, is kept for those."""
    if open_files is None:
        open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if open_files == resource.RLIM_INFINITY or open_files <= 0:
        return MAX_CONNECTIONS
    kept = max(64, min(2048, open_files // 4))
    return max(1, min(MAX_CONNECTIONS, open_files - kept))


class Server:
    """Serves an RSGI app on listening sockets in the running loop until `stop()`."""

    def __init__(self, app: Any, loop: asyncio.AbstractEventLoop | None = None, grace_s: float = GRACE_S,
                 head_timeout_s: float = HEAD_TIMEOUT_S, body_timeout_s: float = BODY_TIMEOUT_S,
                 keep_alive_s: float = KEEP_ALIVE_S, max_connections: int = 0,
                 send_timeout_s: float = SEND_TIMEOUT_S, max_body_chunks: int = 0,
                 body_start_s: float = BODY_START_S, ws_max_message_bytes: int = 0,
                 ws_message_timeout_s: float = WS_MESSAGE_TIMEOUT_S) -> None:
        self.app, self.grace_s = app, grace_s
        # a WebSocket message may be as large as a request body (the app's `max_body_bytes`), when the app says
        self.ws_max_message_bytes = ws_max_message_bytes or getattr(app, "max_body_bytes", 0) or WS_MAX_MESSAGE_BYTES
        self.ws_message_timeout_s = ws_message_timeout_s
        self.send_timeout_s, self.body_start_s = send_timeout_s, body_start_s
        # the chunks a request body may come in: one per BYTES_PER_CHUNK of the app's body limit, at least
        # MIN_BODY_CHUNKS
        self.max_body_chunks = max_body_chunks or max(MIN_BODY_CHUNKS,
                                                      (getattr(app, "max_body_bytes", 0) or 0) // BYTES_PER_CHUNK)
        self.head_timeout_s, self.body_timeout_s, self.keep_alive_s = head_timeout_s, body_timeout_s, keep_alive_s
        self.max_connections = max_connections if max_connections > 0 else default_max_connections()
        self.loop = loop or asyncio.get_event_loop()
        self.connections: set[Connection] = set()
        self.idle: dict[Connection, None] = {}  # connections with no request in flight, the longest idle first
        # requests whose body has not begun, and since when, the longest waiting first (stale entries included)
        self.awaiting_body: dict[Connection, tuple[Request, float]] = {}
        self.error_body = getattr(app, "error_body", None)     # the app's error shape for refused requests
        self.on_shed = getattr(app, "connection_shed", None)   # told "idle_closed" or "refused" at the limit
        self.shed = {"idle_closed": 0, "refused": 0}
        self._warned_at = -SHED_LOG_EVERY_S
        self.stopping = False
        self._stopped = asyncio.Event()

    def make_room(self) -> bool:
        """At the limit: close the connection idle longest, if one is idle, else the one longest waiting past
        `body_start_s` for the first byte of a request's body (a head promising a body that never comes holds
        a connection as a request in flight would); False if every one is busy."""
        conn = next(iter(self.idle), None)
        if conn is None:
            conn = self._body_never_began()
        if conn is None:
            self._shed("refused")
            return False
        self.idle.pop(conn, None)
        self.connections.discard(conn)          # counted out now: its close completes on the loop's next turn
        conn.shut()
        self._shed("idle_closed")
        return True

    def _body_never_began(self) -> Connection | None:
        """The connection waiting longest, and over `body_start_s`, for its request's body to begin. Entries whose
        body has begun since, or whose connection moved on, are dropped as they are met: each costs one look."""
        waiting, deadline = self.awaiting_body, self.loop.time() - self.body_start_s
        while waiting:
            conn = next(iter(waiting))
            request, since = waiting[conn]
            if conn.lost or conn.request is not request or request.received or request.complete:
                del waiting[conn]
                continue
            if since > deadline:
                return None
            del waiting[conn]
            return conn
        return None

    def _shed(self, how: str) -> None:
        self.shed[how] += 1
        if self.on_shed is not None:
            self.on_shed(how)
        now = self.loop.time()
        if now - self._warned_at >= SHED_LOG_EVERY_S:
            self._warned_at = now
            log.warning("http.connections_at_limit", limit=self.max_connections, **self.shed)

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
