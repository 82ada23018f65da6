"""End to end: what the Ollama door answers itself, and what it refuses before anything is reserved, as Ollama does.

The upstream is test_ollama_front_door's: one simulator behind an Ollama endpoint (the `*-native` models) and an
OpenAI-compatible one (the `*-translated` models), registered here under the prefix `fdc`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import DemoStack
from tests.e2e.test_demo import exactly_one_usage_row, usage_rows
from tests.e2e.test_ollama_front_door import Upstream, registered_upstream

EMBEDDING_PATHS = ("/api/embed", "/api/embeddings", "/v1/embeddings")


@pytest.fixture(scope="module")
async def upstream(demo: DemoStack) -> AsyncIterator[Upstream]:
    async with registered_upstream(demo, "fdc") as registered:
        yield registered


async def post(demo: DemoStack, upstream: Upstream, path: str, body: dict[str, Any],
               request_id: str | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=demo.url, timeout=30) as http:
        return await http.post(path, json=body, headers={"Authorization": f"Bearer {upstream.key}",
                                                         "X-Request-Id": request_id or uuid.uuid4().hex})


async def nothing_recorded(demo: DemoStack, upstream: Upstream, request_ids: list[str]) -> None:
    """None of these calls has a usage event, once a call made after them has its one."""
    sentinel = uuid.uuid4().hex
    served = await post(demo, upstream, "/api/embed", {"model": upstream.model("embed-native"), "input": "x"},
                        sentinel)
    assert served.status_code == 200, served.text
    await exactly_one_usage_row(demo, sentinel)
    for request_id in request_ids:
        assert await usage_rows(demo, request_id) == [], f"{request_id} recorded nothing"


@pytest.mark.parametrize("served", ["embed-native", "embed-translated"])
async def test_an_embed_with_no_input_loads_the_model_as_ollama_answers_it(
        demo: DemoStack, upstream: Upstream, served: str) -> None:
    """Ollama answers an empty or missing `input` (`prompt` on /api/embeddings) with no vectors, embedding nothing.
    The door billed it a token, or sent it to an OpenAI-compatible server, which refused it after quota was held."""
    model = upstream.model(served)
    before = {path: upstream.calls(path) for path in EMBEDDING_PATHS}
    request_ids = []
    for path, body, answer in (
            ("/api/embed", {"input": []}, {"model": model, "embeddings": []}),
            ("/api/embed", {"input": ""}, {"model": model, "embeddings": []}),
            ("/api/embed", {}, {"model": model, "embeddings": []}),
            ("/api/embed", {"input": None, "keep_alive": "10m"}, {"model": model, "embeddings": []}),
            ("/api/embeddings", {"prompt": ""}, {"embedding": []}),
            ("/api/embeddings", {}, {"embedding": []})):
        request_ids.append(uuid.uuid4().hex)
        reply = await post(demo, upstream, path, {"model": model, **body}, request_ids[-1])
        assert (reply.status_code, reply.json()) == (200, answer), (path, body, reply.text)
        assert reply.headers["x-request-id"] == request_ids[-1]
    assert {path: upstream.calls(path) for path in EMBEDDING_PATHS} == before, "no upstream was asked"
    await nothing_recorded(demo, upstream, request_ids)
    unknown = await post(demo, upstream, "/api/embed", {"model": "no-such-model", "input": []})
    assert unknown.status_code == 404, "still only the tenant's models"
