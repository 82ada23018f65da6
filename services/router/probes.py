"""Unbilled probes of an endpoint: what it advertises and holds loaded, how fast it answers, or why not.

Ollama: `GET /api/tags`, `/api/ps` and `/api/version`; OpenAI-style servers: `GET /v1/models`.
With a `FactsBook`, what the server says of its models comes along (services/router/facts.py).
No call generates tokens. Error texts never carry the endpoint's credential.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable
from typing import Any

import httpx
import structlog

from switchyard_gateway.catalog.rules import normalise_model
from switchyard_gateway.contracts.routing import ModelFacts, ProbeCompleted
from switchyard_gateway.services.router.facts import FactsBook

log = structlog.get_logger()
ERROR_BODY_CHARS = 200
logging.getLogger("httpx").setLevel(logging.WARNING)     # not a line per probe call


class ProbeFailed(Exception):
    """One probe call failed; the message is for a person, `status` the HTTP status if one came."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def credential(api_key_ref: str) -> str | None:
    """The secret a `${VAR}` reference names, from this process's environment (like the gateway's)."""
    if not api_key_ref:
        return None
    return os.environ.get(api_key_ref[2:-1]) or None


def base(url: str) -> str:
    """The server root of a base URL; a trailing /v1 is tolerated (as the gateway does)."""
    return url.rstrip("/").removesuffix("/v1")


async def probe(client: httpx.AsyncClient, endpoint_id: str, kind: str, base_url: str, api_key_ref: str = "",
                timeout_s: float = 5.0, prober: str = "", facts: FactsBook | None = None) -> ProbeCompleted:
    """Probe one endpoint once; never raises for the endpoint's faults."""
    secret = credential(api_key_ref)
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    root = base(base_url)
    started = time.perf_counter()
    found: tuple[ModelFacts, ...] = ()
    try:
        if kind == "ollama":
            tags, loaded, version = await _ollama(client, root, headers, timeout_s)
            digests = _names(tags, f"{root}/api/tags", "models", "name", "digest")
            models = tuple(sorted(digests))
            latency = _ms(started)
            if facts is not None:
                found = await _facts(facts.ollama(client, endpoint_id, root, headers, timeout_s, digests), endpoint_id)
        else:
            listing = await _get(client, f"{root}/v1/models", headers, timeout_s)
            models = tuple(sorted(_names(listing, f"{root}/v1/models", "data", "id")))
            loaded, version = models, ""
            latency = _ms(started)
            if facts is not None:
                found = await _facts(facts.openai(client, endpoint_id, root, headers, timeout_s, listing, models),
                                     endpoint_id)
    except ProbeFailed as exc:
        return ProbeCompleted(endpoint_id=endpoint_id, ok=False, latency_ms=_ms(started),
                              error=redact(str(exc), secret), status=exc.status, prober=prober)
    return ProbeCompleted(endpoint_id=endpoint_id, ok=True, latency_ms=latency, models=models, loaded=loaded,
                          version=version, prober=prober, facts=found)


async def _facts(reading: Awaitable[tuple[ModelFacts, ...]], endpoint_id: str) -> tuple[ModelFacts, ...]:
    """What a server says of its models; whatever goes wrong reading it, the probe's verdict stands."""
    try:
        return await reading
    except Exception as exc:  # noqa: BLE001 — facts are extra: a server's odd answer must not fail its probe
        log.warning("router.model_facts_unread", endpoint=endpoint_id, error=str(exc) or type(exc).__name__)
        return ()


def redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


async def _ollama(client: httpx.AsyncClient, root: str, headers: dict[str, str],
                  timeout_s: float) -> tuple[Any, tuple[str, ...], str]:
    """The /api/tags answer, the names /api/ps reports loaded, and the /api/version."""
    tags, ps, version = await asyncio.gather(
        _get(client, f"{root}/api/tags", headers, timeout_s),
        _models(client, f"{root}/api/ps", headers, timeout_s, "models", "name"),
        _get(client, f"{root}/api/version", headers, timeout_s),
        return_exceptions=True,
    )
    if isinstance(tags, BaseException):
        raise tags
    loaded = () if isinstance(ps, BaseException) else ps      # an Ollama without /api/ps still serves
    release = version.get("version", "") if isinstance(version, dict) else ""
    return tags, loaded, str(release)


async def _models(client: httpx.AsyncClient, url: str, headers: dict[str, str], timeout_s: float,
                  list_key: str, name_key: str) -> tuple[str, ...]:
    return tuple(sorted(_names(await _get(client, url, headers, timeout_s), url, list_key, name_key)))


def _names(body: Any, url: str, list_key: str, name_key: str, value_key: str = "") -> dict[str, str]:
    """The model names a listing holds (normalised), each with its `value_key` field ("" without one)."""
    items = body.get(list_key) if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise ProbeFailed(f"unexpected answer from {_path(url)}: no '{list_key}' list")
    names = {normalise_model(str(item.get(name_key) or item.get("model") or "")): str(item.get(value_key) or "")
             for item in items if isinstance(item, dict)}
    names.pop("", None)
    return names


async def _get(client: httpx.AsyncClient, url: str, headers: dict[str, str], timeout_s: float) -> Any:
    try:
        response = await client.get(url, headers=headers, timeout=timeout_s)
    except httpx.TimeoutException:
        raise ProbeFailed(f"no answer from {_path(url)} within {timeout_s:g} s") from None
    except httpx.ConnectError as exc:
        raise ProbeFailed(f"cannot connect to {_host(url)}: {_reason(exc)}") from None
    except httpx.HTTPError as exc:
        raise ProbeFailed(f"{_path(url)} failed: {_reason(exc)}") from None
    if response.status_code >= 400:
        snippet = response.text[:ERROR_BODY_CHARS].strip()
        raise ProbeFailed(f"HTTP {response.status_code} from {_path(url)}: {snippet}", response.status_code)
    try:
        return response.json()
    except ValueError:
        raise ProbeFailed(f"unexpected answer from {_path(url)}: not JSON", response.status_code) from None


def _reason(exc: BaseException) -> str:
    """The most specific cause: 'connection refused' rather than 'All connection attempts failed'."""
    seen = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror.lower()
    text = str(exc) or type(exc).__name__
    return "connection refused" if "refused" in text.lower() else text


def _path(url: str) -> str:
    return httpx.URL(url).path


def _host(url: str) -> str:
    parsed = httpx.URL(url)
    return f"{parsed.host}:{parsed.port}" if parsed.port else parsed.host
