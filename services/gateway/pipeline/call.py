"""One accepted call: what the request is (`Call`, immutable) and what happened to it (`Outcome`, one usage event).

The proxy builds the `Call` once the request is authenticated, parsed and routed; failover and the
relay fill the `Outcome` as attempts go (endpoint, tokens, status, timings); the proxy turns the
pair into the call's one `UsageRecorded`, whatever happened.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import msgspec

from switchyard_gateway.contracts.events import EndpointRegistered, UsageRecorded, new_id
from switchyard_gateway.services.gateway.edge.headers import request_id_headers

if TYPE_CHECKING:                 # the doors and asks read InferenceRequest below
    from switchyard_gateway.services.gateway.translate.asks import Ask
    from switchyard_gateway.services.gateway.translate.doors import Door


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class InferenceRequest(msgspec.Struct):
    """The few fields the gateway reads; the rest of the body is passed through untouched."""

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None


class Call(msgspec.Struct, frozen=True):
    """What the request is, fixed once it is accepted: door, caller, parsed request, body, id and start time,
    what it asks for and the output ceiling its reservation granted."""

    door: Door                    # how this call's front door speaks
    tenant_id: str
    key_id: str
    request: InferenceRequest
    request_id: str               # also names the quota hold the usage event settles
    body: bytes
    started: float                # perf_counter() when the request arrived
    cache_key: str | None = None  # set when the response cache may keep this call's answer
    event_id: uuid.UUID = msgspec.field(default_factory=new_id)   # its usage event's, from acceptance on (journal)
    ask: Ask | None = None        # output asked, choices, prompt tokens (counted once, lazily)
    ceiling: int | None = None    # output tokens per choice sent upstream as the call's limit (None: as asked)
    quota_headers: tuple[tuple[str, str], ...] = ()   # the rate-limit headers of its answer
    short: bool = False           # its output limit was cut to what a quota had left: its answer is not for the cache

    @property
    def api(self) -> str:
        return self.door.api


def estimated_tokens(ask: Ask | None, body: bytes, ceiling: int | None, output_tokens: int) -> tuple[int, int]:
    """(prompt, output) tokens of a call whose upstream reported no usage: the prompt counted with the reservation's
    tokenizer (`ask`; a token per 4 bytes of `body` without one), the output as the relay estimated it from what the
    model wrote, never more than the call was held to (its `ceiling`, else what it asked; as a whole answer's)."""
    prompt = ask.counted_tokens() if ask is not None else max(1, len(body) // 4)
    most = ceiling if ceiling is not None else ask.output if ask is not None else None
    if most is not None:
        output_tokens = min(output_tokens, max(1, most) * max(1, ask.choices if ask is not None else 1))
    return prompt, output_tokens


class Outcome:
    """What happened to a call: filled in by failover and the relay, turned into its one UsageRecorded."""

    __slots__ = ("model", "endpoint", "upstream_model", "attempts", "result", "status", "input_tokens",
                 "output_tokens", "cached_tokens", "estimated", "first_byte", "upstream_s", "served_by_fallback",
                 "cache_hit", "answer", "stream_tap", "delivered", "cut_answering")

    def __init__(self, model: str = "", served_by_fallback: bool = False) -> None:
        self.model = model              # registry id of the model serving the call
        self.endpoint: EndpointRegistered | None = None
        self.upstream_model = ""
        self.attempts = 0
        self.result = "ok"              # ok | error | cancelled (interrupted: written by the next life)
        self.status = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cached_tokens = 0          # of input_tokens, what the upstream served from its prompt cache
        self.estimated = False
        self.first_byte = 0.0
        self.upstream_s = 0.0
        self.served_by_fallback = served_by_fallback
        self.cache_hit = False
        self.answer: tuple[bytes, str] | None = None   # a 200 answer as sent (body, content type), for the cache
        self.stream_tap: Any = None     # the stream being relayed (content events so far: the journal's progress)
        self.delivered = False          # the answer's last event is handed to the client: its leaving now changes nothing
        self.cut_answering = False      # an upstream cut its answer after it began: it read the prompt, and bills it

    def client_left(self) -> None:
        """The client went away: the call is cancelled, unless its answer's last event had reached it."""
        if not self.delivered:
            self.result = "cancelled"

    def mark_first_byte(self) -> None:
        if not self.first_byte:
            self.first_byte = time.perf_counter()

    def estimate_tokens(self, call: Call, output_tokens: int = 0) -> None:
        """The upstream reported no usage: the call's tokens as `estimated_tokens` has them."""
        self.estimated = True
        self.input_tokens, self.output_tokens = estimated_tokens(call.ask, call.body, call.ceiling, output_tokens)
        self.cached_tokens = 0

    def response_headers(self, call: Call) -> list[tuple[str, str]]:
        headers = [*request_id_headers(call.door.shape, call.request_id), *call.quota_headers]
        if self.served_by_fallback:
            headers.append(("x-switchyard-model", self.model))
        if call.cache_key is not None:
            headers.append(("x-switchyard-cache", "hit" if self.cache_hit else "miss"))
        return headers

    def usage_event(self, call: Call) -> UsageRecorded:
        duration = time.perf_counter() - call.started
        endpoint = self.endpoint
        request = call.request
        return UsageRecorded(
            event_id=call.event_id, request_id=call.request_id, tenant_id=call.tenant_id, key_id=call.key_id,
            model=self.model or (request.model or ""), requested_model=request.model or "",
            api=call.api, outcome=self.result, status=self.status,  # type: ignore[arg-type]
            input_tokens=self.input_tokens, output_tokens=self.output_tokens, cached_tokens=self.cached_tokens,
            estimated=self.estimated,
            stream=request.stream, endpoint_id=endpoint.endpoint_id if endpoint else "",
            provider_id=endpoint.provider_id if endpoint else "", upstream_model=self.upstream_model,
            attempts=self.attempts, duration_ms=duration * 1000,
            overhead_ms=max(0.0, duration - self.upstream_s) * 1000,
            ttfb_ms=(self.first_byte - call.started) * 1000 if self.first_byte else None, cache_hit=self.cache_hit,
        )
