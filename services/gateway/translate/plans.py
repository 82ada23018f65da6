"""Protocol translation between the OpenAI and Ollama APIs: pure functions on bytes, and the plan per front door and endpoint kind.

| front door | endpoint kind | upstream path | request | answer | stream |
|---|---|---|---|---|---|
| OpenAI `/v1/*` | any | the same `/v1/*` path (Ollama serves it too) | as today | as today; embeddings through `conform_embeddings` | SSE relayed (`SseTap`) |
| Ollama `/api/chat`, `/api/generate`, `/api/embed`, `/api/embeddings` | `ollama` | the same `/api/*` path | `ollama_set_model` | relayed | NDJSON relayed (`OllamaStreamTap`) |
| Ollama `/api/chat` | `openai-compatible`, `openai` | `/v1/chat/completions` | `ollama_chat_to_openai` (a final assistant message continued: `Door._continued`) | `openai_chat_to_ollama` | `OpenAIStreamToOllama(model, "chat")` |
| Ollama `/api/generate` | `openai-compatible`, `openai` | `/v1/chat/completions` (`/v1/completions` when raw or with a suffix) | `ollama_generate_request` (path and body) | `openai_completion_to_ollama_generate` | `OpenAIStreamToOllama(model, "generate")` |
| Ollama `/api/embed` | `openai-compatible`, `openai` | `/v1/embeddings` | `ollama_embed_to_openai` | `openai_embeddings_to_ollama_embed` | — |
| Ollama `/api/embeddings` | `openai-compatible`, `openai` | `/v1/embeddings` | `ollama_embeddings_to_openai` | `openai_embeddings_to_ollama_embeddings` | — |

`ollama_plan(api, endpoint_kind)` returns that row as functions. Usage on the Ollama door: `plan.usage`
of the upstream's whole answer (`ollama_usage` natively, `openai_usage` translated), or the stream
object's `usage` (then `content_events` as the output estimate when it stays None).
Errors on the Ollama door are `{"error": "<message>"}` (`ollama_error`, `ollama_error_line`,
`openai_error_to_ollama` for an upstream's OpenAI-style error).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

from switchyard_gateway.services.gateway.translate.embeddings import conform_embeddings, embedding_options, embeddings_to_base64
from switchyard_gateway.services.gateway.translate.requests import (
    CHAT_PATH, COMPLETIONS_PATH, EMBEDDINGS_PATH, ollama_chat_to_openai, ollama_embed_to_openai,
    ollama_embeddings_to_openai, ollama_generate_path, ollama_generate_request, ollama_generate_to_openai, ollama_model, ollama_set_model,
)
from switchyard_gateway.services.gateway.translate.responses import (
    ollama_error, ollama_error_line, ollama_usage, openai_chat_to_ollama, openai_completion_to_ollama_generate,
    openai_embeddings_to_ollama_embed, openai_embeddings_to_ollama_embeddings, openai_error_body,
    openai_error_to_ollama, openai_usage,
)
from switchyard_gateway.services.gateway.translate.stream import OllamaStreamTap, OpenAIStreamToOllama
from switchyard_gateway.services.gateway.translate.wire import Times, TokenCounts, TranslationError

__all__ = [
    "CHAT_PATH", "COMPLETIONS_PATH", "EMBEDDINGS_PATH", "OLLAMA_APIS", "OllamaStreamTap", "OpenAIStreamToOllama",
    "Plan", "TranslationError", "conform_embeddings", "embedding_options", "embeddings_to_base64",
    "ollama_chat_to_openai", "ollama_embed_to_openai", "ollama_embeddings_to_openai", "ollama_error",
    "ollama_error_line", "ollama_generate_path",
    "ollama_generate_request", "ollama_generate_to_openai", "ollama_model", "ollama_plan", "ollama_set_model",
    "ollama_usage", "openai_chat_to_ollama", "openai_completion_to_ollama_generate",
    "openai_embeddings_to_ollama_embed", "openai_embeddings_to_ollama_embeddings", "openai_error_body",
    "openai_error_to_ollama",
    "openai_usage",
]

# Ollama front-door path -> the `api` the proxy records in usage events
OLLAMA_APIS = {
    "/api/chat": "ollama.chat",
    "/api/generate": "ollama.generate",
    "/api/embed": "ollama.embed",
    "/api/embeddings": "ollama.embeddings",
}


class Stream(Protocol):
    """What relays a streamed answer: `feed`, `ended` and `finish` give the bytes to send (see
    translate/stream.py). `ended` is told that the upstream's body ended cleanly: a last event or line whose
    terminator never came is taken as whole then (it may be the one that ends the stream); `finish`, once the
    stream is `done`, gives what closes it in the door's format."""

    usage: TokenCounts | None
    done: bool
    content_events: int             # the output tokens to record when no counts came: the tap's estimate
    estimate: TokenCounts | None    # set by the relay before `finish` when no counts came: what the client is shown
    error: str | None               # an error the upstream sent inside its stream (relayed in the door's shape)

    def feed(self, chunk: bytes) -> bytes: ...

    def ended(self) -> bytes: ...

    def finish(self) -> bytes: ...


