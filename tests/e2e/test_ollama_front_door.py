"""End to end: the official `ollama` client against the gateway's Ollama front door, served natively or translated.

Each module registers its own upstream: one simulator behind two endpoints, an Ollama one
(`<prefix>-ollama`, serving the `*-native` models) and an OpenAI-compatible one
(`<prefix>-vllm`, serving the `*-translated` models), so the simulator's per-path counters
show which API each call really used. Two tenants: `<prefix>-all` may use the four models,
`<prefix>-one` only the native chat model.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import httpx
import ollama
import openai
import pytest

from switchyard_gateway.simulator.config import SimConfig
from switchyard_gateway.simulator.server import Simulator
from tests.conftest import DemoStack, wait_for

TOKENS = 16                              # the simulator's completion tokens per reply


@dataclass
class Upstream:
    sim: Simulator
    prefix: str
    key: str                             # tenant <prefix>-all
    narrow_key: str                      # tenant <prefix>-one

    def model(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def calls(self, path: str) -> int:
        return self.sim.stats.requests.get(path, 0)


async def _admin(client: httpx.AsyncClient, method: str, path: str, body: dict | None = None) -> dict:
    response = await client.request(method, f"/api/admin/{path}", json=body)
    assert response.status_code in (200, 201), (path, response.status_code, response.text)
    return response.json()


@asynccontextmanager
async def registered_upstream(demo: DemoStack, prefix: str) -> AsyncIterator[Upstream]:
    """A simulator registered behind an Ollama and an OpenAI-compatible endpoint, two tenants and their keys;
    all removed again afterwards."""
    models = {"native": "chat", "translated": "chat", "embed-native": "embedding", "embed-translated": "embedding"}
    names = {suffix: f"{prefix}-{suffix}" for suffix in models}
    async with Simulator(SimConfig(models=tuple(names.values()))) as sim, \
            httpx.AsyncClient(base_url=demo.url, headers={"X-API-Key": demo.admin_key}, timeout=30) as admin:
        providers = {"ollama": f"{prefix}-ollama-kind", "vllm": f"{prefix}-openai-kind"}
        await _admin(admin, "POST", "providers", {"provider_id": providers["ollama"], "kind": "ollama"})
        await _admin(admin, "POST", "providers", {"provider_id": providers["vllm"], "kind": "openai-compatible"})
        for suffix, kind in models.items():
            await _admin(admin, "POST", "models", {"model_id": names[suffix], "kind": kind, "context_length": 4096})
        await _admin(admin, "POST", "endpoints", {
            "endpoint_id": f"{prefix}-ollama", "provider_id": providers["ollama"], "base_url": sim.url,
            "models": [names["native"], names["embed-native"]]})
        await _admin(admin, "POST", "endpoints", {
            "endpoint_id": f"{prefix}-vllm", "provider_id": providers["vllm"], "base_url": sim.url,
            "models": [names["translated"], names["embed-translated"]]})
        keys = {}
        for tenant, assigned in ((f"{prefix}-all", list(names.values())), (f"{prefix}-one", [names["native"]])):
            await _admin(admin, "POST", "tenants", {"tenant_id": tenant, "all_models": False})
            for model in assigned:
                await _admin(admin, "POST", f"tenants/{tenant}/models", {"model_id": model})
            keys[tenant] = (await _admin(admin, "POST", f"tenants/{tenant}/keys", {"name": "front door tests"}))["key"]
        try:
            yield Upstream(sim, prefix, keys[f"{prefix}-all"], keys[f"{prefix}-one"])
        finally:
            for path in (f"tenants/{prefix}-all", f"tenants/{prefix}-one", f"endpoints/{prefix}-ollama",
                         f"endpoints/{prefix}-vllm", *(f"models/{n}" for n in names.values()),
                         *(f"providers/{p}" for p in providers.values())):
                await admin.delete(f"/api/admin/{path}")


@pytest.fixture(scope="module")
async def upstream(demo: DemoStack) -> AsyncIterator[Upstream]:
    async with registered_upstream(demo, "fdo") as registered:
        yield registered


def client(demo: DemoStack, key: str) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=demo.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


async def usage_event(demo: DemoStack, request_id: str) -> dict:
    """The one usage event of a call (waiting for it, then making sure no second one follows)."""
    async def rows() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(demo.database_url)
        try:
            return await conn.fetch("SELECT payload::text AS payload FROM events WHERE type = 'usage.recorded.v2'"
                                    " AND payload->>'request_id' = $1", request_id)
        finally:
            await conn.close()

    found = await wait_for(rows, timeout_s=15, what=f"usage event of {request_id}")
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:          # ten looks a second: each is a new connection
        found = await rows()
        assert len(found) == 1, found
        await asyncio.sleep(0.1)
    return json.loads(found[0]["payload"])


# --- the Litestar routes ---------------------------------------------------------------------------

async def test_tags_lists_the_models_of_the_callers_tenant_with_latest_tags(demo: DemoStack,
                                                                              upstream: Upstream) -> None:
    listed = await client(demo, upstream.key).list()
    assert sorted(m.model for m in listed.models) == sorted(
        f"{upstream.model(n)}:latest" for n in ("native", "translated", "embed-native", "embed-translated"))
    assert all(m.digest and m.details is not None and m.modified_at is not None for m in listed.models)
    narrow = await client(demo, upstream.narrow_key).list()
    assert [m.model for m in narrow.models] == [f"{upstream.model('native')}:latest"]


async def test_show_describes_an_assigned_model_and_404s_otherwise(demo: DemoStack, upstream: Upstream) -> None:
    shown = await client(demo, upstream.key).show(f"{upstream.model('embed-translated')}:latest")
    assert shown.capabilities == ["embedding"] and shown.details is not None
    assert shown.modelinfo is not None and shown.modelinfo.get("general.architecture")
    with pytest.raises(ollama.ResponseError) as refused:
        await client(demo, upstream.narrow_key).show(upstream.model("translated"))
    assert refused.value.status_code == 404
    assert refused.value.error == f"model '{upstream.model('translated')}' not found"


async def test_ps_shows_a_model_once_its_ollama_endpoint_reports_it_loaded(demo: DemoStack,
                                                                             upstream: Upstream) -> None:
    native = f"{upstream.model('native')}:latest"

    async def listed() -> list:
        return [m for m in (await client(demo, upstream.narrow_key).ps()).models if m.model == native]

    found = await wait_for(listed, timeout_s=20, what=f"{native} in /api/ps (the router probes new endpoints at once)")
    assert found[0].expires_at is not None and found[0].details is not None


async def test_ps_lists_only_models_the_tenant_may_use(demo: DemoStack, upstream: Upstream) -> None:
    running = await client(demo, upstream.narrow_key).ps()
    assert {m.model for m in running.models} <= {f"{upstream.model('native')}:latest"}
    for key in (upstream.key, demo.demo_key):
        loaded = {m.model for m in (await client(demo, key).ps()).models}
        assert loaded <= {m.model for m in (await client(demo, key).list()).models}


async def test_version_is_a_current_ollamas_and_needs_no_key(demo: DemoStack, upstream: Upstream) -> None:
    """`0.6.0`, behind a key: VS Code's Copilot Chat, which sends none and needs at least 0.6.4, refused the door."""
    async with httpx.AsyncClient(base_url=demo.url, timeout=10) as http:
        keyed = await http.get("/api/version", headers={"Authorization": f"Bearer {upstream.key}"})
        keyless = await http.get("/api/version")
        head = await http.head("/api/version")
    assert keyed.status_code == keyless.status_code == head.status_code == 200, (keyless.text, head.status_code)
    assert keyless.json() == keyed.json() and list(keyless.json()) == ["version"] and head.content == b""
    version = tuple(int(part) for part in keyless.json()["version"].split("."))
    assert version >= (0, 6, 4), version


