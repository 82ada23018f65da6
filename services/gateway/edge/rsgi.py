"""Serve the gateway over RSGI: inference calls go straight to the Proxy, the rest to Litestar via ASGI.

granian's RSGI interface proxied about 1.7x the calls/s of its ASGI interface
here (docs/performance.md), so the hot path speaks RSGI natively; Litestar keeps
the admin and monitoring routes and the lifespan, through this small bridge.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
from litestar import Litestar

from switchyard_gateway.contracts.messages import ErrorBody
from switchyard_gateway.services.gateway.edge.body import drain, read_body
from switchyard_gateway.services.gateway.edge.errors import ApiError

if TYPE_CHECKING:
    from switchyard_gateway.services.gateway.pipeline.proxy import Proxy

log = structlog.get_logger()


class GatewayRSGI:
    """An RSGI application: `__rsgi_init__` runs the Litestar lifespan's start-up, `__rsgi_del__` its shutdown.

    Inference calls go to the Proxy of the Deps the start-up built (`litestar.state.deps.proxy`), from the
    end of start-up to the start of shutdown.
    """

    def __init__(self, litestar: Litestar) -> None:
        self.litestar = litestar
        self.proxy: Proxy | None = None
        self.max_body_bytes = 0                 # set at start-up: the bodies Litestar's routes may receive
        self._lifespan: asyncio.Task[None] | None = None
        self._to_app: asyncio.Queue[dict[str, Any]] | None = None
        self._from_app: asyncio.Queue[dict[str, Any]] | None = None

    # --- lifespan ---------------------------------------------------------------------------------

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self._lifespan_step("startup"))
        self.proxy = self.litestar.state.deps.proxy
        self.max_body_bytes = self.litestar.state.deps.settings.max_body_bytes

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.proxy = None
        loop.run_until_complete(self._lifespan_step("shutdown"))

    async def _lifespan_step(self, step: str) -> None:
        if self._lifespan is None:
            self._to_app, self._from_app = asyncio.Queue(), asyncio.Queue()
            scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
            self._lifespan = asyncio.ensure_future(self.litestar(scope, self._to_app.get, self._from_app.put))
        assert self._to_app is not None and self._from_app is not None
        await self._to_app.put({"type": f"lifespan.{step}"})
        reply = await self._from_app.get()
        if reply["type"].endswith(".failed"):
            raise RuntimeError(f"gateway {step} failed: {reply.get('message', '')}")
        if step == "shutdown":
            await self._lifespan

    # --- requests ---------------------------------------------------------------------------------

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        proxy = self.proxy
        try:
            if proxy is not None and scope.proto == "http" and scope.method == "POST" and scope.path in proxy.routes:
                await proxy(scope, proto)
            elif scope.proto == "http":
                await bridge(self.litestar, scope, proto, self.max_body_bytes)
        except Exception:  # noqa: BLE001 — the one place an unexpected failure becomes a 500, logged
            log.exception("gateway.unhandled", path=scope.path, method=scope.method)
            try:
                proto.response_bytes(500, [("content-type", "application/json")],
                                     b'{"error": {"message": "Internal error", "type": "server_error", '
                                     b'"param": null, "code": "internal_error"}}')
            except Exception:  # noqa: BLE001 — a response had already started
                pass


def _address(value: str) -> tuple[str, int] | None:
    host, _, port = value.rpartition(":")
    return (host.strip("[]"), int(port)) if port.isdigit() else None


async def bridge(app: Any, scope: Any, proto: Any, max_body_bytes: int = 0) -> None:
    """Run one RSGI request through an ASGI app: buffered replies as one response, streams as a stream. A body
    over `max_body_bytes` is answered 413 before the app sees it (and read to its end, within bounds)."""
    try:
        request_body = await read_body(scope.headers, proto, max_body_bytes) if max_body_bytes else await proto()
    except ApiError as exc:
        body = msgspec.json.encode({"error": ErrorBody(exc.code.upper() if exc.code else "INVALID_REQUEST",
                                                       str(exc))})
        proto.response_bytes(exc.status, [("content-type", "application/json"), *exc.headers.items()], body)
        await drain(proto)
        return
    asgi_scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": scope.http_version,
        "method": scope.method, "scheme": scope.scheme, "path": scope.path, "raw_path": scope.path.encode(),
        "query_string": scope.query_string.encode("latin-1"), "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in scope.headers.items()],
        "client": _address(scope.client), "server": _address(scope.server), "state": {},
    }
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request_body, "more_body": False}
        await proto.client_disconnect()
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
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", [])]
        if transport is None and not more:
            proto.response_bytes(start["status"], headers, body)
            return
        if transport is None:
            transport = proto.response_stream(start["status"], headers)
        if body:
            await transport.send_bytes(body)

    await app(asgi_scope, receive, send)
