"""Unbilled probes of an endpoint: what it advertises and holds loaded, how fast it answers, or why not.

Ollama: `GET /api/tags`, `/api/ps` and `/api/version`; OpenAI-style servers: `GET /v1/models`.
No call generates tokens. Error texts never carry the endpoint's credential. The calls go over
`switchyard_gateway.http1` (keep-alive, TLS with the system's CAs for hosted APIs), each read whole
within the probe's timeout. With a `FactsBook`, what the server says of its models comes along
(services/router/facts.py).

Whatever text a server sends is bounded before it is recorded (a probe result is one NATS message, and a
console shows it): its version, an error's text, the details of its models, and how many model names and
how long. Bidirectional controls are taken out of that text, since they reverse whatever follows them where
it is shown; model names keep theirs, for the registry to refuse the name (catalog.rules.model_name_problem).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable
from typing import Any
from urllib.parse import urlsplit

import msgspec
import structlog

from switchyard_gateway import http1
from switchyard_gateway.catalog.rules import MODEL_NAME_MAX, normalise_model, read_credential
from switchyard_gateway.contracts.routing import ModelFacts, ProbeCompleted
from switchyard_gateway.services.router.facts import FactsBook

log = structlog.get_logger()
ERROR_BODY_CHARS = 200                      # of a refusal's body, quoted in the error
ERROR_CHARS = 500                           # a whole error text, whatever it quotes
VERSION_CHARS = 100                         # Ollama says "0.5.7"
DETAIL_CHARS = 100                          # a model's architecture or digest
MAX_MODELS = 1000                           # model names taken from one listing (sorted, the rest left out)...
MODEL_NAMES_CHARS = 64 * 1024               # ...and characters of names in all: a probe stays a small message
MAX_PROBE_BODY_BYTES = 8 * 1024 * 1024      # a model list is a few KB; anything past this is not one
BIDI_CONTROLS = dict.fromkeys([*range(0x202A, 0x202F), *range(0x2066, 0x206A)])   # LRE..RLO, LRI..PDI
USER_AGENT = "switchyard-router"


class ProbeFailed(Exception):
    """One probe call failed; the message is for a person, `status` the HTTP status if one came."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def client(concurrency: int, ssl_context: ssl.SSLContext | None = None) -> http1.Pool:
    """The probes' HTTP client: keep-alive connections, at most `concurrency` to one host."""
    return http1.Pool(max_connections_per_host=concurrency, ssl_context=ssl_context)


credential = read_credential      # the secret a `${VAR}` reference names, read as the gateway reads it


def base(url: str) -> str:
    """The server root of a base URL; a trailing /v1 is tolerated (as the gateway does)."""
    return url.rstrip("/").removesuffix("/v1")


async def probe(pool: http1.Pool, endpoint_id: str, kind: str, base_url: str, api_key_ref: str = "",
                timeout_s: float = 5.0, prober: str = "", facts: FactsBook | None = None) -> ProbeCompleted:
    """Probe one endpoint once; never raises for the endpoint's faults."""
    secret = credential(api_key_ref)
    headers = [("User-Agent", USER_AGENT), ("Accept", "application/json")]
    if secret:
        headers.append(("Authorization", f"Bearer {secret}"))
    root = base(base_url)
    started = time.perf_counter()
    found: tuple[ModelFacts, ...] = ()
    try:
        if kind == "ollama":
            tags, loaded, version = await _ollama(pool, root, headers, timeout_s)
            digests = _names(tags, f"{root}/api/tags", "models", "name", "digest")
            models = tuple(sorted(digests))
            latency = _ms(started)
            if facts is not None:
                found = await _facts(facts.ollama(pool, endpoint_id, root, headers, timeout_s, digests), endpoint_id)
        else:
            listing = await _get(pool, f"{root}/v1/models", headers, timeout_s)
            models = tuple(sorted(_names(listing, f"{root}/v1/models", "data", "id")))
            loaded, version = models, ""
            latency = _ms(started)
            if facts is not None:
                found = await _facts(facts.openai(pool, endpoint_id, root, headers, timeout_s, listing, models),
                                     endpoint_id)
    except ProbeFailed as exc:         # redacted before it is cut: no piece of the credential survives
        return ProbeCompleted(endpoint_id=endpoint_id, ok=False, latency_ms=_ms(started),
                              error=upstream_text(redact(str(exc), secret), ERROR_CHARS), status=exc.status,
                              prober=prober)
    named = set(models)
    found = tuple(msgspec.structs.replace(f, architecture=upstream_text(f.architecture, DETAIL_CHARS))
                  for f in found if f.model in named)
    return ProbeCompleted(endpoint_id=endpoint_id, ok=True, latency_ms=latency, models=models,
                          loaded=tuple(n for n in loaded if n in named), version=version, prober=prober, facts=found)


