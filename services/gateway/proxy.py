"""The hot path: OpenAI inference calls handled as raw ASGI, from request bytes to usage event.

Per call: read and size-check the body, authenticate and route from the local
catalog (no I/O), call the upstream over the pooled HTTP/1.1 client, return or stream
its answer, and queue exactly one usage event — whatever happens after the
call is accepted (answered, failed, cut, or abandoned by the client).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import msgspec
import structlog

from libs.contracts.events import CallAttempted, EndpointRegistered, UsageRecorded
from services.gateway import http1, metrics, upstream
from services.gateway.auth import authenticate
from services.gateway.errors import BadRequest, GatewayError, PayloadTooLarge, UpstreamError
from services.gateway.routing import Route, Router
from services.gateway.sse import SseTap

log = structlog.get_logger()


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class InferenceRequest(msgspec.Struct):
    """The few fields the gateway reads; the rest of the body is passed through untouched."""

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None


class Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class UsageOnly(msgspec.Struct):
    usage: Usage | None = None


_decode_request = msgspec.json.Decoder(InferenceRequest).decode
_decode_usage = msgspec.json.Decoder(UsageOnly).decode
_decode_any = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
# failures before the first response byte: (attempt outcome, status shown if no endpoint is left)
_ATTEMPT_FAILURES = {
    http1.ConnectFailed: ("refused", 502),
    http1.ReadTimeout: ("timeout", 504),
    http1.ResponseCut: ("cut", 502),
}


class ClientGone(Exception):
    """The client went away before or while we answered."""


class Proxy:
    """Serves /v1/chat/completions, /v1/completions and /v1/embeddings."""

    def __init__(self, state: Any, router: Router, pool: http1.Pool, usage: Any,
                 outcomes: Any, max_body_bytes: int) -> None:
        self.state, self.router, self.pool = state, router, pool
        self.usage, self.outcomes = usage, outcomes
        self.max_body_bytes = max_body_bytes
        self.routes = {
            "/v1/chat/completions": "openai.chat",
            "/v1/completions": "openai.completions",
            "/v1/embeddings": "openai.embeddings",
        }

    async def __call__(self, scope: Any, proto: Any) -> None:
        """Serve one call (RSGI: `scope` has .path and .headers, `proto` reads the body and answers)."""
        api = self.routes[scope.path]
        started = time.perf_counter()
        headers = scope.headers
        try:
            key = authenticate(self.state.catalog, headers)
            body = await self._read_body(headers, proto)
            request = _parse(body)
            model, routes = self.router.resolve(key.tenant_id, request.model)  # type: ignore[arg-type]
        except GatewayError as exc:
            metrics.count_request(api, exc.status)
            _send_error(proto, exc)
            return
        call = Call(api, key.tenant_id, key.key_id, request, started, _request_id(headers), len(body))
        try:
            await self._serve(call, model, routes, body, scope.path, proto)
        except ClientGone:
            call.outcome = "cancelled"
        except asyncio.CancelledError:
            call.outcome = "cancelled"
            raise
        finally:
            self._finish(call)

    async def _read_body(self, headers: Any, proto: Any) -> bytes:
        limit = self.max_body_bytes
        length = headers.get("content-length")
        if length is not None:
            if int(length) > limit:
                raise PayloadTooLarge(f"Request body is larger than the {limit} byte limit")
            return await proto()
        chunks: list[bytes] = []
        size = 0
        async for chunk in proto:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"Request body is larger than the {limit} byte limit")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _serve(self, call: Call, model: Any, routes: list[Route], body: bytes, path: str,
                     proto: Any) -> None:
        last_error: GatewayError | None = None
        for route in self.router.order(model, routes):
            endpoint = route.endpoint
            if endpoint.max_concurrent and self.router.inflight[(endpoint.endpoint_id, model.model_id)] \
                    >= endpoint.max_concurrent:
                last_error = UpstreamError("Every endpoint for this model is at its concurrency limit",
                                           status=503, code="capacity", headers={"retry-after": "1"})
                continue
            call.attempts += 1
            call.endpoint = endpoint
            call.upstream_model = route.upstream_model
            payload = _upstream_body(body, call.request, route.upstream_model)
            self.router.acquire(endpoint.endpoint_id, model.model_id)
            attempt_started = time.perf_counter()
            try:
                done, last_error = await self._attempt(call, endpoint, payload, path, proto)
            finally:
                self.router.release(endpoint.endpoint_id, model.model_id)
                call.upstream_s += time.perf_counter() - attempt_started
            if done:
                return
        call.outcome = "error"
        error = last_error or UpstreamError("No endpoint could serve the request")
        call.status = error.status
        _send_error(proto, error)

    async def _attempt(self, call: Call, endpoint: EndpointRegistered, payload: bytes, path: str,
                       proto: Any) -> tuple[bool, GatewayError | None]:
        """One upstream attempt. (True, None) once the client got an answer; (False, error) to fall back."""
        attempt_started = time.perf_counter()
        try:
            response = await self.pool.request("POST", upstream.url(endpoint, path), payload,
                                               upstream.request_headers(endpoint), endpoint.timeout_s)
        except http1.UpstreamError as exc:
            kind, status = _ATTEMPT_FAILURES.get(type(exc), ("error", 502))
            self._attempted(call, endpoint, kind, 0, attempt_started)
            return False, UpstreamError(f"Endpoint '{endpoint.endpoint_id}' did not answer ({kind})", status=status)
        try:
            if response.status in RETRYABLE_STATUS:
                try:
                    detail = await response.read()
                except http1.UpstreamError:
                    detail = b""
                kind = "http_429" if response.status == 429 else "http_5xx"
                self._attempted(call, endpoint, kind, response.status, attempt_started)
                retry_after = response.headers.get("retry-after")
                return False, UpstreamError(
                    f"Endpoint '{endpoint.endpoint_id}' answered {response.status}: "
                    f"{detail[:200].decode(errors='replace')}",
                    status=response.status if response.status == 429 else 502,
                    headers={"retry-after": retry_after} if retry_after else None)
            if call.request.stream and response.status == 200:
                await self._relay_stream(call, endpoint, response, proto, attempt_started)
            else:
                await self._relay_body(call, endpoint, response, proto, attempt_started)
            return True, None
        finally:
            response.release()

    async def _relay_body(self, call: Call, endpoint: EndpointRegistered, response: http1.Response,
                          proto: Any, attempt_started: float) -> None:
        try:
            data = await response.read()
        except http1.UpstreamError as exc:
            self._attempted(call, endpoint, "cut", response.status, attempt_started)
            raise_upstream = UpstreamError(f"Endpoint '{endpoint.endpoint_id}' cut its answer: {type(exc).__name__}")
            call.outcome, call.status = "error", raise_upstream.status
            _send_error(proto, raise_upstream)
            return
        status = response.status
        self._attempted(call, endpoint, "ok" if status < 400 else "http_4xx", status, attempt_started)
        if status == 200:
            try:
                usage = _decode_usage(data).usage
            except msgspec.DecodeError:
                usage = None
            if usage is not None:
                call.input_tokens = usage.prompt_tokens
                call.output_tokens = usage.completion_tokens or max(0, usage.total_tokens - usage.prompt_tokens)
            else:
                call.estimated = True
                call.input_tokens = _estimate_prompt_tokens(call)
        else:
            call.outcome = "error"
        call.status = status
        call.mark_first_byte()
        proto.response_bytes(status, [("content-type", response.headers.get("content-type", "application/json")),
                                      ("x-request-id", call.request_id)], data)

    async def _relay_stream(self, call: Call, endpoint: EndpointRegistered, response: http1.Response,
                            proto: Any, attempt_started: float) -> None:
        wants_usage = bool(call.request.stream_options and call.request.stream_options.include_usage)
        tap = SseTap(keep_usage=wants_usage)
        call.status = 200
        transport = None
        try:
            async for chunk in response:
                out = tap.feed(chunk)
                if not out:
                    continue
                if transport is None:
                    transport = self._start_stream(call, response, proto)
                await _send(call, transport, out)
            tail = tap.close()
            if not tap.done:
                raise http1.ResponseCut("the stream ended without [DONE]")
            self._attempted(call, endpoint, "ok", 200, attempt_started)
            if transport is None:
                transport = self._start_stream(call, response, proto)
            if tail:
                await _send(call, transport, tail)
        except http1.UpstreamError as exc:
            self._attempted(call, endpoint, "cut", 200, attempt_started)
            call.outcome = "error"
            log.warning("upstream.stream_cut", endpoint=endpoint.endpoint_id, request_id=call.request_id,
                        error=type(exc).__name__)
            if transport is None:
                transport = self._start_stream(call, response, proto)
            error = {"error": {"message": f"The upstream stream was cut: {type(exc).__name__}",
                               "type": "upstream_error", "code": "stream_cut"}}
            await _send(call, transport, b"data: " + _encode(error) + b"\n\n")
        finally:
            if tap.usage is not None:
                call.input_tokens = tap.usage.get("prompt_tokens", 0)
                call.output_tokens = tap.usage.get("completion_tokens", tap.content_events)
            else:
                call.estimated = True
                call.input_tokens = _estimate_prompt_tokens(call)
                call.output_tokens = tap.content_events

    @staticmethod
    def _start_stream(call: Call, response: http1.Response, proto: Any) -> Any:
        call.mark_first_byte()
        return proto.response_stream(200, [
            ("content-type", response.headers.get("content-type", "text/event-stream")),
            ("cache-control", "no-cache"), ("x-request-id", call.request_id),
        ])

    def _attempted(self, call: Call, endpoint: EndpointRegistered, outcome: str, status: int,
                   started: float) -> None:
        """Tell the router how an attempt went (batched onto core NATS, never awaited)."""
        self.outcomes.record(CallAttempted(
            request_id=call.request_id, endpoint_id=endpoint.endpoint_id, model=call.request.model or "",
            outcome=outcome, status=status, latency_ms=(time.perf_counter() - started) * 1000,  # type: ignore[arg-type]
        ))

    def _finish(self, call: Call) -> None:
        """Queue the call's one usage event and count it."""
        duration = time.perf_counter() - call.started
        endpoint = call.endpoint
        event = UsageRecorded(
            request_id=call.request_id, tenant_id=call.tenant_id, key_id=call.key_id,
            model=call.request.model or "", api=call.api, outcome=call.outcome,  # type: ignore[arg-type]
            status=call.status, input_tokens=call.input_tokens, output_tokens=call.output_tokens,
            estimated=call.estimated, stream=call.request.stream,
            endpoint_id=endpoint.endpoint_id if endpoint else "",
            provider_id=endpoint.provider_id if endpoint else "",
            upstream_model=call.upstream_model, attempts=call.attempts,
            duration_ms=duration * 1000, overhead_ms=max(0.0, duration - call.upstream_s) * 1000,
            ttfb_ms=(call.first_byte - call.started) * 1000 if call.first_byte else None,
        )
        self.usage.record(event)
        metrics.observe_call(event, duration, max(0.0, duration - call.upstream_s))


