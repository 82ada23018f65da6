"""WebSocket embeddings at `/ws`: one request per message, answered in order of completion, through the Proxy.

The upgrade is authenticated like any call (key, JWT, `X-Tenant-ID`) and refused with its HTTP status
(401, 403; 429 when the caller's tenant holds `ws_max_connections_per_tenant` of them, 503 when this gateway, all its
workers together, holds `ws_max_connections` sockets), its error body
and request id: no socket is opened for a caller that could not make a call; a plain request is told to upgrade
(426). Each request message (translate/ws_frames.py) becomes one call of the
embeddings pipeline — the Proxy, with a protocol adapter in place of the HTTP one — so quotas,
routing, failover, the cache and its one usage event are those of `POST /v1/embeddings`; its answer goes
back with the client's `id` as soon as it is ready, many at once per socket up to `ws_max_in_flight`.

Closing: the gateway's last message says why, `{"type": "close", "code", "reason"}`, and the close frame
carries the same code and reason (served by granian, `SWITCHYARD_HTTP_SERVER=granian`, the frame has neither: RSGI
gives no way to put them there once the socket is accepted). The codes: 1000 the client closed, 1001 idle for `ws_idle_timeout_s` (a `{"type":
"ping"}` message, answered `{"type": "pong"}`, keeps a quiet socket open; WebSocket pings are answered
by the server but not seen here) or the gateway stopping, 1003 a binary message, 1009 a message over
`SWITCHYARD_MAX_BODY_BYTES` (our server refuses it as its frame header arrives: a 1009 of the protocol, below),
1002, 1007, 1008 or 1009 the client broke the protocol (our server closed the socket, and says with which code and
why; nothing more is sent), 1013 a request beyond `ws_max_in_flight` (the requests in flight are
answered first, then the socket closes), 4401 the key stopped working mid-connection.
A client that stops reading its answers stops being read (Session): it holds what it had in flight, no more.
A client that hangs up cancels its requests in flight, as an HTTP client that leaves does (their upstream
calls are dropped, their quota holds released); each still records its one usage event, `cancelled`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
from litestar import get
from prometheus_client import Counter, Gauge

from switchyard_gateway.services.gateway.edge.errors import GatewayError, RouteNotFound, render_for
from switchyard_gateway.services.gateway.edge.headers import request_id_of
from switchyard_gateway.services.gateway.edge import ws_frames as frames
from switchyard_gateway.services.gateway.pipeline.shared_inflight import SOCKETS

if TYPE_CHECKING:
    from switchyard_gateway.services.gateway.edge.auth import Authenticator
    from switchyard_gateway.services.gateway.pipeline.proxy import Proxy
    from switchyard_gateway.services.gateway.pipeline.shared_inflight import SharedInflight
    from switchyard_gateway.services.gateway.settings import Settings

log = structlog.get_logger()
PATH = "/ws"
EMBEDDINGS = "/v1/embeddings"
PASSED_HEADERS = ("authorization", "x-api-key", "x-tenant-id", "cache-control")
OPEN = Gauge("switchyard_ws_connections", "WebSocket connections this gateway holds")
CLOSES = Counter("switchyard_ws_closes_total", "WebSocket connections ended, by the close code the gateway gave",
                 ["code"])
_encode = msgspec.json.Encoder().encode


class _Scope:
    """What the Proxy reads of a request: its path and headers (lower-case names)."""

    __slots__ = ("path", "headers")

    def __init__(self, headers: dict[str, str]) -> None:
        self.path, self.headers = EMBEDDINGS, headers


class _Answer:
    """The Proxy's protocol for one message: hands it the body, keeps what it answers."""

    __slots__ = ("body", "status", "headers", "answer", "left")

    def __init__(self, body: bytes, left: asyncio.Event) -> None:
        self.body, self.status, self.headers, self.answer = body, 500, [], b""
        self.left = left

    async def __call__(self) -> bytes:
        return self.body

    async def client_disconnect(self) -> None:
        """Completes when the socket's client is gone; the Proxy then cancels the call, as for HTTP."""
        await self.left.wait()

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.headers, self.answer = status, headers, body

    def response_stream(self, status: int, headers: list[tuple[str, str]]) -> Any:
        raise RuntimeError("an embeddings call never streams")