async def _facts(reading: Awaitable[tuple[ModelFacts, ...]], endpoint_id: str) -> tuple[ModelFacts, ...]:
    """What a server says of its models; whatever goes wrong reading it, the probe's verdict stands."""
    try:
        return await reading
    except Exception as exc:  # noqa: BLE001 — facts are extra: a server's odd answer must not fail its probe
        log.warning("router.model_facts_unread", endpoint=endpoint_id, error=str(exc) or type(exc).__name__)
        return ()


def redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def upstream_text(value: object, limit: int) -> str:
    """Text a server sent, as a probe records it: without bidirectional controls, at most `limit` characters."""
    text = str(value)[:limit * 2].translate(BIDI_CONTROLS)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


Headers = list[tuple[str, str]]


async def _ollama(pool: http1.Pool, root: str, headers: Headers,
                  timeout_s: float) -> tuple[Any, tuple[str, ...], str]:
    """The /api/tags answer, the names /api/ps reports loaded, and the /api/version."""
    tags, ps, version = await asyncio.gather(
        _get(pool, f"{root}/api/tags", headers, timeout_s),
        _models(pool, f"{root}/api/ps", headers, timeout_s, "models", "name"),
        _get(pool, f"{root}/api/version", headers, timeout_s),
        return_exceptions=True,
    )
    if isinstance(tags, BaseException):
        raise tags
    loaded = () if isinstance(ps, BaseException) else ps      # an Ollama without /api/ps still serves
    release = version.get("version", "") if isinstance(version, dict) else ""
    return tags, loaded, upstream_text(release, VERSION_CHARS)


async def _models(pool: http1.Pool, url: str, headers: Headers, timeout_s: float,
                  list_key: str, name_key: str) -> tuple[str, ...]:
    return tuple(sorted(_names(await _get(pool, url, headers, timeout_s), url, list_key, name_key)))


def _names(body: Any, url: str, list_key: str, name_key: str, value_key: str = "") -> dict[str, str]:
    """The model names a listing holds (normalised), each with its `value_key` field ("" without one): the first
    MAX_MODELS in sorted order within MODEL_NAMES_CHARS, a name longer than a model name may be cut to one
    character past the bound (so that the registry still refuses it as too long)."""
    items = body.get(list_key) if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise ProbeFailed(f"unexpected answer from {_path(url)}: no '{list_key}' list")
    listed = {normalise_model(str(item.get(name_key) or item.get("model") or ""))[:MODEL_NAME_MAX + 1]:
              item.get(value_key) or "" for item in items if isinstance(item, dict)}
    listed.pop("", None)
    names: dict[str, str] = {}
    budget = MODEL_NAMES_CHARS
    for name in sorted(listed):
        budget -= len(name)
        if len(names) == MAX_MODELS or budget < 0:
            log.warning("router.models_left_out", url=_path(url), listed=len(listed), kept=len(names))
            break
        names[name] = upstream_text(listed[name], DETAIL_CHARS)
    return names


async def _get(pool: http1.Pool, url: str, headers: Headers, timeout_s: float) -> Any:
    try:
        response = await pool.fetch("GET", url, headers, timeout_s=timeout_s, max_body_bytes=MAX_PROBE_BODY_BYTES)
    except http1.DeadlineExceeded:
        raise ProbeFailed(f"no answer from {_path(url)} within {timeout_s:g} s") from None
    except http1.ConnectFailed as exc:
        raise ProbeFailed(f"cannot connect to {_host(url)}: {_reason(exc)}") from None
    except (http1.TransportError, ValueError) as exc:
        raise ProbeFailed(f"{_path(url)} failed: {exc}") from None
    if response.status >= 400:
        snippet = response.text()[:ERROR_BODY_CHARS].strip()
        raise ProbeFailed(f"HTTP {response.status} from {_path(url)}: {snippet}", response.status)
    try:
        return response.json()
    except ValueError:
        raise ProbeFailed(f"unexpected answer from {_path(url)}: not JSON", response.status) from None


def _reason(exc: http1.ConnectFailed) -> str:
    """Why the connection failed, without the client's own "cannot connect to host:port" prefix."""
    text = str(exc)
    return text.split(": ", 1)[-1] if text.startswith("cannot connect to ") else text


def _path(url: str) -> str:
    return urlsplit(url).path


def _host(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