class Call:
    """What the gateway learns about one accepted call as it goes."""

    __slots__ = ("api", "tenant_id", "key_id", "request", "started", "request_id", "endpoint",
                 "upstream_model", "attempts", "outcome", "status", "input_tokens", "output_tokens",
                 "estimated", "first_byte", "upstream_s", "body_bytes")

    def __init__(self, api: str, tenant_id: str, key_id: str, request: InferenceRequest,
                 started: float, request_id: str, body_bytes: int) -> None:
        self.body_bytes = body_bytes
        self.api, self.tenant_id, self.key_id, self.request = api, tenant_id, key_id, request
        self.started, self.request_id = started, request_id
        self.endpoint: EndpointRegistered | None = None
        self.upstream_model = ""
        self.attempts = 0
        self.outcome = "ok"
        self.status = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.estimated = False
        self.first_byte = 0.0
        self.upstream_s = 0.0

    def mark_first_byte(self) -> None:
        if not self.first_byte:
            self.first_byte = time.perf_counter()


def _parse(body: bytes) -> InferenceRequest:
    try:
        request = _decode_request(body)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"Invalid request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"Malformed JSON in request body: {exc}", code="invalid_json") from None
    if not request.model:
        raise BadRequest("Missing required field 'model'", param="model", code="missing_field")
    return request