class WebSocketDoor:
    """Accepts sockets at /ws for one gateway and runs a Session for each."""

    def __init__(self, proxy: Proxy, auth: Authenticator, settings: Settings,
                 shared: SharedInflight | None = None) -> None:
        self.proxy, self.auth, self.settings = proxy, auth, settings
        self.shared = shared                     # the bound counts every worker's sockets, when there are several
        self.open = 0
        self.by_tenant: collections.Counter[str] = collections.Counter()    # with one worker: sockets per tenant

    async def __call__(self, scope: Any, proto: Any) -> None:
        if scope.path != PATH:
            refuse(proto, scope, RouteNotFound("GET", scope.path))
            return
        bound, shared = self.settings.ws_max_connections, self.shared
        if (self.open if shared is None else shared.count_at(SOCKETS)) >= bound:
            refuse(proto, scope, FULL)
            return
        headers = {name: scope.headers.get(name) for name in PASSED_HEADERS if scope.headers.get(name) is not None}
        try:
            tenant_id = self.auth.authenticate(headers).tenant_id
        except GatewayError as exc:
            refuse(proto, scope, exc)            # refused at the upgrade: 401 or 403, no socket
            return
        share = self.settings.ws_max_connections_per_tenant     # no tenant holds every socket from the others
        if shared is None:
            if self.by_tenant[tenant_id] >= share:
                refuse(proto, scope, tenant_full(share))
                return
        elif not shared.take_at(shared.tenant_bucket(tenant_id), share):
            refuse(proto, scope, tenant_full(share))
            return
        elif not shared.take_at(SOCKETS, bound):
            shared.give_at(shared.tenant_bucket(tenant_id))
            refuse(proto, scope, FULL)           # another worker took the last one meanwhile
            return
        self.by_tenant[tenant_id] += 1
        try:
            try:
                transport = await proto.accept()
            except ConnectionError as exc:       # the handshake refused by the server, or the client gone
                log.info("ws.not_accepted", reason=str(exc) or type(exc).__name__)
                return
            self.open += 1
            OPEN.inc()
            session = Session(self, transport, headers, request_id_of(scope.headers))   # checked, as any request id
            try:
                code, reason = await session.run()
            finally:
                self.open -= 1
                OPEN.dec()
        finally:
            self.by_tenant[tenant_id] -= 1
            if not self.by_tenant[tenant_id]:
                del self.by_tenant[tenant_id]
            if shared is not None:
                shared.give_at(SOCKETS)
                shared.give_at(shared.tenant_bucket(tenant_id))
        CLOSES.labels(str(code)).inc()
        closing = getattr(proto, "close_frame", None)      # our server's: the close frame says why too
        with contextlib.suppress(Exception):
            if closing is not None:
                closing(code, reason)
            else:
                proto.close(code)


@get(PATH, sync_to_thread=False)
def upgrade_needed() -> None:
    """A request to /ws that is not a WebSocket handshake: 426, naming the upgrade it needs."""
    raise GatewayError("GET /ws is a WebSocket endpoint: connect with `Upgrade: websocket` (embeddings, one "
                       "request per message)", status=426, code="upgrade_required", headers={"upgrade": "websocket"})


FULL = GatewayError("This gateway holds as many WebSocket connections as it may; try again shortly", status=503,
                    code="capacity")


def tenant_full(share: int) -> GatewayError:
    """429: the caller's tenant already holds its share of the gateway's sockets."""
    return GatewayError(f"This tenant already holds {share} WebSocket connections, as many as one tenant may; close "
                        "one, or send more requests on each (up to the in-flight bound)", status=429,
                        code="too_many_connections")


