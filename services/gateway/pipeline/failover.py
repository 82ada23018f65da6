"""Serve a call through the first endpoint that can: retry, back off, fall back — never after bytes reached the client.

Per model: endpoints in candidate order (breakers open skipped, priority, loaded
first, least in flight). A refused connection, an answer that does not start
within the endpoint's first-byte timeout, a refusal of the gateway's credentials,
a status that is no answer (a redirect, a 2xx other than 200), a 200 that is
none (not a JSON object, only an `error`, compressed) or a stream cut before any
event moves on to the next endpoint at once; every 5xx and a 429 is retried on
the same endpoint after an exponential backoff with jitter (at least the
upstream's Retry-After, unless that is longer than we are willing to wait), up
to `retries_per_endpoint` times. Another 4xx is the client's error: no failover. When every endpoint at its cap is busy, the
call waits up to `cap_wait_s` for a slot. When the model's endpoints are
exhausted, the next model of the call's route plan (its fallback chain) is tried the same way.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import structlog

from switchyard_gateway import http1
from switchyard_gateway.contracts.events import CallAttempted
from switchyard_gateway.kit.logs import Throttle
from switchyard_gateway.services.gateway.edge.errors import BadRequest, GatewayError, UpstreamError
from switchyard_gateway.services.gateway.pipeline import relay
from switchyard_gateway.services.gateway.pipeline.call import Call, Outcome
from switchyard_gateway.services.gateway.pipeline.routing import Route, RoutePlan, Router, Target
from switchyard_gateway.services.gateway.pipeline.usage import OutcomeBatcher
from switchyard_gateway.services.gateway.settings import Settings
from switchyard_gateway.services.gateway.translate.wire import TranslationError

log = structlog.get_logger()
_failures = Throttle(10.0)          # one line per endpoint and kind of failure every 10 s, with how many were held back
# An endpoint's last slot went to a call in another worker between choosing it and counting this call in.
AT_CAP = UpstreamError("Every endpoint for this model is at its concurrency limit", status=503, code="capacity",
                       headers={"retry-after": "1"})


class Failover:
    """Walks a call's route plan: each model's endpoints in candidate order, retries, then the next model."""

    def __init__(self, router: Router, pool: http1.Pool, outcomes: OutcomeBatcher, settings: Settings) -> None:
        self.router, self.pool, self.outcomes = router, pool, outcomes
        self.retries = max(0, settings.retries_per_endpoint)
        self.base_s = settings.retry_base_ms / 1000
        self.max_s = settings.retry_max_ms / 1000
        self.retry_after_max_s = settings.retry_after_max_s
        self.cap_wait_s = settings.cap_wait_s
        self.debug = logging.getLogger().isEnabledFor(logging.DEBUG)    # the level is set once, at start
        self.first_byte_s = settings.first_byte_timeout_s
        self.max_answer_bytes = settings.max_answer_bytes
        self.loop: asyncio.AbstractEventLoop | None = None      # the worker's, looked up once (not per attempt)

    async def serve(self, call: Call, outcome: Outcome, plan: RoutePlan, proto: Any) -> GatewayError | None:
        """Serve the call along its plan; return the error to show if nothing could (the caller sends it)."""
        error: GatewayError | None = None
        for number, target in enumerate(plan.targets):
            if number:
                log.info("route.fallback_model", request_id=call.request_id, model=outcome.model,
                         fallback=target.model.model_id)
                outcome.served_by_fallback = True
            outcome.model = target.model.model_id
            error = await self._serve_model(call, outcome, target, proto)
            if error is None:
                return None
        if plan.unknown_fallback:
            log.warning("route.fallback_unknown", request_id=call.request_id, model=outcome.model,
                        fallback=plan.unknown_fallback)
        return error

    async def _serve_model(self, call: Call, outcome: Outcome, target: Target, proto: Any) -> GatewayError | None:
        model_id = target.model.model_id
        deadline = time.monotonic() + self.cap_wait_s
        tried: set[str] = set()
        last: GatewayError | None = None
        while True:
            candidates = self.router.candidates(model_id, target.routes, tried)
            if self.debug:
                log.debug("route.plan", request_id=call.request_id, tenant=call.tenant_id, model=model_id,
                          **self.router.describe(candidates))
            if not candidates.ready:
                if candidates.capped and time.monotonic() < deadline:
                    await self.router.wait_for_release(model_id, deadline - time.monotonic())
                    continue
                return last if last is not None and not candidates.capped else candidates.error()
            route = candidates.ready[0]
            tried.add(route.endpoint.endpoint_id)
            error = await self._try_endpoint(call, outcome, model_id, route, proto)
            if error is None:
                return None
            if error is AT_CAP:                   # another worker took the last slot meanwhile: look again
                tried.discard(route.endpoint.endpoint_id)
                continue
            last = error

    async def _try_endpoint(self, call: Call, outcome: Outcome, model_id: str, route: Route,
                            proto: Any) -> GatewayError | None:
        endpoint = route.endpoint
        eid = endpoint.endpoint_id
        provider = self.router.catalog.providers.get(endpoint.provider_id)
        plan = call.door.plan(provider.kind if provider else "openai-compatible")
        try:
            upstream_path, payload = plan.request(call.body, route.upstream_model, call.ceiling)
        except TranslationError as exc:           # this kind of endpoint cannot take the request: try another
            log.debug("route.skip", request_id=call.request_id, endpoint=eid, reason=str(exc))
            return BadRequest(f"Endpoint '{eid}' cannot serve this request: {exc}")
        stalls = self.router.stalls
        to = relay.Attempt(endpoint, plan, upstream_path, payload,
                           lambda result, status, t0: self._report(call, model_id, eid, result, status, t0),
                           endpoint.first_byte_timeout_s or self.first_byte_s, lambda: stalls.answered(eid, call),
                           self.max_answer_bytes)
        circuits = self.router.circuits
        last: GatewayError | None = None
        for attempt in range(self.retries + 1):
            if circuits is not None and not circuits.allows(eid):
                log.debug("route.skip", request_id=call.request_id, endpoint=eid, reason=f"circuit {circuits.state(eid)}")
                return last or UpstreamError(f"Endpoint '{eid}' is unavailable (circuit open)", status=503,
                                             code="circuit_open", headers={"retry-after": "5"})
            if not self.router.acquire(eid, model_id, endpoint.max_concurrent):
                return last or AT_CAP
            outcome.attempts += 1
            outcome.endpoint, outcome.upstream_model = endpoint, route.upstream_model
            started = time.perf_counter()
            delay = None
            stalls.begun(eid, call)
            try:
                loop = self.loop
                if loop is None:
                    loop = self.loop = asyncio.get_running_loop()
                await relay.attempt(self.pool, call, outcome, to, proto, loop)
                return None
            except relay.Failed as failed:
                last = failed.error
                delay = self._backoff(attempt, failed)
                held_back = _failures.due(f"{eid}\t{failed.outcome}")
                if held_back is not None:       # an endpoint failing is an operator's business: said, not flooded
                    log.warning("upstream.attempt_failed", request_id=call.request_id, endpoint=eid,
                                outcome=failed.outcome, error=str(failed.error)[:300], attempt=attempt + 1,
                                retry_in_s=delay, **({"repeated": held_back} if held_back else {}))
                if delay is None:
                    return last
            finally:
                stalls.ended(eid, call)
                self.router.release(eid, model_id)
                if circuits is not None:
                    circuits.release(eid)      # frees a half-open trial slot, if this was one
                outcome.upstream_s += time.perf_counter() - started
            await asyncio.sleep(delay)
        return last

    def _backoff(self, attempt: int, failed: relay.Failed) -> float | None:
        """Seconds to wait before retrying the same endpoint, or None to move on."""
        if failed.outcome not in ("http_5xx", "http_429") or attempt >= self.retries:
            return None
        delay = min(self.max_s, self.base_s * 2 ** attempt) * (0.5 + random.random() / 2)
        if failed.retry_after_s is not None:
            if failed.retry_after_s > self.retry_after_max_s:
                return None
            delay = max(delay, failed.retry_after_s)
        return delay

    def _report(self, call: Call, model_id: str, endpoint_id: str, result: str, status: int, started: float) -> None:
        """Tell the router how an attempt went (batched onto core NATS, never awaited)."""
        self.outcomes.record(CallAttempted(
            request_id=call.request_id, endpoint_id=endpoint_id, model=model_id, outcome=result,  # type: ignore[arg-type]
            status=status, latency_ms=(time.perf_counter() - started) * 1000,
        ))
