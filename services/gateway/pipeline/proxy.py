"""The hot path: OpenAI and Ollama inference calls handled over RSGI, from request bytes to usage event.

Per call: read and size-check the body, authenticate and route from the local
catalog (no I/O), hand the call to Failover (upstream attempts over the pooled
HTTP/1.1 client, retries, fallbacks, relaying), and queue exactly one usage
event — whatever happens after the call is accepted (answered, failed, cut, or
abandoned by the client).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import msgspec

from switchyard_gateway.services.gateway import metrics
from switchyard_gateway.services.gateway.edge.auth import Authenticator
from switchyard_gateway.services.gateway.pipeline.cache import CachedAnswer, ResponseCache, directives
from switchyard_gateway.services.gateway.pipeline.call import Call, InferenceRequest
from switchyard_gateway.services.gateway.translate.doors import APIS, Door, error_body_for
from switchyard_gateway.services.gateway.edge.errors import BadRequest, GatewayError, PayloadTooLarge
from switchyard_gateway.services.gateway.pipeline.failover import Failover
from switchyard_gateway.services.gateway.pipeline.relay import ClientGone
from switchyard_gateway.services.gateway.pipeline.reserve import QuotaClient
from switchyard_gateway.services.gateway.pipeline.routing import Router
from switchyard_gateway.services.gateway.pipeline.usage import UsagePublisher

_decode_request = msgspec.json.Decoder(InferenceRequest).decode

class Proxy:
    """Serves the inference routes of both front doors."""

    def __init__(self, auth: Authenticator, router: Router, quota: QuotaClient, failover: Failover,
                 usage: UsagePublisher, cache: ResponseCache | None, max_body_bytes: int) -> None:
        self.auth, self.router, self.quota, self.failover, self.usage = auth, router, quota, failover, usage
        self.cache = cache if cache is not None and cache.mode != "off" else None
        self.max_body_bytes = max_body_bytes
        self.routes = APIS

    async def __call__(self, scope: Any, proto: Any) -> None:
        """Serve one call (RSGI: `scope` has .path and .headers, `proto` reads the body and answers)."""
        api = self.routes[scope.path]
        started = time.perf_counter()
        headers = scope.headers
        request_id = _request_id(headers)     # also names the quota hold the usage event settles
        quota_fallback = False
        try:
            key = self.auth.authenticate(headers)
            body = await self._read_body(headers, proto)
            request = _parse(body)
            door = Door(scope.path, request, body)
            model, routes = self.router.resolve(key.tenant_id, request.model)  # type: ignore[arg-type]
            cache_key = None
            if self.cache is not None and self.cache.applies(door.api, request.stream):
                cache_key, hit = await self._lookup(scope.path, headers, key.tenant_id, door.api, model.model_id, body)
                if hit is not None:
                    self._answer_from_cache(door, key, request, started, request_id, body, model, cache_key, hit,
                                            proto)
                    return
            served, _ = await self.quota.reserve_or_fallback(request_id=request_id, key=key, model=model, body=body)
            if served is not model:        # over quota, and the tenant asked to fall back
                model, routes = self.router.resolve(key.tenant_id, served.model_id)
                quota_fallback = True
        except GatewayError as exc:
            metrics.count_request(api, exc.status)
            send_error(proto, exc, error_body_for(scope.path, exc))
            return
        call = Call(door, key.tenant_id, key.key_id, request, started, request_id, len(body))
        call.served_by_fallback = quota_fallback
        call.cache_key = cache_key
        try:
            error = await self.failover.serve(call, model, routes, body, proto)
            if error is not None:
                call.outcome, call.status = "error", error.status
                send_error(proto, error, door.error_body(error), call.response_headers())
            elif call.answer is not None and cache_key is not None and not call.served_by_fallback:
                self.cache.store(cache_key, CachedAnswer(*call.answer))  # type: ignore[union-attr]
        except ClientGone:
            call.outcome = "cancelled"
        except asyncio.CancelledError:
            call.outcome = "cancelled"
            raise
        finally:
            self._finish(call)

    async def _lookup(self, path: str, headers: Any, tenant_id: str, api: str, model_id: str,
                      body: bytes) -> tuple[str | None, CachedAnswer | None]:
        """The call's cache key (None: the client said `no-store`) and the answer kept under it, if any."""
        assert self.cache is not None
        read, write = directives(headers)
        if not write:
            return None, None
        cache_key = self.cache.key(path, tenant_id, model_id, body)
        return cache_key, await self.cache.lookup(cache_key, api, model_id) if read else None

    def _answer_from_cache(self, door: Door, key: Any, request: InferenceRequest, started: float,
                           request_id: str, body: bytes, model: Any, cache_key: str, hit: CachedAnswer,
                           proto: Any) -> None:
        """Replay a kept answer: no endpoint, no quota held, no tokens spent; still one usage event."""
        call = Call(door, key.tenant_id, key.key_id, request, started, request_id, len(body))
        call.model, call.status, call.cache_key, call.cache_hit = model.model_id, 200, cache_key, True
        call.mark_first_byte()
        proto.response_bytes(200, [("content-type", hit.content_type), *call.response_headers()], hit.body)
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

    def _finish(self, call: Call) -> None:
        """Queue the call's one usage event and count it."""
        event = call.usage_event()
        self.usage.record(event)
        metrics.observe_call(event, event.duration_ms / 1000, event.overhead_ms / 1000)


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


def _request_id(headers: Any) -> str:
    given = headers.get("x-request-id")
    if given and len(given) <= 128:
        return given
    return uuid.uuid4().hex


def send_error(proto: Any, error: GatewayError, body: bytes, extra: list[tuple[str, str]] | None = None) -> None:
    headers = [("content-type", "application/json"), *error.headers.items(), *(extra or ())]
    proto.response_bytes(error.status, headers, body)
