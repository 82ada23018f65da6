"""Where and how to call an upstream endpoint: URLs, credentials, headers.

The calls themselves go through `http1.Pool`, our pooled HTTP/1.1 client: it costs
about a fifth of aiohttp's CPU per proxied call (docs/performance.md).
"""

from __future__ import annotations


import msgspec

from switchyard_gateway.catalog.rules import read_credential
from switchyard_gateway.contracts.events import EndpointRegistered
from switchyard_gateway.services.gateway.pipeline.call import InferenceRequest
from switchyard_gateway.services.gateway.translate.wire import request_decoder


def credential(endpoint: EndpointRegistered) -> str | None:
    """The secret an endpoint's `${VAR}` reference points to, read from this process's environment; never one of
    Switchyard's own settings (the registry refuses such a reference; one recorded before it did is not read)."""
    return read_credential(endpoint.api_key_ref)


_BASE_HEADERS = (("Content-Type", "application/json"), ("Accept-Encoding", "identity"))


def request_headers(endpoint: EndpointRegistered) -> tuple[tuple[str, str], ...]:
    """Headers for a call to an endpoint (Host and Content-Length are added by the pool)."""
    secret = credential(endpoint)
    return (*_BASE_HEADERS, ("Authorization", f"Bearer {secret}")) if secret else _BASE_HEADERS


def url(endpoint: EndpointRegistered, path: str) -> str:
    """An API path on an endpoint. Base URLs name the server root; a trailing /v1 is tolerated."""
    return endpoint.base_url.rstrip("/").removesuffix("/v1") + path


_decode_any = request_decoder()
_encode = msgspec.json.Encoder().encode


def upstream_body(body: bytes, request: InferenceRequest, upstream_model: str, ceiling: int | None = None,
                  endpoint_kind: str = "openai-compatible") -> bytes:
    """The body to send upstream: untouched unless the model name differs, a stream needs usage, or the call's
    output must be held to a ceiling (written into the fields the client used, else `max_tokens`, or
    `max_completion_tokens` for a chat call to OpenAI itself)."""
    needs_usage = request.stream and not (request.stream_options and request.stream_options.include_usage)
    if upstream_model == request.model and not needs_usage and ceiling is None:
        return body
    data = _decode_any(body)
    data["model"] = upstream_model
    if needs_usage:
        options = data.get("stream_options") or {}
        options["include_usage"] = True
        data["stream_options"] = options
    if ceiling is not None:
        named = [f for f in ("max_completion_tokens", "max_tokens") if data.get(f) is not None]
        if not named:
            chat = "messages" in data
            named = ["max_completion_tokens" if chat and endpoint_kind == "openai" else "max_tokens"]
        for name in named:
            data[name] = ceiling
    return _encode(data)
