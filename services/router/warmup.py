"""Warm-ups: an unbilled minimal call per endpoint, so that a model is loaded before the calls that need it.

Ollama is sent what its API documents for loading a model: an empty generate with a `keep_alive`
(an embedding model, which cannot generate, a one-word embed); other servers a one-token chat call
or a one-word embedding. No tenant pays and no usage is recorded: the registry records each call's
result as a `model.warmed.v1` fact (`RecordWarmUp`). The router makes the calls because it holds the
endpoints' credentials already (for its probes) and acts once, as the leader, for every gateway.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client as NATS

from switchyard_gateway import http1
from switchyard_gateway.catalog.rules import guess_kind
from switchyard_gateway.catalog.state import Catalog, upstream_name
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.contracts.events import EndpointRegistered, ModelRegistered
from switchyard_gateway.contracts.messages import CommandReply, ErrorBody, RecordWarmUp, WarmModel
from switchyard_gateway.contracts.routing import ModelWarmed
from switchyard_gateway.kit import natsio
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.services.router.probes import ERROR_BODY_CHARS, USER_AGENT, base, credential, redact

log = structlog.get_logger()
_reply = msgspec.json.Decoder(CommandReply)
WARM_TEXT = "warm-up"
CATCH_UP_S = 2.0                 # how long a model or endpoint just registered may take to reach this replica
WARMS_AT_ONCE = 16               # warm-up requests served at once (an endpoint's own calls still one at a time)
RECORD_S = 2.0                   # of an asker's wait, kept for recording a call's result and answering
MIN_CALL_S = 1.0                 # a call that would have less than this before its asker's deadline is not made


def warm_request(kind: str, model: ModelRegistered, upstream: str, keep_alive: str) -> tuple[str, dict[str, Any]]:
    """(path, body) of the smallest call that loads a model on an endpoint of this provider kind."""
    if kind == "ollama":
        if model.kind == "embedding":
            return "/api/embed", {"model": upstream, "input": WARM_TEXT, "keep_alive": keep_alive}
        return "/api/generate", {"model": upstream, "keep_alive": keep_alive, "stream": False}
    if model.kind == "embedding":
        return "/v1/embeddings", {"model": upstream, "input": WARM_TEXT}
    return "/v1/chat/completions", {"model": upstream, "max_tokens": 1,
                                    "messages": [{"role": "user", "content": WARM_TEXT}]}


class Warmer:
    """Makes warm-up calls and has the registry record each; `warm_on_start` endpoints are warmed by the
    control loop through `warm_endpoint`.

    Warm-ups of different endpoints run at once (the router serves `router.warm.v1` WARMS_AT_ONCE at a time);
    an endpoint's run one after another, as a server loads one model at a time: a hanging one holds up its own.
    None is made for an asker that has stopped waiting: a call that could not start before its asker's deadline
    (having waited its endpoint's turn) is not made, nor recorded, and one that starts ends before it."""

    def __init__(self, nc: NATS, client: http1.Pool, catalog: Catalog, instance: str, *,
                 keep_alive: str, timeout_s: float, request_timeout_s: float) -> None:
        self.nc, self.client, self.catalog, self.instance = nc, client, catalog, instance
        self.keep_alive, self.timeout_s, self.request_timeout_s = keep_alive, timeout_s, request_timeout_s
        self._turns: dict[str, asyncio.Lock] = {}      # endpoint -> the turn of its warm-ups
        self._in_turn: collections.Counter[str] = collections.Counter()     # ... holding or waiting for it

    async def answer(self, ask: WarmModel) -> list[ModelWarmed]:
        """Warm a model on the endpoints the request names (all serving it by default); 404 if none can.

        The gateway asks as soon as its own catalog shows a change; this replica's may lag a little, so
        what is missing is looked for again for up to `CATCH_UP_S` before the answer is 404."""
        deadline = natsio.asker_deadline()
        catch_up = time.monotonic() + CATCH_UP_S
        while isinstance(found := self.catalog.warm_targets(ask.model_id, ask.endpoint_id, ask.provider_id),
                         ErrorBody):
            if time.monotonic() > catch_up:
                raise ServiceError(404, found)
            await asyncio.sleep(0.1)
        model_id, endpoints = found
        results = []
        for endpoint in endpoints:
            result = await self.warm(endpoint, self.catalog.models[model_id], ask.trigger, deadline)
            if result is None:                  # no time left for it: nothing more is done, and the asker is told
                raise ServiceError(503, ErrorBody("BUSY", f"Endpoint '{endpoint.endpoint_id}' was busy with other "
                                                  f"warm-ups until too late to warm '{model_id}' in the time asked"
                                                  f"{f' ({len(results)} warmed before it)' if results else ''}; "
                                                  "retry shortly"))
            results.append(result)
            if ask.first_only and result.ok:
                break
        return results

    async def warm_endpoint(self, endpoint_id: str, models: tuple[str, ...]) -> None:
        """Warm each of an endpoint's models, one after the other (the ones it serves: registered with, or
        advertised by its probe)."""
        endpoint = self.catalog.endpoints.get(endpoint_id)
        if endpoint is None:
            return
        for name in models:
            model_id = self.catalog.resolve_model(name)
            model = self.catalog.models[model_id] if model_id is not None else \
                ModelRegistered(model_id=name, kind=guess_kind(name))  # type: ignore[arg-type]
            try:
                result = await self.warm(endpoint, model, "start")
            except Exception as exc:  # noqa: BLE001 — a warm-up must never take the control loop down
                log.warning("router.warm_up_failed", endpoint=endpoint_id, model=name, error=repr(exc))
                continue
            if result is not None:              # None only for an asker's deadline: there is none here
                log.info("router.warmed", endpoint=endpoint_id, model=model.model_id, ok=result.ok,
                         duration_ms=result.duration_ms, error=result.error or None)

    async def warm(self, endpoint: EndpointRegistered, model: ModelRegistered, trigger: str,
                   deadline: float | None = None) -> ModelWarmed | None:
        """One warm-up call in its endpoint's turn, timed, and recorded by the registry (the event as recorded, or
        as made); None, neither made nor recorded, if it could not start RECORD_S before `deadline` (a Unix time:
        when the asker stops waiting), which also cuts its timeout short."""
        turn = self._turns.setdefault(endpoint.endpoint_id, asyncio.Lock())
        self._in_turn[endpoint.endpoint_id] += 1
        try:
            async with turn:
                timeout_s = min(endpoint.timeout_s, self.timeout_s)
                if deadline is not None:
                    left_s = deadline - time.time() - RECORD_S
                    if left_s < MIN_CALL_S:
                        log.info("router.warm_up_not_made", endpoint=endpoint.endpoint_id, model=model.model_id,
                                 reason="its asker had stopped waiting")
                        return None
                    timeout_s = min(timeout_s, round(left_s, 1))
                command = await self._call(endpoint, model, trigger, timeout_s)
        finally:
            self._in_turn[endpoint.endpoint_id] -= 1
            if not self._in_turn[endpoint.endpoint_id]:          # nobody holds or waits for it: forgotten
                del self._in_turn[endpoint.endpoint_id], self._turns[endpoint.endpoint_id]
        return await self._record(command)

    async def _call(self, endpoint: EndpointRegistered, model: ModelRegistered, trigger: str,
                    timeout_s: float) -> RecordWarmUp:
        """Make the call, within `timeout_s`; what the registry is to record of it."""
        provider = self.catalog.providers.get(endpoint.provider_id)
        upstream = upstream_name(endpoint, model)
        path, body = warm_request(provider.kind if provider else "openai-compatible", model, upstream, self.keep_alive)
        secret = credential(endpoint.api_key_ref)
        headers = [("User-Agent", USER_AGENT), ("Content-Type", "application/json")]
        if secret:
            headers.append(("Authorization", f"Bearer {secret}"))
        started = time.perf_counter()
        status, error = 0, ""
        try:
            response = await self.client.fetch("POST", f"{base(endpoint.base_url)}{path}", headers,
                                               msgspec.json.encode(body), timeout_s=timeout_s)
            status = response.status
            if status >= 400:
                error = f"HTTP {status} from {path}: {response.text()[:ERROR_BODY_CHARS].strip()}"
        except http1.DeadlineExceeded:
            error = f"no answer from {path} within {timeout_s:g} s"
        except (http1.TransportError, ValueError) as exc:
            error = f"{path} failed: {str(exc) or type(exc).__name__}"
        return RecordWarmUp(model_id=model.model_id, endpoint_id=endpoint.endpoint_id, ok=not error,
                            duration_ms=round((time.perf_counter() - started) * 1000, 3), upstream_model=upstream,
                            status=status, error=redact(error, secret)[:500], trigger=trigger,  # type: ignore[arg-type]
                            router=self.instance)

    async def _record(self, command: RecordWarmUp) -> ModelWarmed:
        fields = {f: getattr(command, f) for f in command.__struct_fields__}
        try:
            raw = await natsio.request(self.nc, subjects.REGISTRY_COMMAND, encode(command), self.request_timeout_s)
        except ServiceError as exc:
            log.warning("router.warm_up_not_recorded", endpoint=command.endpoint_id, error=exc.body.message)
            return ModelWarmed(**fields)
        recorded = [e for e in _reply.decode(raw).later_events if isinstance(e, ModelWarmed)]
        return recorded[-1] if recorded else ModelWarmed(**fields)