def _upstream_body(body: bytes, request: InferenceRequest, upstream_model: str) -> bytes:
    """The body to send upstream: untouched unless the model name differs or a stream needs usage."""
    needs_usage = request.stream and not (request.stream_options and request.stream_options.include_usage)
    if upstream_model == request.model and not needs_usage:
        return body
    data = _decode_any(body)
    data["model"] = upstream_model
    if needs_usage:
        options = data.get("stream_options") or {}
        options["include_usage"] = True
        data["stream_options"] = options
    return _encode(data)


def _estimate_prompt_tokens(call: Call) -> int:
    """A rough count when the upstream reported none: about four bytes of request per token."""
    return max(1, call.body_bytes // 4)


def _request_id(headers: Any) -> str:
    given = headers.get("x-request-id")
    if given and len(given) <= 128:
        return given
    return uuid.uuid4().hex


async def _send(call: Call, transport: Any, data: bytes) -> None:
    """Send a stream chunk; if the client has gone, mark the call cancelled and stop the relay."""
    try:
        await transport.send_bytes(data)
    except Exception as exc:  # noqa: BLE001 — granian raises its own protocol errors on a closed client
        call.outcome = "cancelled"
        raise ClientGone() from exc


def _send_error(proto: Any, error: GatewayError) -> None:
    headers = [("content-type", "application/json"), *error.headers.items()]
    proto.response_bytes(error.status, headers, error.render())