# --- OpenAI-format calls served by an Ollama endpoint (its /v1 API) -----------------------------------

async def test_openai_chat_is_served_by_an_ollama_endpoint_through_its_v1_api(demo: DemoStack,
                                                                             upstream: Upstream) -> None:
    before = upstream.calls("/v1/chat/completions")
    api = openai.AsyncOpenAI(base_url=f"{demo.url}/v1", api_key=upstream.key, max_retries=0)
    reply = await api.chat.completions.create(model=upstream.model("native"),
                                              messages=[{"role": "user", "content": "hello"}])
    assert reply.choices[0].message.content and reply.usage is not None and reply.usage.completion_tokens == TOKENS
    assert upstream.calls("/v1/chat/completions") == before + 1


# --- the hot path: Ollama-format inference --------------------------------------------------------

@pytest.mark.parametrize(("served", "path"), [("native", "/api/chat"), ("translated", "/v1/chat/completions")])
async def test_ollama_chat_is_answered_with_counts_and_metered(demo: DemoStack, upstream: Upstream,
                                                               served: str, path: str) -> None:
    before, request_id = upstream.calls(path), uuid.uuid4().hex
    api = ollama.AsyncClient(host=demo.url, timeout=30,
                             headers={"Authorization": f"Bearer {upstream.key}", "X-Request-Id": request_id})
    reply = await api.chat(model=upstream.model(served), stream=False, options={"num_predict": 5},
                           messages=[{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "Grüße aus der Weichenhalle"}])
    assert reply.done and reply.message.role == "assistant" and reply.message.content
    assert reply.eval_count == 5 and reply.prompt_eval_count and reply.done_reason == "length"
    assert upstream.calls(path) == before + 1
    event = await usage_event(demo, request_id)
    assert event["api"] == "ollama.chat" and event["outcome"] == "ok" and event["stream"] is False
    assert (event["input_tokens"], event["output_tokens"]) == (reply.prompt_eval_count, reply.eval_count)
    assert event["endpoint_id"] == f"{upstream.prefix}-{'ollama' if served == 'native' else 'vllm'}"


