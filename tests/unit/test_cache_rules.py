"""The response cache's rules: which calls it may keep, what Cache-Control allows, how keys are scoped."""

from __future__ import annotations

import pytest

from switchyard_gateway.resp import Valkey
from switchyard_gateway.services.gateway.pipeline.cache import ResponseCache, directives


def cache(mode: str) -> ResponseCache:
    return ResponseCache(Valkey("redis://127.0.0.1:1/0"), "sy:c:t:", mode, 60, 1024, 0.25)


@pytest.mark.parametrize(("mode", "api", "stream", "applies"), [
    ("off", "openai.embeddings", False, False),
    ("embeddings", "openai.embeddings", False, True),
    ("embeddings", "ollama.embed", False, True),
    ("embeddings", "ollama.embeddings", False, True),
    ("embeddings", "openai.chat", False, False),
    ("all", "openai.chat", False, True),
    ("all", "ollama.generate", False, True),
    ("all", "openai.chat", True, False),
])
def test_which_calls_may_be_kept(mode: str, api: str, stream: bool, applies: bool) -> None:
    assert cache(mode).applies(api, stream) is applies


@pytest.mark.parametrize(("header", "expected"), [
    (None, (True, True)),
    ("no-cache", (False, True)),
    ("No-Cache, max-age=0", (False, True)),
    ("no-store", (False, False)),
    ("no-cache, no-store", (False, False)),
    ("max-age=60", (True, True)),
])
def test_cache_control_directives(header: str | None, expected: tuple[bool, bool]) -> None:
    assert directives({} if header is None else {"cache-control": header}) == expected


def test_keys_differ_by_tenant_path_model_and_body() -> None:
    c = cache("all")
    base = c.key("/v1/embeddings", "t1", "m", b'{"input":"x"}')
    assert base.startswith("sy:c:t:t1:")
    assert base == c.key("/v1/embeddings", "t1", "m", b'{"input":"x"}')
    others = {c.key("/v1/embeddings", "t2", "m", b'{"input":"x"}'), c.key("/api/embed", "t1", "m", b'{"input":"x"}'),
              c.key("/v1/embeddings", "t1", "m2", b'{"input":"x"}'), c.key("/v1/embeddings", "t1", "m", b'{"input":"y"}')}
    assert base not in others and len(others) == 4


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="SWITCHYARD_CACHE must be one of off, embeddings, all"):
        cache("sometimes")


async def test_a_valkey_that_is_down_is_a_miss() -> None:
    c = cache("all")
    assert await c.lookup(c.key("/v1/embeddings", "t", "m", b"{}"), "openai.embeddings", "m") is None
    await c.close()
