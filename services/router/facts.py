"""What servers say of the models they serve (capabilities, architecture, context), read at probe time and kept.

Ollama: `POST /api/show` per model (`capabilities`, `model_info["general.architecture"]` and
`<arch>.context_length`), asked once per model and digest. OpenAI-style servers: what their `/v1/models`
answer already holds (llama.cpp's `models[].capabilities`, `data[].architecture.input_modalities` and
`meta.n_ctx_train`; vLLM's `max_model_len`), and llama.cpp's `GET /props` (`chat_template_caps.supports_tools`,
`modalities.vision`), asked again only when the models advertised change. Nothing here is on a call's path,
and a server that says nothing leaves the facts empty: the gateway then says "unknown".
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from switchyard_gateway import http1
from switchyard_gateway.catalog.rules import MODEL_CAPABILITIES, normalise_model
from switchyard_gateway.contracts.routing import ModelFacts

CAPABILITIES = MODEL_CAPABILITIES     # Ollama's words
SHOW_CONCURRENCY = 4
MAX_FACTS_BYTES = 8 * 1024 * 1024             # a model card with its template is well under this
JSON_BODY = ("Content-Type", "application/json")


def ollama_facts(name: str, show: Any) -> ModelFacts:
    """The facts of one model from Ollama's `/api/show` answer."""
    if not isinstance(show, dict):
        return ModelFacts(model=name)
    info = show.get("model_info") if isinstance(show.get("model_info"), dict) else {}
    architecture = str(info.get("general.architecture") or "")
    context = info.get(f"{architecture}.context_length") if architecture else None
    capabilities = show.get("capabilities") if isinstance(show.get("capabilities"), list) else []
    return ModelFacts(model=name, capabilities=_known(capabilities), architecture=architecture,
                      context_length=context if isinstance(context, int) and context > 0 else 0)


def openai_facts(listing: Any, props: Any = None) -> dict[str, ModelFacts]:
    """The facts an OpenAI-style `/v1/models` answer holds per model, with llama.cpp's `/props` when given."""
    if not isinstance(listing, dict):
        return {}
    caps: dict[str, set[str]] = {}
    for item in listing.get("models") or ():       # llama.cpp lists its models the Ollama way too
        if isinstance(item, dict) and isinstance(item.get("capabilities"), list):
            name = normalise_model(str(item.get("model") or item.get("name") or ""))
            caps.setdefault(name, set()).update(_known(item["capabilities"]))
    found: dict[str, ModelFacts] = {}
    for item in listing.get("data") or ():
        if not isinstance(item, dict) or not item.get("id"):
            continue
        name = normalise_model(str(item["id"]))
        have = caps.get(name, set())
        architecture = item.get("architecture") if isinstance(item.get("architecture"), dict) else {}
        if "image" in (architecture.get("input_modalities") or ()):
            have.add("vision")
        meta = item.get("meta") if isinstance(item.get("meta"), dict) else {}
        context = meta.get("n_ctx_train") or item.get("max_model_len") or 0
        found[name] = ModelFacts(model=name, capabilities=_ordered(have),
                                 context_length=context if isinstance(context, int) and context > 0 else 0)
    if isinstance(props, dict) and len(found) == 1:   # /props speaks of the one model the server runs
        (name, facts), = found.items()
        have = set(facts.capabilities)
        template = props.get("chat_template_caps") if isinstance(props.get("chat_template_caps"), dict) else {}
        if template.get("supports_tools") or template.get("supports_tool_calls"):
            have.add("tools")
        modalities = props.get("modalities") if isinstance(props.get("modalities"), dict) else {}
        if modalities.get("vision"):
            have.add("vision")
        found[name] = ModelFacts(model=name, capabilities=_ordered(have), context_length=facts.context_length)
    return found


def _known(words: Any) -> tuple[str, ...]:
    return _ordered({str(w) for w in words if str(w) in CAPABILITIES})


def _ordered(words: set[str]) -> tuple[str, ...]:
    return tuple(w for w in CAPABILITIES if w in words)


class FactsBook:
    """Per endpoint, the facts last read and what they were read for; asks a server again only when that changed."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[Any, dict[str, ModelFacts]]] = {}

    def forget(self, endpoint_ids: Any) -> None:
        """Drop what is held for endpoints no longer registered."""
        for endpoint_id in set(self._held) - set(endpoint_ids):
            del self._held[endpoint_id]

    async def ollama(self, pool: http1.Pool, endpoint_id: str, root: str, headers: list[tuple[str, str]],
                     timeout_s: float, digests: dict[str, str]) -> tuple[ModelFacts, ...]:
        """Facts of every model an Ollama advertises (name -> digest), `/api/show` asked for new ones only."""
        seen, held = self._held.get(endpoint_id, ({}, {}))
        seen = seen if isinstance(seen, dict) else {}          # held for another kind of server before
        known = {name: facts for name, facts in held.items() if name in digests and seen.get(name) == digests[name]}
        gate = asyncio.Semaphore(SHOW_CONCURRENCY)

        async def show(name: str) -> ModelFacts | None:
            async with gate:
                try:
                    response = await pool.fetch("POST", f"{root}/api/show", [*headers, JSON_BODY],
                                                msgspec.json.encode({"model": name}), timeout_s=timeout_s,
                                                max_body_bytes=MAX_FACTS_BYTES)
                    return ollama_facts(name, response.json()) if response.status == 200 else None
                except (http1.TransportError, ValueError):
                    return None                         # asked again at the next probe

        missing = [name for name in digests if name not in known]
        for facts in await asyncio.gather(*(show(name) for name in missing)):
            if facts is not None:
                known[facts.model] = facts
        self._held[endpoint_id] = (dict(digests), known)
        return tuple(known[name] for name in sorted(known) if name in digests)

    async def openai(self, pool: http1.Pool, endpoint_id: str, root: str, headers: list[tuple[str, str]],
                     timeout_s: float, listing: Any, models: tuple[str, ...]) -> tuple[ModelFacts, ...]:
        """Facts from the `/v1/models` answer, with llama.cpp's `/props` read when the model list changed."""
        key, held = self._held.get(endpoint_id, (None, {}))
        if key != models:
            props = None
            if _is_llama_cpp(listing):
                try:
                    response = await pool.fetch("GET", f"{root}/props", headers, timeout_s=timeout_s,
                                                max_body_bytes=MAX_FACTS_BYTES)
                    props = response.json() if response.status == 200 else None
                except (http1.TransportError, ValueError):
                    props = None
            held = openai_facts(listing, props)
            if props is not None or not _is_llama_cpp(listing):
                self._held[endpoint_id] = (models, held)
        return tuple(held[name] for name in sorted(held) if name in models)


def _is_llama_cpp(listing: Any) -> bool:
    data = listing.get("data") if isinstance(listing, dict) else None
    return any(isinstance(item, dict) and (item.get("owned_by") == "llamacpp" or "meta" in item)
               for item in data or ())