@pytest.mark.parametrize(("served", "path"), [("native", "/api/chat"), ("translated", "/v1/chat/completions")])
async def test_ollama_chat_streams_by_default_and_ends_with_counts(demo: DemoStack, upstream: Upstream,
                                                                   served: str, path: str) -> None:
    before, request_id = upstream.calls(path), uuid.uuid4().hex
    api = ollama.AsyncClient(host=demo.url, timeout=30,
                             headers={"Authorization": f"Bearer {upstream.key}", "X-Request-Id": request_id})
    parts = [part async for part in await api.chat(model=upstream.model(served), stream=True,
                                                   messages=[{"role": "user", "content": "stream please"}])]
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert sum(1 for p in parts if p.message.content) == TOKENS
    last = parts[-1]
    assert last.eval_count == TOKENS and last.prompt_eval_count and last.done_reason == "stop"
    assert upstream.calls(path) == before + 1
    event = await usage_event(demo, request_id)
    assert event["stream"] is True and event["estimated"] is False
    assert (event["input_tokens"], event["output_tokens"]) == (last.prompt_eval_count, TOKENS)


@pytest.mark.parametrize(("served", "path"), [("native", "/api/generate"), ("translated", "/v1/chat/completions")])
async def test_ollama_generate_is_answered_whole_and_streamed(demo: DemoStack, upstream: Upstream,
                                                              served: str, path: str) -> None:
    api = client(demo, upstream.key)
    before = upstream.calls(path)
    whole = await api.generate(model=upstream.model(served), prompt="Why is the sky blue?", system="Be brief.")
    assert whole.done and whole.response and whole.eval_count == TOKENS
    streamed = [part async for part in await api.generate(model=upstream.model(served), prompt="Why?", stream=True)]
    assert streamed[-1].done and streamed[-1].eval_count == TOKENS
    assert "".join(p.response or "" for p in streamed[:-1])
    assert upstream.calls(path) == before + 2