class Plan(NamedTuple):
    """How one call through a translating door reaches one kind of endpoint.

    `request(body, upstream_model, ceiling)` -> (upstream path, upstream body), the output held to `ceiling`
    tokens when it is not None;
    `answer(data, model, times)` turns a 200 non-streamed answer into the door's (None: relay as is);
    `times` (`wire.Times`) say when the call arrived and when the answering attempt was sent;
    `error(data, status)` turns a non-200 answer into the door's error body (None: relay as is);
    `stream(model, times)` builds the object that relays a streamed answer (None: this API never streams);
    `usage(data)` reads the `TokenCounts` of the upstream's whole 200 answer, before translation.
    """

    native: bool
    request: Callable[..., tuple[str, bytes]]
    answer: Callable[[bytes, str, Times], bytes] | None
    error: Callable[[bytes, int], bytes] | None
    stream: Callable[[str, Times], Stream] | None
    usage: Callable[[bytes], TokenCounts | None]


def _native(path: str) -> Callable[..., tuple[str, bytes]]:
    return lambda body, upstream_model, ceiling=None: (path, ollama_set_model(body, upstream_model, ceiling))


def _translated(path: str, translate: Callable[..., bytes]) -> Callable[..., tuple[str, bytes]]:
    return lambda body, upstream_model, ceiling=None: (path, translate(body, upstream_model, ceiling))


def _native_stream(_model: str, _times: Times) -> Stream:
    return OllamaStreamTap()


_PLANS: dict[tuple[str, bool], Plan] = {
    ("ollama.chat", True): Plan(True, _native("/api/chat"), None, None, _native_stream, ollama_usage),
    ("ollama.generate", True): Plan(True, _native("/api/generate"), None, None, _native_stream, ollama_usage),
    ("ollama.embed", True): Plan(True, _native("/api/embed"), None, None, None, ollama_usage),
    ("ollama.embeddings", True): Plan(True, _native("/api/embeddings"), None, None, None, ollama_usage),
    ("ollama.chat", False): Plan(
        False, _translated(CHAT_PATH, ollama_chat_to_openai), openai_chat_to_ollama, openai_error_to_ollama,
        lambda model, times: OpenAIStreamToOllama(model, "chat", times), openai_usage),
    ("ollama.generate", False): Plan(
        False, ollama_generate_request, openai_completion_to_ollama_generate, openai_error_to_ollama,
        lambda model, times: OpenAIStreamToOllama(model, "generate", times), openai_usage),
    ("ollama.embed", False): Plan(
        False, _translated(EMBEDDINGS_PATH, ollama_embed_to_openai), openai_embeddings_to_ollama_embed,
        openai_error_to_ollama, None, openai_usage),
    ("ollama.embeddings", False): Plan(
        False, _translated(EMBEDDINGS_PATH, ollama_embeddings_to_openai),
        openai_embeddings_to_ollama_embeddings, openai_error_to_ollama, None, openai_usage),
}


def ollama_plan(api: str, endpoint_kind: str) -> Plan:
    """The plan for an Ollama-format call (`api` from OLLAMA_APIS) to an endpoint of a provider kind
    (`ollama` natively; `openai-compatible`, `openai` and anything else through the OpenAI API)."""
    return _PLANS[(api, endpoint_kind == "ollama")]