def refuse(proto: Any, scope: Any, error: GatewayError) -> None:
    """Refuse an upgrade with its HTTP status; our server's answer also says why, in the door's shape, with the
    request id every answer carries (granian's RSGI `close` takes a status alone)."""
    refusing = getattr(proto, "refuse", None)
    if refusing is None:
        proto.close(error.status)
        return
    refusing(error.status, [("content-type", "application/json"), *error.headers.items(),
                            ("x-request-id", request_id_of(scope.headers))], render_for(scope.path, error))


class Session:
    """One socket: reads requests, runs each through the Proxy, answers each as it completes.

    Backpressure: answers go out one at a time, in the order they complete; while one waits for the client to
    read it, the answers completed after it wait their turn (each as its one message: the pipeline's copy is let
    go) and the socket is not read, so no further request is taken. A client that stops reading holds the answers
    of what it had in flight then, and no more; the server's send timeout then drops it."""

    def __init__(self, door: WebSocketDoor, transport: Any, headers: dict[str, str], connection_id: str) -> None:
        self.door, self.transport, self.headers = door, transport, headers
        self.connection_id = connection_id[:64]
        self.inflight: set[asyncio.Task[None]] = set()
        self.sequence = 0
        self.gone = False                       # the client closed or the socket failed: nothing more is sent
        self.left = asyncio.Event()             # set with `gone`: the requests in flight are cancelled
        self.close_with: tuple[int, str] | None = None   # set: read no more, answer what is in flight, close
        self._wake = asyncio.Event()            # a request finished, a send ended, or the session decided to close
        self.outbox: collections.deque[tuple[bytes, bool]] = collections.deque()   # messages waiting their turn
        self.sending = False                    # a send is under way: while it waits for the client, nothing is read
        self._send_text = getattr(transport, "send_text", None)     # our server's: text from its UTF-8 bytes

    async def run(self) -> tuple[int, str]:
        """Serve the socket until it closes; the close code it ended with, and why.

        Once the session decides to close, it keeps reading (and drops what it reads) until its requests in
        flight are answered: a socket closed with unread data is reset, and a reset loses the answers the
        client has not read yet."""
        settings = self.door.settings
        loop = asyncio.get_running_loop()
        receiving: Any = None
        last = loop.time()
        try:
            while not (self.close_with is not None and not self.inflight):
                self._wake.clear()
                if receiving is None and not self.sending:
                    receiving = asyncio.ensure_future(self.transport.receive())
                waking = asyncio.ensure_future(self._wake.wait())
                busy = self.inflight or self.close_with or self.sending
                idle = None if busy else max(0.0, last + settings.ws_idle_timeout_s - loop.time())
                taking = receiving is not None and not self.sending
                done, _ = await asyncio.wait((receiving, waking) if taking else (waking,), timeout=idle,
                                             return_when=asyncio.FIRST_COMPLETED)
                waking.cancel()
                if not done and not busy and loop.time() >= last + settings.ws_idle_timeout_s:
                    self.close_with = (1001, f"idle for {settings.ws_idle_timeout_s:g} s")
                if not taking or receiving not in done or self.sending:    # one read meanwhile waits its turn too
                    continue
                try:
                    message = receiving.result()
                except Exception:  # noqa: BLE001 — the server's own errors: the connection is gone
                    self.gone, self.close_with = True, self.close_with or (1006, "connection lost")
                    self.left.set()
                    break
                if message.kind == 0:           # the client closed; or broke the protocol, and our server said so
                    failed = message.data if isinstance(message.data, int) else None
                    self.gone, self.close_with = True, self.close_with or (
                        (failed, "the client broke the WebSocket protocol") if failed else (1000, "closed by the client"))
                    self.left.set()
                    break
                receiving = None                # the next is read once no send waits for the client
                if self.close_with is None:         # closing: read, and drop
                    last = loop.time()
                    await self.on_message(message.kind, message.data)
        finally:
            if receiving is not None and not receiving.done():
                receiving.cancel()
            if self.inflight:                   # every accepted request finishes and records its usage
                await asyncio.gather(*self.inflight, return_exceptions=True)
        code, reason = self.close_with or (1000, "")
        if not self.gone:
            await self.send(_encode({"type": "close", "code": code, "reason": reason}))
        log.info("ws.closed", connection=self.connection_id, code=code, reason=reason, requests=self.sequence)
        return code, reason

    async def on_message(self, kind: int, data: Any) -> None:
        settings = self.door.settings
        if kind != 2:
            self.stop(1003, "send requests as text messages")
            return
        if len(data) * 4 > settings.max_body_bytes and len(data.encode()) > settings.max_body_bytes:
            self.stop(1009, f"a message is larger than the {settings.max_body_bytes} byte limit")
            return
        try:
            request = frames.parse(data)
        except frames.BadMessage as bad:
            await self.send(frames.error_answer(bad.client_id, None, 400, str(bad), bad.code))
            return
        if isinstance(request, frames.Ping):
            await self.send(request.pong())
            return
        if len(self.inflight) >= settings.ws_max_in_flight:
            self.stop(1013, f"more than {settings.ws_max_in_flight} requests in flight on one connection")
            return
        self.sequence += 1
        task = asyncio.create_task(self.serve(request, f"{self.connection_id}.{self.sequence}"))
        self.inflight.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.inflight.discard(task)
        self._wake.set()

    async def serve(self, request: frames.Request, request_id: str) -> None:
        """One request through the embeddings pipeline, then its answer, whatever happened."""
        headers = {**self.headers, "content-length": str(len(request.body)), "x-request-id": request_id}
        answer = _Answer(request.body, self.left)
        try:
            await self.door.proxy(_Scope(headers), answer)
        except Exception:  # noqa: BLE001 — one request's failure is its own 500, not the socket's
            log.exception("ws.request_failed", connection=self.connection_id, request_id=request_id)
            answer.response_bytes(500, [], b'{"error":{"message":"Internal error","type":"server_error",'
                                           b'"param":null,"code":"internal_error"}}')
        if answer.status == 401:
            self.stop(4401, "the key is no longer valid")
        await self.send(*_message(request, request_id, answer))     # nothing here holds the answer while it waits

    def stop(self, code: int, reason: str) -> None:
        """Read no more; answer what is in flight, then close with this code."""
        if self.close_with is None:
            self.close_with = (code, reason)
        self._wake.set()

    async def send(self, data: bytes, binary: bool = False) -> None:
        """Send a message after those before it. While a send waits for the client to read, the messages after it
        wait in the outbox and their senders go on; whoever found no send under way sends them all, in order."""
        if self.gone:
            return
        self.outbox.append((data, binary))
        del data                                # the outbox holds it now: its one copy
        if self.sending:
            return
        self.sending = True
        try:
            while self.outbox and not self.gone:
                sending = self._start(*self.outbox.popleft())
                await sending                   # the connection holds what is unsent; nothing here does
        except Exception as exc:  # noqa: BLE001 — the client left: its remaining answers are dropped
            self.gone = True
            self.left.set()
            self.outbox.clear()
            log.info("ws.client_gone", connection=self.connection_id, error=str(exc) or type(exc).__name__)
        finally:
            self.sending = False
            self._wake.set()                    # the socket may be read again

    def _start(self, data: bytes, binary: bool) -> Awaitable[None]:
        """Write one message; what to await until the client has read enough of it."""
        if binary:
            return self.transport.send_bytes(data)
        if self._send_text is None:
            return self.transport.send_str(data.decode("utf-8", "replace"))
        # text must be UTF-8: an answer's bytes are ASCII but for what an upstream put in it (checked, not copied)
        return self._send_text(data if data.isascii() else data.decode("utf-8", "replace").encode())


def _message(request: frames.Request, request_id: str, answer: _Answer) -> tuple[bytes, bool]:
    """A request's answer as its message (and whether binary); the pipeline's body is let go."""
    body, answer.answer = answer.answer, b""
    packed = frames.binary_answer(request.client_id, body) if request.binary and answer.status == 200 else None
    if packed is not None:
        return packed, True
    cache = next((v for k, v in answer.headers if k == "x-switchyard-cache"), None)
    return frames.text_answer(request.client_id, request_id, answer.status, body,
                              {"cache": cache} if cache else None), False