async def test_raw_generate_on_an_openai_endpoint_uses_text_completions(demo: DemoStack, upstream: Upstream) -> None:
    before = upstream.calls("/v1/completions")
    reply = await client(demo, upstream.key).generate(model=upstream.model("translated"), prompt="[INST] hi [/INST]",
                                                      raw=True, stream=False)
    assert reply.response and reply.eval_count == TOKENS
    assert upstream.calls("/v1/completions") == before + 1


@pytest.mark.parametrize(("served", "path"), [("embed-native", "/api/embed"), ("embed-translated", "/v1/embeddings")])
async def test_ollama_embed_returns_one_vector_per_input(demo: DemoStack, upstream: Upstream,
                                                         served: str, path: str) -> None:
    before, request_id = upstream.calls(path), uuid.uuid4().hex
    api = ollama.AsyncClient(host=demo.url, timeout=30,
                             headers={"Authorization": f"Bearer {upstream.key}", "X-Request-Id": request_id})
    reply = await api.embed(model=upstream.model(served), input=["Why is the sky blue?", "Why is the grass green?"],
                            dimensions=64)
    assert len(reply.embeddings) == 2 and all(len(v) == 64 for v in reply.embeddings)
    assert reply.prompt_eval_count and reply.prompt_eval_count > 0
    assert upstream.calls(path) == before + 1
    event = await usage_event(demo, request_id)
    assert event["api"] == "ollama.embed" and event["input_tokens"] == reply.prompt_eval_count


@pytest.mark.parametrize(("served", "path"), [("embed-native", "/api/embeddings"),
                                              ("embed-translated", "/v1/embeddings")])
async def test_legacy_ollama_embeddings_return_one_vector(demo: DemoStack, upstream: Upstream,
                                                          served: str, path: str) -> None:
    before = upstream.calls(path)
    reply = await client(demo, upstream.key).embeddings(model=upstream.model(served),
                                                        prompt="Here is an article about llamas...")
    assert len(reply.embedding) == 768
    assert upstream.calls(path) == before + 1


async def test_ollama_call_for_a_model_the_tenant_may_not_use_is_an_ollama_404(demo: DemoStack,
                                                                              upstream: Upstream) -> None:
    with pytest.raises(ollama.ResponseError) as refused:
        await client(demo, upstream.narrow_key).chat(model=upstream.model("translated"), stream=False,
                                                     messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 404
    assert isinstance(refused.value.error, str) and upstream.model("translated") in refused.value.error


@pytest.mark.parametrize("served", ["native", "translated"])
async def test_a_load_or_unload_request_generates_nothing_and_is_answered_as_ollama_does(
        demo: DemoStack, upstream: Upstream, served: str) -> None:
    """`ollama run` loads a model with an empty generate; `keep_alive: 0` unloads it. Translated to an
    OpenAI-compatible server, that was a generated answer, billed; no tenant of a shared server should unload its
    models either. The gateway answers both itself, as Ollama does, and nothing reaches an upstream."""
    before = {path: upstream.calls(path) for path in ("/api/generate", "/api/chat", "/v1/chat/completions")}
    ollama_client = client(demo, upstream.key)
    loaded = await ollama_client.generate(model=upstream.model(served), prompt="")
    assert (loaded.done, loaded.done_reason, loaded.response) == (True, "load", "")
    unloaded = await ollama_client.generate(model=upstream.model(served), prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload"
    chat = await ollama_client.chat(model=upstream.model(served), messages=[], keep_alive="0s")
    assert (chat.done_reason, chat.message.role, chat.message.content) == ("unload", "assistant", "")
    async with httpx.AsyncClient(base_url=demo.url, timeout=10) as http:
        answered = await http.post("/api/generate", json={"model": upstream.model(served), "prompt": ""},
                                   headers={"Authorization": f"Bearer {upstream.key}", "x-request-id": "load-1"})
    assert answered.status_code == 200 and answered.headers["x-request-id"] == "load-1"   # as every answer carries it
    assert {path: upstream.calls(path) for path in before} == before, "no upstream was asked"
    with pytest.raises(ollama.ResponseError) as unknown:
        await ollama_client.generate(model="no-such-model", prompt="")
    assert unknown.value.status_code == 404                    # still only the tenant's models
