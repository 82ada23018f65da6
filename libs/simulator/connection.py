"""One client connection: read requests off the wire and answer them in order, now or paced.

A reply due at once is written from `data_received` itself; only delayed, paced or faulty
replies get a task, and requests pipelined behind them wait in a queue.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

import structlog

from switchyard_gateway.simulator.replies import TEXT, Reply, StreamReply
from switchyard_gateway.simulator.wire import (
    LAST_CHUNK,
    MAX_HEAD_BYTES,
    App,
    BadRequest,
    Plan,
    Request,
    body_length,
    chunk,
    parse_chunked,
    parse_head,
    response_head,
)

log = structlog.get_logger("switchyard.simulator")

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
FLUSH_DEADLINE_S = 2.0


class HttpConnection(asyncio.Protocol):
    """Serves one TCP connection with `app`; lists itself in `registry` while open. `on_abandoned()` is called
    when the client closes the connection while a reply is still being prepared or paced."""

    def __init__(self, app: App, registry: set[HttpConnection],
                 on_abandoned: Callable[[], None] | None = None) -> None:
        self._app = app
        self._registry = registry
        self._on_abandoned = on_abandoned
        self._transport: asyncio.Transport | None = None
        self._buf = b""
        self._head: Request | None = None  # parsed head whose body is still arriving
        self._length: int | None = 0
        self._continued = False
        self._busy = False
        self._queue: deque[Request] = deque()
        self._task: asyncio.Task[None] | None = None

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._registry.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._registry.discard(self)
        if self._busy and self._on_abandoned is not None:
            self._on_abandoned()
        if self._task is not None:
            self._task.cancel()

    def data_received(self, data: bytes) -> None:
        self._buf = self._buf + data if self._buf else data
        try:
            while self._buf and not self.closed:
                req = self._next_request()
                if req is None:
                    break
                if self._busy:
                    self._queue.append(req)
                else:
                    self._serve(req)
        except BadRequest as exc:
            message = str(exc).encode()
            self._transport.write(response_head(exc.status, TEXT, len(message), False) + message)
            self._transport.close()

    @property
    def busy(self) -> bool:
        """Answering a request that waits or is paced (until its reply is written)."""
        return self._busy

    @property
    def closed(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def close(self) -> None:
        """Close the connection (what is already written still goes out)."""
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection at once, discarding anything not yet sent."""
        if self._transport is not None:
            self._transport.abort()

    # --- reading -----------------------------------------------------------------------

    def _next_request(self) -> Request | None:
        buf = self._buf
        if self._head is None:
            if buf[:2] == b"\r\n":  # stray line breaks between requests are allowed
                buf = self._buf = buf.lstrip(b"\r\n")
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    raise BadRequest(431, "request head too large")
                return None
            self._head = parse_head(buf[:end])
            self._length = body_length(self._head)
            self._continued = False
            buf = self._buf = buf[end + 4 :]
        req = self._head
        if self._length is None:
            parsed = parse_chunked(buf, 0)
            if parsed is None:
                self._maybe_continue(req)
                return None
            req.body, used = parsed
        else:
            used = self._length
            if len(buf) < used:
                self._maybe_continue(req)
                return None
            req.body = buf[:used]
        self._buf = buf[used:]
        self._head = None
        return req

    def _maybe_continue(self, req: Request) -> None:
        if not self._continued and req.header(b"expect") == b"100-continue":
            self._continued = True
            self._transport.write(CONTINUE)

    # --- answering ---------------------------------------------------------------------

    def _serve(self, req: Request) -> None:
        try:
            out = self._app(req)
        except Exception:
            log.exception("simulator_route_failed", path=req.path)
            out = Reply(500, b"internal simulator error", TEXT)
        if type(out) is Plan:
            self._busy = True
            if out.fault != "hang" or out.delay_s > 0:  # a hang with no delay needs no task
                self._task = asyncio.get_running_loop().create_task(self._play(out, req))
        else:
            self._send(out, req)

    def _send(self, reply: Reply | StreamReply, req: Request) -> None:
        transport = self._transport
        keep = req.keep_alive
        if type(reply) is Reply:
            head = response_head(
                reply.status, reply.content_type, len(reply.body), keep, reply.headers
            )
            transport.write(head if req.method == "HEAD" else head + reply.body)
        elif req.http11:
            body = b"".join([chunk(c) for c in reply.chunks])
            transport.write(response_head(200, reply.content_type, None, keep) + body + LAST_CHUNK)
        else:  # HTTP/1.0 has no chunking: the body ends when the connection closes
            transport.write(response_head(200, reply.content_type, None, False, chunked=False))
            transport.write(b"".join(reply.chunks))
            keep = False
        if not keep:
            transport.close()

    async def _play(self, plan: Plan, req: Request) -> None:
        if plan.delay_s > 0:
            await asyncio.sleep(plan.delay_s)
        if plan.fault == "hang" or self.closed:
            return  # stays busy: nothing more is answered on this connection
        reply = plan.reply
        if plan.fault in ("cut", "cut_end"):
            await self._cut(reply, req, plan.interval_s, whole=plan.fault == "cut_end")
            return
        if type(reply) is StreamReply and (plan.interval_s > 0 or plan.end_delay_s > 0):
            await self._pace(reply, req, plan.interval_s, plan.end_delay_s)
        else:
            self._send(reply, req)
        self._task = None
        self._busy = False
        while self._queue and not self._busy and not self.closed:
            self._serve(self._queue.popleft())

    async def _write_chunks(self, chunks: list[bytes], interval_s: float, chunked: bool) -> None:
        for i, data in enumerate(chunks):
            if i and interval_s > 0:
                await asyncio.sleep(interval_s)
            if self.closed:
                return
            self._transport.write(chunk(data) if chunked else data)

    async def _pace(self, reply: StreamReply, req: Request, interval_s: float, end_delay_s: float = 0.0) -> None:
        chunked = req.http11
        keep = req.keep_alive and chunked
        self._transport.write(response_head(200, reply.content_type, None, keep, chunked=chunked))
        await self._write_chunks(reply.chunks, interval_s, chunked)
        if end_delay_s > 0 and not self.closed:
            await asyncio.sleep(end_delay_s)       # the last event is out; the body ends later
        if self.closed:
            return
        if chunked:
            self._transport.write(LAST_CHUNK)
        if not keep:
            self._transport.close()

    async def _cut(self, reply: Reply | StreamReply, req: Request, interval_s: float, whole: bool = False) -> None:
        """Send about half of the reply (`whole`: all of it, a stream without its body's end), then drop the
        connection without finishing it."""
        transport = self._transport
        if type(reply) is Reply:
            head = response_head(
                reply.status, reply.content_type, len(reply.body), True, reply.headers
            )
            transport.write(head + (reply.body if whole else reply.body[: len(reply.body) // 2]))
        else:
            transport.write(response_head(200, reply.content_type, None, True, chunked=req.http11))
            sent = reply.chunks if whole else reply.chunks[: len(reply.chunks) // 2]
            await self._write_chunks(sent, interval_s, req.http11)
        deadline = time.monotonic() + FLUSH_DEADLINE_S
        while not self.closed and transport.get_write_buffer_size() and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        self._busy = False                  # the simulator cut it: not abandoned by the client
        transport.abort()
