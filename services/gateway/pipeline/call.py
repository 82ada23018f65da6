"""What the gateway learns about one accepted call as it goes, and the usage event it becomes."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from switchyard_gateway.contracts.events import EndpointRegistered, UsageRecorded


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class InferenceRequest(msgspec.Struct):
    """The few fields the gateway reads; the rest of the body is passed through untouched."""

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None


class Call:
    """Mutable per-call record: filled in by routing and relaying, turned into one UsageRecorded."""

    __slots__ = ("api", "tenant_id", "key_id", "request", "started", "request_id", "endpoint", "model",
                 "upstream_model", "attempts", "outcome", "status", "input_tokens", "output_tokens",
                 "cached_tokens", "estimated", "first_byte", "upstream_s", "body_bytes", "served_by_fallback",
                 "door", "cache_key", "cache_hit", "answer")

    def __init__(self, door: Any, tenant_id: str, key_id: str, request: InferenceRequest,
                 started: float, request_id: str, body_bytes: int) -> None:
        self.door = door                # switchyard_gateway.services.gateway.translate.doors.Door: how this call's front door speaks
        self.api, self.tenant_id, self.key_id, self.request = door.api, tenant_id, key_id, request
        self.started, self.request_id, self.body_bytes = started, request_id, body_bytes
        self.endpoint: EndpointRegistered | None = None
        self.model = ""                 # registry id of the model serving the call
        self.upstream_model = ""
        self.attempts = 0
        self.outcome = "ok"
        self.status = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cached_tokens = 0          # of input_tokens, what the upstream served from its prompt cache
        self.estimated = False
        self.first_byte = 0.0
        self.upstream_s = 0.0
        self.served_by_fallback = False
        self.cache_key: str | None = None   # set when the response cache may keep this call's answer
        self.cache_hit = False
        self.answer: tuple[bytes, str] | None = None   # a 200 answer as sent (body, content type), for the cache

    def mark_first_byte(self) -> None:
        if not self.first_byte:
            self.first_byte = time.perf_counter()

    def estimate_tokens(self, output_tokens: int = 0) -> None:
        """The upstream reported no usage: about four request bytes per prompt token, one per content event."""
        self.estimated = True
        self.input_tokens = max(1, self.body_bytes // 4)
        self.output_tokens = output_tokens
        self.cached_tokens = 0

    def response_headers(self) -> list[tuple[str, str]]:
        headers = [("x-request-id", self.request_id)]
        if self.served_by_fallback:
            headers.append(("x-switchyard-model", self.model))
        if self.cache_key is not None:
            headers.append(("x-switchyard-cache", "hit" if self.cache_hit else "miss"))
        return headers

    def usage_event(self) -> UsageRecorded:
        duration = time.perf_counter() - self.started
        endpoint = self.endpoint
        return UsageRecorded(
            request_id=self.request_id, tenant_id=self.tenant_id, key_id=self.key_id,
            model=self.model or (self.request.model or ""), requested_model=self.request.model or "",
            api=self.api, outcome=self.outcome, status=self.status,  # type: ignore[arg-type]
            input_tokens=self.input_tokens, output_tokens=self.output_tokens, cached_tokens=self.cached_tokens,
            estimated=self.estimated,
            stream=self.request.stream, endpoint_id=endpoint.endpoint_id if endpoint else "",
            provider_id=endpoint.provider_id if endpoint else "", upstream_model=self.upstream_model,
            attempts=self.attempts, duration_ms=duration * 1000,
            overhead_ms=max(0.0, duration - self.upstream_s) * 1000,
            ttfb_ms=(self.first_byte - self.started) * 1000 if self.first_byte else None, cache_hit=self.cache_hit,
        )
