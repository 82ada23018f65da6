"""The hot path: OpenAI, Ollama and Anthropic inference calls handled over RSGI, from request bytes to usage event.

Per call: authenticate, read and size-check the body (a Responses call's
`item_reference`s, `previous_response_id` and `conversation` replaced by the items
they name: pipeline/stored_items.py), read it as its door's
request (types and bounds checked: 400 naming the field) and resolve its route
plan from the local catalog (no I/O), then check the bounds that depend on the
model; answer from the response cache when it may; journal the call as
accepted, then reserve quota (one Valkey round trip, or a fallback model's plan
when the tenant allows it), which grants the output ceiling sent upstream; hand
the call and its plan to Failover (upstream attempts over the pooled HTTP/1.1
client, retries, fallbacks, relaying) while watching for the client to leave,
and journal and queue exactly one usage event from its Outcome (a Responses
call's Response and its output items are kept as it is made)
— whatever happens after the call is accepted (answered, failed, cut, or abandoned by the
client: then the upstream request is dropped, the quota hold released at once
and the call recorded `cancelled`; if the gateway itself dies, its next life
records it from the journal).
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any

import msgspec
import structlog

from switchyard_gateway.contracts.events import KeyIssued
from switchyard_gateway.quotas.ledger import hold_name
from switchyard_gateway.quotas.tokens import CALL_LIMIT
from switchyard_gateway.services.gateway import metrics
from switchyard_gateway.services.gateway.metrics import EMBEDDING_APIS
from switchyard_gateway.services.gateway.edge.auth import Authenticator
from switchyard_gateway.services.gateway.edge.body import read_body, refuse
from switchyard_gateway.services.gateway.edge.client import ClientWatch
from switchyard_gateway.services.gateway.edge.errors import GatewayError
from switchyard_gateway.services.gateway.edge.headers import request_id_headers, request_id_of
from switchyard_gateway.services.gateway.pipeline.cache import CachedAnswer, ResponseCache, directives
from switchyard_gateway.services.gateway.pipeline.call import Call, InferenceRequest, Outcome
from switchyard_gateway.services.gateway.pipeline.failover import Failover
from switchyard_gateway.services.gateway.pipeline.relay import ClientGone, UpstreamAuthFailed
from switchyard_gateway.services.gateway.pipeline.reserve import QuotaClient, Reservation
from switchyard_gateway.services.gateway.pipeline.routing import RoutePlan, Router
from switchyard_gateway.services.gateway.pipeline.stored_items import Resolved, StoredItems
from switchyard_gateway.services.gateway.pipeline.usage import UsagePublisher
from switchyard_gateway.services.gateway.translate.anthropic_door import COUNT_TOKENS
from switchyard_gateway.services.gateway.translate.asks import Ask, read_request
from switchyard_gateway.services.gateway.translate.doors import APIS, Door
from switchyard_gateway.services.gateway.translate.responses_door import INPUT_TOKENS, RESPONSES

log = structlog.get_logger()


CLIENT_CLOSED = 499
WHOLE_COUNT_BYTES = CALL_LIMIT     # a body larger is counted whole in a thread (the loop counts at most CALL_LIMIT)


class Proxy:
    """Serves the inference routes of both front doors: request -> route plan -> reservation -> attempts ->
    outcome -> usage event."""

    def __init__(self, auth: Authenticator, router: Router, quota: QuotaClient, failover: Failover,
                 usage: UsagePublisher, cache: ResponseCache | None, max_body_bytes: int,
                 max_output_tokens: int = 262_144, access_log: bool = False,
                 items: StoredItems | None = None) -> None:
        self.auth, self.router, self.quota, self.failover, self.usage = auth, router, quota, failover, usage
        self.items = items                  # the Responses door's kept items (None: none are kept)
        self.access_log = access_log
        self.cache = cache if cache is not None and cache.mode != "off" else None
        self.max_body_bytes = max_body_bytes
        self.max_output_tokens = max_output_tokens
        self.routes = APIS
        self.loop: asyncio.AbstractEventLoop | None = None     # the worker's loop, looked up once

    async def __call__(self, scope: Any, proto: Any) -> None:
        """Serve one call (RSGI: `scope` has .path and .headers, `proto` reads the body and answers)."""
        api = self.routes[scope.path]
        if api == COUNT_TOKENS or api == INPUT_TOKENS:
            await self._count_tokens(api, scope, proto)
            return
        if api not in EMBEDDING_APIS:
            return await self._serve(api, scope, proto)
        metrics.ACTIVE_EMBEDDINGS.inc()
        try:
            return await self._serve(api, scope, proto)
        finally:
            metrics.ACTIVE_EMBEDDINGS.dec()

    async def _serve(self, api: str, scope: Any, proto: Any) -> None:
        started = time.perf_counter()
        headers = scope.headers
        request_id = request_id_of(headers)
        model = ""
        try:
            key, body, request, door = await self._read(scope, proto)
            model = request.model or ""
            plan = self.router.resolve(key.tenant_id, request.model)  # type: ignore[arg-type]
            ask = door.ask(plan.model.context_length or self.max_output_tokens, self.quota.estimator)
            if door.ollama and (loaded := request.load_answer()) is not None:   # type: ignore[attr-defined]
                metrics.count_request(api, 200, model)       # a load or unload: nothing generated, nothing recorded
                proto.response_bytes(200, [("content-type", "application/json"),
                                           *request_id_headers(door.shape, request_id)], loaded)
                return
            cache_key = hit = None
            if self.cache is not None and self.cache.applies(door.api, request.stream):
                cache_key, hit = await self._lookup(scope.path, headers, key.tenant_id, door.api, plan.model.model_id,
                                                    body)
            call = Call(door, key.tenant_id, key.key_id, request, request_id, body, started, cache_key, ask=ask)
            if hit is not None:
                self._answer_from_cache(call, plan, hit, proto)
                return
            plan, reservation, by_quota = await self._reserve(call, key, plan)
        except GatewayError as exc:
            metrics.count_request(api, exc.status, model)
            await refuse(proto, scope.path, exc, request_id)
            return
        if reservation is not None:
            call = msgspec.structs.replace(call, ceiling=ceiling(reservation, ask), quota_headers=reservation.headers,
                                           short=reservation.short)
        outcome = Outcome(plan.model.model_id, served_by_fallback=by_quota)
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        watch = ClientWatch(proto, loop)
        try:
            self.usage.serving(call, outcome)
            error = await self.failover.serve(call, outcome, plan, proto)
            watch.stop()
            if error is not None:
                if key.role != "admin":
                    error = error.for_member()            # which endpoint, and what it said, is the operator's
                elif isinstance(error, UpstreamAuthFailed):
                    error = error.for_admin()             # operators are told which endpoint
                outcome.result, outcome.status = "error", error.status
                if outcome.cut_answering and not outcome.input_tokens:
                    outcome.estimate_tokens(call)        # as a stream cut is: the upstream read the prompt
                send_error(proto, error, door.error_body(error), outcome.response_headers(call))
            elif outcome.answer is not None and cache_key is not None and not outcome.served_by_fallback:
                self.cache.store(cache_key, CachedAnswer(*outcome.answer))  # type: ignore[union-attr]
        except ClientGone:
            outcome.client_left()
        except asyncio.CancelledError:
            outcome.client_left()
            if not watch.absorb():
                raise
        except Exception:                 # answered 500 by the edge: the usage event says so, not `ok`
            outcome.result, outcome.status = "error", outcome.status or 500
            raise
        finally:
            watch.stop()
            if outcome.result == "cancelled":
                self._cancelled(call, outcome, reservation)
            if reservation is not None:
                self.quota.finished(reservation)
            self._finish(call, outcome)

    async def _read(self, scope: Any, proto: Any) -> tuple[KeyIssued, bytes, InferenceRequest, Door]:
        """The caller, the body, the door's request read from it (types and static bounds checked) and the door;
        a GatewayError refuses the call. A Responses call's body is read with what it names of kept Responses in
        place (the items its `item_reference`s name, the conversation its `previous_response_id` continues or its
        `conversation` names), when Responses are kept; the other doors' bodies are not looked at here."""
        key = self.auth.authenticate(scope.headers, anonymous=True)
        body = await read_body(scope.headers, proto, self.max_body_bytes)
        api = self.routes[scope.path]
        if (api == RESPONSES or api == INPUT_TOKENS) and self.items is not None:
            resolved = await self.items.resolve(key.tenant_id, body) if self.items.names_any(body) else Resolved(body)
            body = resolved.body
            request = read_request(api, body)
            door = Door(scope.path, request, body)
            if api == RESPONSES:
                keeper = partial(self.items.store, key.tenant_id, resolved=resolved)
                door.responses.keep(keeper, resolved.previous, resolved.conversation)  # type: ignore[union-attr]
            return key, body, request, door
        request = read_request(api, body)
        return key, body, request, Door(scope.path, request, body)

    async def _count_tokens(self, api: str, scope: Any, proto: Any) -> None:
        """Anthropic's `count_tokens` and the Responses API's `input_tokens`: the prompt counted with the gateway's
        tokenizer, as the call's quota hold would count it; no endpoint, no usage event."""
        request_id = request_id_of(scope.headers)
        try:
            key, body, request, door = await self._read(scope, proto)
            self.router.resolve(key.tenant_id, request.model)  # type: ignore[arg-type]  # 404 if not the tenant's
            counter = door.anthropic.count_tokens if door.anthropic is not None \
                else door.responses.input_tokens  # type: ignore[union-attr]
            estimator = self.quota.estimator
            if len(body) > WHOLE_COUNT_BYTES:                  # exact however long, counted off the loop
                answer = await asyncio.get_running_loop().run_in_executor(
                    None, counter, estimator.whole_counter(), estimator.image_tokens)
            else:
                answer = counter(estimator.count, estimator.image_tokens)
        except GatewayError as exc:
            metrics.count_request(api, exc.status)
            await refuse(proto, scope.path, exc, request_id)
            return
        metrics.count_request(api, 200)
        proto.response_bytes(200, [("content-type", "application/json"), *request_id_headers(door.shape, request_id)],
                             answer)

    async def _reserve(self, call: Call, key: KeyIssued, plan: RoutePlan) -> tuple[RoutePlan, Reservation | None, bool]:
        """Hold the call's quota; over a quota with `fallback_on_quota`, the plan of the model reserved instead
        (and True). The call is journaled first, so that nothing is ever held for a call the journal does not
        know; a refusal takes it out again. A journal that syncs to disk syncs while the quota is reserved, and
        the call goes on once both are done: no upstream is asked before its acceptance is on disk (a machine
        that dies in between leaves a hold no call owns, which lapses at the hold's expiry)."""
        if call.ask is not None and len(call.body) > WHOLE_COUNT_BYTES:      # counted exactly, off the loop
            await asyncio.get_running_loop().run_in_executor(None, call.ask.count_whole)
        # a call its limits count is journaled with its counted prompt (the reservation counts it next, once): what
        # it is charged if its gateway dies before its first progress record, which a hold never falls short of
        limited = call.ask is not None and self.quota.book.applicable(key.tenant_id, plan.model.model_id) is not None
        accepted = self.usage.accepted(call, plan.model.model_id,
                                       call.ask.counted_tokens() if limited else None)  # type: ignore[union-attr]
        reservation = None
        try:
            syncing = self.usage.journaling(accepted)
            served, reservation = await self.quota.reserve_or_fallback(
                hold=hold_name(call.request_id, call.event_id), key=key, model=plan.model,
                ask=call.ask)  # type: ignore[arg-type]
            if syncing is not None:
                await syncing
            if served is plan.model:
                return plan, reservation, False
            return self.router.resolve(key.tenant_id, served.model_id), reservation, True
        except BaseException:
            if reservation is not None:           # its hold, no longer kept, lapses at its expiry
                self.quota.finished(reservation)
            self.usage.refused(call)
            raise

    def _cancelled(self, call: Call, outcome: Outcome, reservation: Reservation | None) -> None:
        """The client left: the prompt counts if an upstream was asked (with what was streamed so far), and the
        quota hold is released now rather than when the usage event settles."""
        if outcome.attempts and not outcome.input_tokens:
            outcome.estimate_tokens(call, outcome.output_tokens)
        if not outcome.status:
            outcome.status = CLIENT_CLOSED          # nothing was sent: nginx's "client closed request"
        if reservation is not None:
            tokens = outcome.input_tokens + outcome.output_tokens
            self.quota.release(reservation, outcome.input_tokens, outcome.output_tokens, 1 if tokens else 0)

    async def _lookup(self, path: str, headers: Any, tenant_id: str, api: str, model_id: str,
                      body: bytes) -> tuple[str | None, CachedAnswer | None]:
        """The call's cache key (None: the client said `no-store`) and the answer kept under it, if any."""
        assert self.cache is not None
        read, write = directives(headers)
        if not write:
            return None, None
        cache_key = self.cache.key(path, tenant_id, model_id, body)
        return cache_key, await self.cache.lookup(cache_key, api, model_id) if read else None

    def _answer_from_cache(self, call: Call, plan: RoutePlan, hit: CachedAnswer, proto: Any) -> None:
        """Replay a kept answer: no endpoint, no quota held, no tokens spent; still one usage event."""
        outcome = Outcome(plan.model.model_id)
        outcome.status, outcome.cache_hit = 200, True
        outcome.mark_first_byte()
        proto.response_bytes(200, [("content-type", hit.content_type), *outcome.response_headers(call)], hit.body)
        self._finish(call, outcome)

    def _finish(self, call: Call, outcome: Outcome) -> None:
        """Queue the call's one usage event and count it."""
        event = outcome.usage_event(call)
        self.usage.record(event)
        metrics.observe_call(event, event.duration_ms / 1000, event.overhead_ms / 1000)
        if self.access_log:
            log.info("call.done", request_id=event.request_id, tenant=event.tenant_id, key=event.key_id,
                     api=event.api, model=event.model, endpoint=event.endpoint_id, status=event.status,
                     outcome=event.outcome, latency_ms=round(event.duration_ms, 3),
                     overhead_ms=round(event.overhead_ms, 3),
                     ttfb_ms=round(event.ttfb_ms, 3) if event.ttfb_ms is not None else None,
                     input_tokens=event.input_tokens, output_tokens=event.output_tokens, cache_hit=event.cache_hit,
                     attempts=event.attempts)


def ceiling(reservation: Reservation, ask: Ask) -> int | None:
    """The output limit to write upstream: the reservation's grant, when some limit depends on the output and
    the client asked for more (or named no limit at all)."""
    granted = reservation.ceiling
    if granted is None or (ask.largest is not None and granted >= ask.largest):
        return None
    return granted


def send_error(proto: Any, error: GatewayError, body: bytes, extra: list[tuple[str, str]] | None = None) -> None:
    headers = [("content-type", "application/json"), *error.headers.items(), *(extra or ())]
    proto.response_bytes(error.status, headers, body)
