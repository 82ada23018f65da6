"""The Ollama API routes beside the hot path: `/`, /api/tags, /api/ps, /api/version and /api/show, per tenant, from the local catalog.

A model is listed when the caller's tenant may use it and at least one endpoint serves it,
however many endpoints do (the list is merged). Names follow Ollama: a name without a tag
is shown as `name:latest`, and `name:latest` finds `name`. Sizes are not known to the
gateway and are 0; the digest is the SHA-256 of the model id, stable across restarts.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from litestar import Request, Response, get, head, post

from switchyard_gateway.catalog.rules import MODEL_CAPABILITIES, normalise_model
from switchyard_gateway.catalog.state import Catalog, upstream_name
from switchyard_gateway.contracts.events import ModelRegistered
from switchyard_gateway.contracts.routing import ModelFacts
from switchyard_gateway.services.gateway.api.common import AppDeps
from switchyard_gateway.services.gateway.deps import Deps
from switchyard_gateway.services.gateway.openapi.shapes import OllamaShowRequest

# the Ollama release whose API the door matches (its api/types.go and server/routes.go were read for it), said at
# /api/version: clients check it before they talk (VS Code's Copilot Chat refuses a server below 0.6.4)
OLLAMA_VERSION = "0.32.15"
KEEP_ALIVE = timedelta(minutes=5)  # Ollama's default: how long /api/ps says a loaded model stays

_encode = msgspec.json.Encoder().encode
FactsLookup = Callable[[str, str], ModelFacts | None]    # (endpoint id, model as served) -> what the server said


_decode_show = msgspec.json.Decoder(OllamaShowRequest).decode


def ollama_name(model_id: str) -> str:
    """The name Ollama shows for a model: with its tag, `:latest` when it has none."""
    return model_id if ":" in model_id else f"{model_id}:latest"


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def details(model: ModelRegistered, catalog: Catalog) -> dict[str, Any]:
    """Ollama's `details` block, from what the name says (family, size and quantisation tags)."""
    base, _, tag = model.model_id.partition(":")
    letters = re.match(r"[a-z]+", base.rsplit("/", 1)[-1].lower())
    family = letters.group() if letters else ""
    size = re.search(r"(?:^|[-_])(\d+(?:\.\d+)?[bm])(?:$|[-_])", tag.lower())
    quant = re.search(r"(?:^|[-_])((?:q\d\w*)|f16|fp16|bf16|f32)(?:$|[-_])", tag.lower())
    native = any(catalog.providers.get(e.provider_id) is not None
                 and catalog.providers[e.provider_id].kind == "ollama"
                 for e in catalog.endpoints_serving(model.model_id))
    return {
        "parent_model": "",
        "format": "gguf" if native else "",
        "family": family,
        "families": [family] if family else None,
        "parameter_size": size.group(1).upper() if size else "",
        "quantization_level": quant.group(1).upper() if quant else "",
    }


def visible_models(catalog: Catalog, tenant_id: str) -> list[ModelRegistered]:
    """The models a tenant may use that some endpoint serves."""
    return [m for m in catalog.models_for(tenant_id) if catalog.endpoints_serving(m.model_id)]


def _entry(model: ModelRegistered, catalog: Catalog) -> dict[str, Any]:
    name = ollama_name(model.model_id)
    return {
        "name": name, "model": name, "modified_at": _time(model.occurred_at), "size": 0,
        "digest": hashlib.sha256(model.model_id.encode()).hexdigest(), "details": details(model, catalog),
    }


def tags_body(catalog: Catalog, tenant_id: str) -> dict[str, Any]:
    """GET /api/tags: every model this tenant may use, once, however many endpoints serve it."""
    return {"models": [_entry(m, catalog) for m in visible_models(catalog, tenant_id)]}


def ps_body(catalog: Catalog, tenant_id: str, loaded: Callable[[str], Iterable[str]] | None,
            now: datetime | None = None) -> dict[str, Any]:
    """GET /api/ps: the models this tenant may use that some endpoint serving them reports loaded.

    `loaded(endpoint_id)` gives the names an endpoint has loaded (as the endpoint spells them);
    without it nothing is known to be loaded.
    """
    if loaded is None:
        return {"models": []}
    expires = _time((now or datetime.now(UTC)) + KEEP_ALIVE)
    found: dict[str, ModelRegistered] = {}
    for endpoint in catalog.endpoints.values():
        for name in loaded(endpoint.endpoint_id) or ():
            model_id = catalog.resolve_model(name)
            if model_id is None or model_id in found or not catalog.tenant_may_use(tenant_id, model_id):
                continue
            if endpoint in catalog.endpoints_serving(model_id):
                found[model_id] = catalog.models[model_id]
    models = []
    for model_id in sorted(found):
        entry = _entry(found[model_id], catalog)
        del entry["modified_at"]
        entry.update(expires_at=expires, size_vram=0)
        if found[model_id].context_length:
            entry["context_length"] = found[model_id].context_length
        models.append(entry)
    return {"models": models}


