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
- what it does not wait for (each a `Server` parameter): a request head not complete within `head_timeout_s`
  of its first byte (408), a body with no byte for `body_timeout_s` (the app's read fails), a connection idle
  for `keep_alive_s` between requests;
- how many connections it holds: at most `max_connections` (default: `default_max_connections()`). One more
  closes the connection idle longest (between requests, or still sending a request head) to make room, and is
  answered 503 only when every connection has a request in flight: clients that open connections and hold them
  cannot take the process's open files, which its upstream calls need too.

Header names reach the app lower-cased; `scope.headers.get(name)` is the first value,
`get_all(name)` every one. The path is percent-decoded, the query string as sent.
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

from switchyard_gateway.http1.exchange import BODY_TIMEOUT_S, ClientDisconnected, Headers, Request, Scope, \
    response_head
from switchyard_gateway.http1.websocket import WebSocket, WebSocketUpgrade

__all__ = ["ClientDisconnected", "Server"]

log = structlog.get_logger()

MAX_HEAD_BYTES = 64 * 1024        # request line and headers
HEAD_TIMEOUT_S = 30.0             # from a request head's first byte to its blank line
KEEP_ALIVE_S = 75.0               # an idle connection between requests
GRACE_S = 5.0                     # at stop: how long requests in flight may take to finish
MAX_CONNECTIONS = 10_000          # client connections held at once, unless the open-file limit allows fewer
SHED_LOG_EVERY_S = 10.0           # connections closed or refused at the limit: one warning at most this often

_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")      # a token (RFC 9110 5.6.2)
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

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server.connections.discard(self)
        self.server.idle.pop(self, None)
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
            self.write_paused.exception()       # whoever waits hears it; nobody waiting is no error to report
        if self.websocket is not None:
            self.websocket.lost()

    def pause_writing(self) -> None:
        if self.write_paused is None:
            self.write_paused = self.loop.create_future()

    def resume_writing(self) -> None:
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
                self.transport.close()          # type: ignore[union-attr]
            elif self.buffer:
                self.refuse(408, "the request head did not arrive in time")
            else:
                self.transport.close()          # type: ignore[union-attr]

    # --- requests ---------------------------------------------------------------------------------

    def _next(self) -> None:
        """Start the next request in the buffer, if its head is complete (blank lines before it are skipped, as
        RFC 9112 2.2 asks)."""
        buffer = self.buffer
        if buffer[:2] == b"\r\n":
            buffer = self.buffer = bytes(buffer).lstrip(b"\r\n")
            self.scanned = 0
        end = buffer.find(b"\r\n\r\n", self.scanned)
        if end < 0:
            if len(buffer) > MAX_HEAD_BYTES:
                self.refuse(431, "the request head is larger than the limit")
            elif buffer.find(b"\n\n", self.scanned) >= 0 or buffer.find(b"\n\r\n", self.scanned) >= 0:
                self.refuse(400, "malformed request head: its lines must end in CRLF")   # not wait out the timer
            elif buffer and not self.server.stopping:
                if buffer.strip(b"\r\n") == b"":
                    self.buffer = b""           # blank lines between requests are allowed
                else:
                    self.scanned = max(0, len(buffer) - 3)      # the next piece is searched from here on
                    if not self.head_started:
                        self.head_started = True
                        self._arm(self.server.head_timeout_s)
            return
        if end > MAX_HEAD_BYTES:
            self.refuse(431, "the request head is larger than the limit")
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
        pairs: list[tuple[str, str]] = []
        if eol >= 0:
            for field in head[eol + 2:].decode("latin-1").split("\r\n"):
                name, sep, value = field.partition(":")
                if not sep or not name or "\n" in field or "\r" in field or "\x00" in value or \
                        not _HEADER_NAME.fullmatch(name):            # a name is a token: no space, no NUL
                    raise _Refused(400, "malformed header line")
                pairs.append((name.lower(), value.strip(" \t")))
        headers = Headers(pairs)
        target_text = target.decode("ascii") if target.isascii() else target.decode("utf-8", "replace")
        if target_text[:1] != "/":
            if target_text.startswith(("http://", "https://")):     # absolute form: the path is what counts
                target_text = "/" + target_text.split("/", 3)[3] if target_text.count("/") >= 3 else "/"
            elif target_text == "*" and method == b"OPTIONS":
                pass
            else:
                raise _Refused(400, "malformed request target")
        path, _, query = target_text.partition("?")
        path = unquote(path, "utf-8", "replace") if "%" in path else path
        self.path_seen = path
        connection = headers.get("connection", "").lower()
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
            proto = "ws"
        continue_ = headers.get("expect", "").lower() == "100-continue" and (chunked or length > 0)
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
            self._arm(self.server.keep_alive_s)
            self.server.idle[self] = None       # idle from now: the last to be closed for room

    def refuse(self, status: int, reason: str) -> None:
        """Answer a request this server cannot serve, then close the connection. The body is the app's
        `error_body(path, status, message)` when it has one (its error shape for that path), else OpenAI's."""
        if self.lost:
            return
        render = self.server.error_body
        body = render(self.path_seen, status, reason) if render is not None else json.dumps(
            {"error": {"message": reason, "type": "invalid_request_error", "param": None, "code": None}}).encode()
        framing = b"content-length: %d\r\nconnection: close\r\n" % len(body)
        self.transport.write(response_head(  # type: ignore[union-attr]
            b"HTTP/1.1", status, [("content-type", "application/json")], framing) + body)
        self.transport.close()                  # type: ignore[union-attr]
        self.buffer = b""
        self.scanned = 0
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
                 keep_alive_s: float = KEEP_ALIVE_S, max_connections: int = 0) -> None:
        self.app, self.grace_s = app, grace_s
        self.head_timeout_s, self.body_timeout_s, self.keep_alive_s = head_timeout_s, body_timeout_s, keep_alive_s
        self.max_connections = max_connections if max_connections > 0 else default_max_connections()
        self.loop = loop or asyncio.get_event_loop()
        self.connections: set[Connection] = set()
        self.idle: dict[Connection, None] = {}  # connections with no request in flight, the longest idle first
        self.error_body = getattr(app, "error_body", None)     # the app's error shape for refused requests
        self.on_shed = getattr(app, "connection_shed", None)   # told "idle_closed" or "refused" at the limit
        self.shed = {"idle_closed": 0, "refused": 0}
        self._warned_at = -SHED_LOG_EVERY_S
        self.stopping = False
        self._stopped = asyncio.Event()

    def make_room(self) -> bool:
        """At the limit: close the connection idle longest, if one is idle; False if every one is busy."""
        conn = next(iter(self.idle), None)
        if conn is None:
            self._shed("refused")
            return False
        del self.idle[conn]
        self.connections.discard(conn)          # counted out now: its close completes on the loop's next turn
        if conn.transport is not None:
            conn.transport.close()
        self._shed("idle_closed")
        return True

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
