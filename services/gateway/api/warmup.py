"""Warm-up and model test under /api/admin/models: unbilled minimal calls made by the router's leader
(`router.warm.v1`), each recorded as a `model.warmed.v1` fact, never as usage.

`POST /api/admin/models/warmup {model, endpoint?, provider?}` warms a model on every endpoint serving it (or
the one named) and says how long each took; `POST /api/admin/models/{id}/test` makes one such call on the
first endpoint that answers and reports it the way the provider-admin API's test does (`success`,
`latency_ms`). Model ids may hold slashes, so both live under one POST route that reads the path whole.

A model nothing serves (or not the endpoint or provider named) is refused 404 from this gateway's catalog once it
holds every registry event recorded so far; else the router, whose own catalog may lag, is asked and looks again.
The router is waited for as long as its calls may take (`warm_timeout_s`, the router's SWITCHYARD_WARM_TIMEOUT_S,
each) and a margin; it makes no call it could not end by then.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Request, Response, Router, post
from litestar.params import FromPath

from switchyard_gateway.catalog.rules import model_name_problem
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.messages import ErrorBody, WarmModel, WarmReply
from switchyard_gateway.contracts.routing import ModelWarmed
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.services.gateway.api.common import AppDeps, admin_guard, ask, json_object, json_response
from switchyard_gateway.services.gateway.deps import Deps

_reply = msgspec.json.Decoder(WarmReply)
CALL_MARGIN_S = 5.0              # beside each of the router's calls (settings.warm_timeout_s): recording its result
WAIT_MARGIN_S = 5.0              # beside them all: the catch-up of a router that lags, the answer's way back
MAX_WAIT_S = 600.0


class WarmupRequest(msgspec.Struct, frozen=True):
    model: str | None = None
    model_id: str | None = None   # the embeddings service's spelling
    endpoint: str = ""
    provider: str = ""


def result_view(result: ModelWarmed) -> dict[str, Any]:
    return {"endpoint_id": result.endpoint_id, "success": result.ok, "duration_ms": result.duration_ms,
            "status": result.status or None, "error": result.error or None, "upstream_model": result.upstream_model,
            "warmed_at": msgspec.to_builtins(result.occurred_at)}


def refused_name(model: str) -> None:
    """400 for what can be no model's name (a 100,000-character one was echoed whole in a 404)."""
    problem = model_name_problem(model)
    if problem is not None:
        raise ServiceError(400, ErrorBody("VALIDATION_ERROR", problem, "model"))


async def warm(deps: Deps, model: str, *, endpoint: str = "", provider: str = "", trigger: str = "admin",
               first_only: bool = False) -> list[ModelWarmed]:
    """Have the router warm a model; answer once this gateway's catalog shows the recorded warm-ups."""
    if not model:
        raise ServiceError(400, ErrorBody("VALIDATION_ERROR", "Missing required field 'model'", "model"))
    refused_name(model)
    found = deps.catalog.warm_targets(model, endpoint, provider)
    if isinstance(found, ErrorBody):
        if await deps.state.caught_up(deps.nc):             # nothing serves it as of now: no need to ask the router
            raise ServiceError(404, found)
        model_id, serving = deps.catalog.resolve_model(model) or model, []     # the router looks again (catch-up)
    else:
        model_id, serving = found
    # each call of the router's, one after another, and a margin; the router makes none it could not finish by then
    wait_s = min(MAX_WAIT_S, WAIT_MARGIN_S + (deps.settings.warm_timeout_s + CALL_MARGIN_S) * max(1, len(serving)))
    command = WarmModel(model_id=model_id, endpoint_id=endpoint, provider_id=provider, trigger=trigger,  # type: ignore[arg-type]
                        first_only=first_only)
    reply = _reply.decode(await ask(deps, subjects.ROUTER_WARM, command, wait_s))
    await deps.state.wait_for({str(r.event_id) for r in reply.results})
    return reply.results


async def warmup(deps: Deps, body: WarmupRequest) -> Response[bytes]:
    results = await warm(deps, body.model or body.model_id or "", endpoint=body.endpoint, provider=body.provider)
    return json_response({
        "model": results[0].model_id if results else body.model, "success": all(r.ok for r in results),
        "warmed": sum(1 for r in results if r.ok), "duration_ms": round(sum(r.duration_ms for r in results), 3),
        "endpoints": [result_view(r) for r in results]})


async def test_model(deps: Deps, model: str) -> Response[bytes]:
    """One real, unbilled call to the model on the first endpoint that answers (recorded as a warm-up)."""
    refused_name(model)
    if deps.catalog.resolve_model(model) is None:
        raise ServiceError(404, ErrorBody("MODEL_NOT_FOUND", f"Model '{model}' not found", "model_id"))
    results = await warm(deps, model, trigger="test", first_only=True)
    last = results[-1]
    return json_response({
        "model_id": last.model_id, "success": last.ok, "latency_ms": last.duration_ms,
        "endpoint_id": last.endpoint_id, "status": last.status or None,
        "error": last.error or None, "code": None if last.ok else "CONNECTIVITY_ERROR",
        "tested_at": msgspec.to_builtins(datetime.now(UTC)), "attempts": [result_view(r) for r in results]})


@post("/models/{item:path}", status_code=200)
async def model_action(request: Request[Any, Any, Any], deps: AppDeps, item: FromPath[str]) -> Response[bytes]:
    """`/models/warmup` warms a model; `/models/<id>/test` tests one (the id read raw, slashes and all)."""
    rest = request.scope["raw_path"].decode().split("/models/", 1)[1]
    if rest == "warmup":
        return await warmup(deps, msgspec.convert(await json_object(request), WarmupRequest))
    if rest.endswith("/test") and len(rest) > 5:
        return await test_model(deps, rest[:-5])
    raise ServiceError(404, ErrorBody("NOT_FOUND", f"No such action on models: POST /api/admin/models/{rest}"))


ROUTES = [Router(path="/api/admin", guards=[admin_guard], route_handlers=[model_action])]
