"""The simulator's Ollama-style routes over real HTTP, with httpx and the official ollama client."""

import json
import math

import httpx
import ollama
import pytest

from switchyard_gateway.simulator import SimConfig, Simulator

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hello there yard"}]}
DONE_FIELDS = {
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
}


@pytest.fixture
async def sim():
    async with Simulator(SimConfig(tokens=5)) as sim:
        yield sim


@pytest.fixture
async def client(sim):
    async with httpx.AsyncClient(base_url=sim.url, timeout=5) as client:
        yield client


def ndjson(text: str) -> list[dict]:
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


async def test_chat_streams_ndjson_by_default_and_ends_with_counts(client):
    resp = await client.post("/api/chat", json=CHAT)
    assert resp.headers["content-type"] == "application/x-ndjson"
    lines = ndjson(resp.text)
    assert [line["done"] for line in lines] == [False] * 5 + [True]
    assert all(line["message"]["role"] == "assistant" for line in lines)
    final = lines[-1]
    assert final["done_reason"] == "stop"
    assert final["message"]["content"] == ""
    assert DONE_FIELDS <= final.keys()
    assert (final["prompt_eval_count"], final["eval_count"]) == (3, 5)
    whole = (await client.post("/api/chat", json={**CHAT, "stream": False})).json()
    assert whole["done"] is True
    assert whole["message"]["content"] == "".join(line["message"]["content"] for line in lines)
    assert DONE_FIELDS <= whole.keys()


async def test_generate_streams_responses_and_num_predict_caps_them(client):
    request = {
        "model": "llama3.2:latest",
        "prompt": "why is the sky blue",
        "options": {"num_predict": 2},
    }
    lines = ndjson((await client.post("/api/generate", json=request)).text)
    assert len(lines) == 3
    assert lines[-1]["eval_count"] == 2
    assert lines[-1]["done_reason"] == "length"
    whole = (await client.post("/api/generate", json={**request, "stream": False})).json()
    assert whole["response"] == lines[0]["response"] + lines[1]["response"]
    assert whole["prompt_eval_count"] == 5


async def test_embed_returns_one_unit_vector_per_input(client):
    body = (
        await client.post("/api/embed", json={"model": "nomic-embed-text", "input": ["a", "b c"]})
    ).json()
    assert body["model"] == "nomic-embed-text"
    assert len(body["embeddings"]) == 2
    assert all(len(v) == 768 for v in body["embeddings"])
    assert math.isclose(sum(x * x for x in body["embeddings"][0]), 1.0, rel_tol=1e-5)
    assert body["prompt_eval_count"] == 3
    single = (
        await client.post("/api/embed", json={"model": "nomic-embed-text", "input": "a"})
    ).json()
    assert single["embeddings"][0] == body["embeddings"][0]


async def test_legacy_embeddings_return_a_single_vector(client):
    body = (
        await client.post("/api/embeddings", json={"model": "nomic-embed-text", "prompt": "a"})
    ).json()
    assert len(body["embedding"]) == 768


async def test_tags_ps_and_version_describe_the_models(client, sim):
    sim.configure(models=["llama3.2", "qwen2.5:7b", "nomic-embed-text"], loaded=["qwen2.5:7b"])
    tags = (await client.get("/api/tags")).json()["models"]
    assert [m["name"] for m in tags] == ["llama3.2:latest", "qwen2.5:7b", "nomic-embed-text:latest"]
    assert {"model", "modified_at", "size", "digest", "details"} <= tags[0].keys()
    assert tags[0]["details"]["family"] == "llama"
    running = (await client.get("/api/ps")).json()["models"]
    assert [m["name"] for m in running] == ["qwen2.5:7b"]
    assert {"expires_at", "size_vram"} <= running[0].keys()
    assert (await client.get("/api/version")).json() == {"version": "0.5.7"}


async def test_root_and_health_answer_liveness_probes(client):
    assert (await client.get("/")).text == "Ollama is running"
    assert (await client.get("/health")).status_code == 200


async def test_show_describes_a_known_model_and_404s_an_unknown_one(client):
    shown = (await client.post("/api/show", json={"model": "llama3.2"})).json()
    assert {"modelfile", "parameters", "details", "model_info"} <= shown.keys()
    resp = await client.post("/api/show", json={"model": "nope"})
    assert resp.status_code == 404
    assert resp.json() == {"error": "model 'nope' not found"}


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/api/embed", "/api/embeddings"])
async def test_unknown_model_is_404_with_ollamas_message(client, path):
    resp = await client.post(path, json={"model": "nope", "prompt": "x", "input": "x"})
    assert resp.status_code == 404
    assert resp.json() == {"error": 'model "nope" not found, try pulling it first'}


async def test_malformed_json_is_400_with_an_error_string(client):
    resp = await client.post("/api/chat", content=b"{nope")
    assert resp.status_code == 400
    assert isinstance(resp.json()["error"], str)


async def test_unknown_path_is_a_plain_404(client):
    resp = await client.get("/api/nothing")
    assert resp.status_code == 404
    assert resp.text == "404 page not found"


async def test_official_ollama_client_chats_generates_and_embeds(sim):
    async with ollama.AsyncClient(host=sim.url) as client:
        reply = await client.chat(model="llama3.2", messages=CHAT["messages"])
        assert reply.done and reply.eval_count == 5
        streamed = [
            part
            async for part in await client.chat(
                model="llama3.2", messages=CHAT["messages"], stream=True
            )
        ]
        assert "".join(p.message.content for p in streamed) == reply.message.content
        generated = await client.generate(model="llama3.2", prompt="hi")
        assert generated.response
        embedded = await client.embed(model="nomic-embed-text", input=["a", "b"])
        assert len(embedded.embeddings) == 2
        listed = await client.list()
        assert [m.model for m in listed.models] == ["llama3.2:latest", "nomic-embed-text:latest"]
        assert [m.model for m in (await client.ps()).models] == [
            "llama3.2:latest",
            "nomic-embed-text:latest",
        ]
        assert (await client.show("llama3.2")).details.family == "llama"
        with pytest.raises(ollama.ResponseError) as exc:
            await client.chat(model="nope", messages=CHAT["messages"])
        assert exc.value.status_code == 404
