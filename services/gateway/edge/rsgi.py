"""Serve the gateway over RSGI: inference calls go straight to the Proxy, WebSockets to the WebSocket door
(edge/ws.py, embeddings through the same Proxy), the rest to Litestar via ASGI.

granian's RSGI interface proxied about 1.7x the calls/s of its ASGI interface
here (docs/performance.md), so the hot path speaks RSGI natively, now served by our
own server in the worker's loop (libs/http1/server.py; granian still can); Litestar
keeps the admin and monitoring routes and the lifespan, through this small bridge.
A request the server itself refuses is answered in its door's shape (`error_body`).
CORS preflights are answered here, before either, and every answer leaves with
an `x-request-id` (edge/headers.py); those of Anthropic's door as its clients read
them (`AnthropicAnswers`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog
from litestar import Litestar

from switchyard_gateway.kit.service import StartFailed

from switchyard_gateway.services.gateway import metrics
from switchyard_gateway.services.gateway.edge.body import read_body, refuse
from switchyard_gateway.services.gateway.edge.errors import ApiError, ForbiddenError, GatewayError, MethodNotAllowed, \
    render_for, shape_for_client
from switchyard_gateway.services.gateway.edge.headers import REQUEST_ID, AnthropicAnswers, Cors, WithHeaders, \
    is_preflight, request_id_of
from switchyard_gateway.services.gateway.edge.ws import WebSocketDoor

if TYPE_CHECKING:
    from switchyard_gateway.services.gateway.pipeline.proxy import Proxy

log = structlog.get_logger()

_REFUSED_CODES = {408: "request_timeout", 431: "headers_too_large", 501: "not_implemented",
                  503: "capacity", 505: "http_version_not_supported"}


class GatewayRSGI:
    """An RSGI application: `__rsgi_init__` runs the Litestar lifespan's start-up, `__rsgi_del__` its shutdown.

    Inference calls go to the Proxy of the Deps the start-up built (`litestar.state.deps.proxy`), from the
    end of start-up to the start of shutdown.
    """

    def __init__(self, litestar: Litestar, cors: Cors | None = None) -> None:
        self.litestar = litestar
        self.cors = cors if cors is not None and cors.enabled else None
        self.proxy: Proxy | None = None
        self.max_body_bytes = 0                 # set at start-up: the bodies Litestar's routes may receive
        self.websockets: WebSocketDoor | None = None
        self._lifespan: asyncio.Task[None] | None = None
        self._to_app: asyncio.Queue[dict[str, Any]] | None = None
        self._from_app: asyncio.Queue[dict[str, Any]] | None = None

    # --- lifespan ---------------------------------------------------------------------------------

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self._lifespan_step("startup"))
        deps = self.litestar.state.deps
        self.proxy = deps.proxy
        self.max_body_bytes = deps.settings.max_body_bytes
        self.websockets = WebSocketDoor(deps.proxy, deps.auth, deps.settings, deps.router.shared)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.proxy = self.websockets = None
        loop.run_until_complete(self._lifespan_step("shutdown"))

    async def _lifespan_step(self, step: str) -> None:
        if self._lifespan is None:
            self._to_app, self._from_app = asyncio.Queue(), asyncio.Queue()
            scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
            self._lifespan = asyncio.ensure_future(self.litestar(scope, self._to_app.get, self._from_app.put))
        assert self._to_app is not None and self._from_app is not None
        await self._to_app.put({"type": f"lifespan.{step}"})
        reply = await self._from_app.get()
        if reply["type"].endswith(".failed"):              # a start's reason is in the log already
            if step == "startup":
                raise StartFailed(f"gateway startup failed: {reply.get('message', '')}",
                                  stopped=await self._stopped_while_starting())
            raise RuntimeError(f"gateway {step} failed: {reply.get('message', '')}")
        if step == "shutdown":
            await self._lifespan

    async def _stopped_while_starting(self) -> bool:
        """Whether the failed start-up was a stop asked for (a signal), read from the lifespan's own exception;
        awaited here so that it is not reported again as an exception nobody retrieved."""
        assert self._lifespan is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._lifespan), 5)
        except BaseException as exc:  # noqa: BLE001 — Litestar raises the start-up's error (in a group) after its reply
            pending: list[BaseException] = [exc]
            while pending:
                error = pending.pop()
                if isinstance(error, StartFailed):
                    return error.stopped
                pending.extend(getattr(error, "exceptions", ()))
        return False

    # --- requests ---------------------------------------------------------------------------------

    @staticmethod
    def error_body(path: str, status: int, message: str) -> bytes:
        """A request the HTTP server refuses before it reaches here (malformed framing, a head too large or too
        slow), in the error shape of the door its path belongs to."""
        kind = "server_error" if status == 503 else "invalid_request_error"     # 503: every connection busy
        return render_for(path, GatewayError(message, status=status, kind=kind,
                                             code=_REFUSED_CODES.get(status, "invalid_request")))

    @staticmethod
    def connection_shed(how: str) -> None:
        """The HTTP server held as many connections as it may and closed an idle one, or refused a new one."""
        metrics.count_connection_shed(how)

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            await self._websocket(scope, proto)
            return
        proxy = self.proxy
        cors = self.cors
        if shape_for_client(scope.path, scope.headers) == "anthropic":
            proto = AnthropicAnswers(proto)         # `request-id`, the body's `request_id`, 529 (edge/headers.py)
        if cors is not None and "origin" in scope.headers:
            origin = scope.headers["origin"]
            if not cors.allows(origin):
                if is_preflight(scope):
                    _refuse(scope, proto, ForbiddenError(f"Origin {origin} is not allowed"))
                    return
            elif is_preflight(scope):
                proto.response_empty(204, [(REQUEST_ID, request_id_of(scope.headers)),
                                           *cors.preflight_headers(origin, scope.headers.get(
                                               "access-control-request-headers"))])
                return
            else:
                proto = WithHeaders(proto, cors.answer_headers(origin))
        try:
            if proxy is not None and scope.path in proxy.routes:
                if scope.method == "POST":
                    await proxy(scope, proto)
                else:
                    _refuse(scope, proto, MethodNotAllowed(scope.method, scope.path), [("allow", "POST")])
            else:
                await bridge(self.litestar, scope, proto, self.max_body_bytes)
        except Exception:  # noqa: BLE001 — the one place an unexpected failure becomes a 500, logged
            log.exception("gateway.unhandled", path=scope.path, method=scope.method)
            try:
                _refuse(scope, proto, GatewayError("Internal error", code="internal_error"))
            except Exception:  # noqa: BLE001 — a response had already started
                pass

    async def _websocket(self, scope: Any, proto: Any) -> None:
        try:
            if self.websockets is not None:
                await self.websockets(scope, proto)
            else:
                proto.close(503)                # not started yet, or stopping
        except Exception:  # noqa: BLE001 — a socket's unexpected failure is logged; the socket is gone
            log.exception("gateway.unhandled", path=scope.path, method="WEBSOCKET")


def _refuse(scope: Any, proto: Any, error: GatewayError, extra: list[tuple[str, str]] | None = None) -> None:
    proto.response_bytes(error.status, [("content-type", "application/json"),
                                        (REQUEST_ID, request_id_of(scope.headers)), *(extra or ())],
                         render_for(scope.path, error))


def _address(value: str) -> tuple[str, int] | None:
    host, _, port = value.rpartition(":")
    return (host.strip("[]"), int(port)) if port.isdigit() else None


async def bridge(app: Any, scope: Any, proto: Any, max_body_bytes: int = 0) -> None:
    """Run one RSGI request through an ASGI app: buffered replies as one response, streams as a stream;
    each with an `x-request-id` (the client's, else a new one) unless the app set one. A body over
    `max_body_bytes` is answered 413 before the app sees it (and read to its end, within bounds)."""
    request_id = request_id_of(scope.headers)
    try:
        request_body = await read_body(scope.headers, proto, max_body_bytes) if max_body_bytes else await proto()
    except ApiError as exc:
        await refuse(proto, scope.path, exc, request_id)
        return
    # `raw_path` is the path as the HTTP server already percent-decoded it (UTF-8), kept whole for routes whose
    # identifiers hold slashes (`/v1/models//models/x.gguf`): read it with `.decode()`, never unquote it again.
    # HEAD is answered as GET would be, the server sending the head and none of the body (RFC 9110 9.3.2): the
    # routes name GET only, and HEAD was a 405 on every one of them (monitoring probes, `curl -I`)
    asgi_scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": scope.http_version,
        "method": "GET" if scope.method == "HEAD" else scope.method, "scheme": scope.scheme, "path": scope.path,
        "raw_path": scope.path.encode(),
        "query_string": scope.query_string.encode("latin-1"), "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in scope.headers.items()],
        "client": _address(scope.client), "server": _address(scope.server), "state": {"request_id": request_id},
    }
    body_sent = False
    answered = asyncio.Event()

    async def receive() -> dict[str, Any]:
        """The body, then `http.disconnect` once the client leaves or the answer is complete (as ASGI servers say:
        a streamed answer that ends by itself ends its response, which waits on this for the client otherwise)."""
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request_body, "more_body": False}
        if not answered.is_set():
            waits = {asyncio.ensure_future(proto.client_disconnect()), asyncio.ensure_future(answered.wait())}
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        return {"type": "http.disconnect"}

    start: dict[str, Any] = {}
    transport: Any = None

    async def send(message: dict[str, Any]) -> None:
        nonlocal transport
        if message["type"] == "http.response.start":
            start.update(message)
            return
        if message["type"] != "http.response.body":
            return
        body, more = message.get("body", b""), message.get("more_body", False)
        if not more:
            answered.set()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", [])]
        named = {k.lower() for k, _ in headers}
        if REQUEST_ID not in named:
            headers.append((REQUEST_ID, request_id))
        # an answer that says nothing of caching is not kept anywhere (a key is shown once, in its answer), and
        # none is read as another type than it says
        if "cache-control" not in named:
            headers.append(("cache-control", "no-store"))
        if "x-content-type-options" not in named:
            headers.append(("x-content-type-options", "nosniff"))
        if transport is None and not more:
            proto.response_bytes(start["status"], headers, body)
            return
        if transport is None:
            transport = proto.response_stream(start["status"], headers)
        if body:
            await transport.send_bytes(body)

    await app(asgi_scope, receive, send)
