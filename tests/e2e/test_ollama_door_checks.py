"""End to end: what the Ollama door answers itself, and what it refuses before anything is reserved, as Ollama does.

The upstream is test_ollama_front_door's: one simulator behind an Ollama endpoint (the `*-native` models) and an
OpenAI-compatible one (the `*-translated` models), registered here under the prefix `fdc`; the checks of a call's
values run in the hostile lab (tests/e2e/test_hostile.py), whose tenants can have limits.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import DemoStack
from tests.e2e import test_hostile
from tests.e2e.test_demo import exactly_one_usage_row, usage_rows
from tests.e2e.test_hostile import Lab, counters
from tests.e2e.test_ollama_front_door import Upstream, registered_upstream

lab = test_hostile.lab        # two simulators behind OpenAI-compatible endpoints, and tenants with limits

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


# (path, fields, the field the 400 names): what Ollama refuses with a 400, and the door sent on after quota was held
REFUSED = [
    ("/api/chat", {"options": {"stop": 5}}, "options.stop"),
    ("/api/generate", {"options": {"stop": [1, 2]}}, "options.stop[0]"),
    ("/api/chat", {"tools": "x"}, "tools"),
    ("/api/chat", {"tools": [1]}, "tools[0]"),
    ("/api/chat", {"think": "bogus"}, "think"),
    ("/api/generate", {"think": 5}, "think"),
    ("/api/chat", {"messages": [{"role": "user", "content": "hi", "images": ["!!!not base64"]}]},
     "messages[0].images[0]"),
    ("/api/generate", {"images": ["data:image/png;base64,aGk="]}, "images[0]"),
    ("/api/generate", {"raw": True, "system": "be brief"}, "system"),
    ("/api/generate", {"raw": True, "template": "{{ .Prompt }}"}, "template"),
    ("/api/generate", {"raw": True, "context": [1, 2]}, "context"),
    ("/api/chat", {"top_logprobs": 50}, "top_logprobs"),
    ("/api/generate", {"top_logprobs": -1}, "top_logprobs"),
    ("/api/chat", {"keep_alive": "5x"}, "keep_alive"),
    ("/api/chat", {"keep_alive": "forever"}, "keep_alive"),
    ("/api/chat", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
]


async def test_values_ollama_refuses_are_a_400_naming_the_field_and_reserve_nothing(lab: Lab, urls) -> None:
    tenant, key = await lab.tenant_with(daily_tokens=20_000, rpm=1000)
    refused_ids = []
    async with httpx.AsyncClient(timeout=15) as client:
        for path, fields, param in REFUSED:
            refused_ids.append(uuid.uuid4().hex)
            reply = await client.post(f"{lab.demo.url}{path}", headers=lab.headers(key, refused_ids[-1]),
                                      json=lab.body(path, **fields))
            assert reply.status_code == 400, (path, fields, reply.text)
            error = reply.json()["error"]
            assert isinstance(error, str) and f"'{param}'" in error, (path, fields, error)
    assert await counters(urls, tenant) == {}, "nothing was reserved, not even a request"
    sentinel = uuid.uuid4().hex
    async with httpx.AsyncClient(timeout=15) as client:
        ok = await client.post(f"{lab.demo.url}/api/chat", headers=lab.headers(key, sentinel), json=lab.body("/api/chat"))
    assert ok.status_code == 200, ok.text
    await exactly_one_usage_row(lab.demo, sentinel)
    for request_id in refused_ids:
        assert await usage_rows(lab.demo, request_id) == [], "a refused call records nothing"


async def test_what_ollama_takes_the_door_takes(lab: Lab) -> None:
    """A role in capitals (Ollama lowercases it) and a `num_predict` of 5.0 (Ollama truncates any number) were 400s;
    they are answered, the output held to 5 tokens as asked."""
    async with httpx.AsyncClient(timeout=15) as client:
        for messages, num_predict in (([{"role": "USER", "content": "route me well"}], 5.0),
                                      ([{"role": "System", "content": "Be brief."},
                                        {"role": "user", "content": "route me well"}], 5.9)):
            reply = await client.post(f"{lab.demo.url}/api/chat", headers=lab.headers(), json=lab.body(
                "/api/chat", messages=messages, options={"num_predict": num_predict}, think="high"))
            assert reply.status_code == 200, (messages, reply.text)
            assert (reply.json()["eval_count"], reply.json()["done_reason"]) == (5, "length"), reply.json()


async def test_an_unknown_or_unconfigured_model_is_not_found_in_ollamas_words(
        demo: DemoStack, upstream: Upstream) -> None:
    """The door said "None of the configured endpoints advertise the model 'nope'"; the Ollama CLI looks for Ollama's
    "model 'nope' not found" (and then offers to pull it). The OpenAI door keeps its own words."""
    not_yours = upstream.model("translated")             # a model of the tenant's, not of the narrow key's tenant
    for path, fields in (("/api/chat", {"messages": [{"role": "user", "content": "hi"}]}),
                         ("/api/chat", {"messages": [{"role": "user", "content": "hi"}], "stream": True}),
                         ("/api/generate", {"prompt": "hi"}), ("/api/embed", {"input": "hi"}),
                         ("/api/embeddings", {"prompt": "hi"})):
        for model, key in (("nope", upstream.key), (not_yours, upstream.narrow_key)):
            async with httpx.AsyncClient(base_url=demo.url, timeout=30) as http:
                reply = await http.post(path, json={"model": model, **fields},
                                        headers={"Authorization": f"Bearer {key}"})
            assert reply.status_code == 404, (path, model, reply.text)
            assert reply.json()["error"].startswith(f"model '{model}' not found"), (path, model, reply.text)
    async with httpx.AsyncClient(base_url=demo.url, timeout=30) as http:
        openai_door = await http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {upstream.key}"},
                                      json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]})
    assert openai_door.json()["error"]["message"] == "None of the configured endpoints advertise the model 'nope'"