def served_facts(catalog: Catalog, model: ModelRegistered, facts: FactsLookup | None) -> ModelFacts:
    """What the endpoints serving a model said of it at their last probe, merged: capabilities together, the
    first architecture and context length any of them gave."""
    capabilities: set[str] = set()
    architecture, context = "", 0
    for endpoint in catalog.endpoints_serving(model.model_id) if facts is not None else ():
        said = facts(endpoint.endpoint_id, normalise_model(upstream_name(endpoint, model)))  # type: ignore[misc]
        if said is not None:
            capabilities.update(said.capabilities)
            architecture = architecture or said.architecture
            context = context or said.context_length
    return ModelFacts(model=model.model_id, capabilities=tuple(sorted(capabilities)), architecture=architecture,
                      context_length=context)


def show_body(catalog: Catalog, tenant_id: str, name: str, facts: FactsLookup | None = None) -> dict[str, Any] | None:
    """POST /api/show: what the catalog knows of a model this tenant may use, with what its servers say of it
    (capabilities, architecture; `unknown` when none says); None when there is no such model."""
    model_id = catalog.resolve_model(name) if name else None
    if model_id is None or not catalog.tenant_may_use(tenant_id, model_id) \
            or not catalog.endpoints_serving(model_id):
        return None
    model = catalog.models[model_id]
    info = details(model, catalog)
    said = served_facts(catalog, model, facts)
    arch = said.architecture or "unknown"
    if said.architecture:
        info.update(family=said.architecture, families=[said.architecture])
    model_info: dict[str, Any] = {"general.architecture": arch}
    context = model.context_length or said.context_length
    if context:
        model_info[f"{arch}.context_length"] = context
    given = {"embedding" if model.kind == "embedding" else "completion",     # what its kind says, what its
             *said.capabilities, *model.capabilities}                       # servers say, what an operator adds
    capabilities = [word for word in MODEL_CAPABILITIES if word in given]
    assignment = catalog.assignments.get(tenant_id, {}).get(model_id)
    price_in = assignment.input_price_per_1m if assignment and assignment.input_price_per_1m is not None \
        else model.input_price_per_1m
    price_out = assignment.output_price_per_1m if assignment and assignment.output_price_per_1m is not None \
        else model.output_price_per_1m
    return {
        "license": "", "modelfile": "", "parameters": "", "template": "",
        "details": info, "model_info": model_info,
        "capabilities": capabilities,
        "modified_at": _time(model.occurred_at),
        "switchyard": {
            "model": model.model_id, "aliases": list(model.aliases), "kind": model.kind,
            "context_length": context, "input_price_per_1m": price_in,
            "output_price_per_1m": price_out,
        },
    }


def _json(body: Any, status: int = 200) -> Response[bytes]:
    return Response(_encode(body), status_code=status, media_type="application/json")


def _caller(request: Request[Any, Any, Any], deps: Deps) -> tuple[Catalog, str]:
    return deps.catalog, deps.auth.authenticate(request.headers, anonymous=True).tenant_id


RUNNING = "Ollama is running"       # what Ollama answers at its root, and what tools look for


@get("/", media_type="text/plain", sync_to_thread=False)
def ollama_root() -> str:
    """Ollama's liveness answer, so that tools which look for an Ollama find one (no key needed)."""
    return RUNNING


@head("/", sync_to_thread=False, name="ollama_root_head")
def ollama_root_head() -> Response[None]:
    return Response(None, media_type="text/plain", headers={"content-length": str(len(RUNNING))})


@get("/api/tags")
async def ollama_tags(request: Request[Any, Any, Any], deps: AppDeps) -> Response[bytes]:
    """The models this caller's tenant may use, in Ollama's list shape."""
    catalog, tenant_id = _caller(request, deps)
    return _json(tags_body(catalog, tenant_id))


@get("/api/ps")
async def ollama_ps(request: Request[Any, Any, Any], deps: AppDeps) -> Response[bytes]:
    """The models endpoints report loaded (from the routing state this gateway follows)."""
    catalog, tenant_id = _caller(request, deps)
    return _json(ps_body(catalog, tenant_id, deps.circuits.loaded))


@get("/api/version", sync_to_thread=False)
def ollama_version() -> Response[bytes]:
    """The Ollama release the door speaks, with no key needed, as at `/`: it tells nothing of the tenant, and tools
    ask it before they send one (Copilot Chat sends none)."""
    return _json({"version": OLLAMA_VERSION})


@post("/api/show", status_code=200)
async def ollama_show(request: Request[Any, Any, Any], deps: AppDeps) -> Response[bytes]:
    """One model's details, or 404 `{"error": "model 'x' not found"}`."""
    catalog, tenant_id = _caller(request, deps)
    try:
        req = _decode_show(await request.body() or b"{}")
    except msgspec.MsgspecError as exc:
        return _json({"error": f"invalid request: {exc}"}, 400)
    name = req.model or req.name
    if not name:
        return _json({"error": "model is required"}, 400)
    body = show_body(catalog, tenant_id, name, deps.circuits.facts)
    if body is None:
        return _json({"error": f"model '{name}' not found"}, 404)
    return _json(body)


OLLAMA_ROUTES = [ollama_root, ollama_root_head, ollama_tags, ollama_ps, ollama_version, ollama_show]
