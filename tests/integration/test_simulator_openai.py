"""The simulator's OpenAI-style routes over real HTTP, with httpx and the official openai client."""

import base64
import json
import math
import struct

import httpx
import openai
import pytest

from switchyard_gateway.simulator import SimConfig, Simulator

from tests.integration.conftest import CHAT


def sse_payloads(text: str) -> list[str]:
    """The data of each server-sent event, in order."""
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    return [e[len("data: ") :] for e in events]


async def test_chat_completion_is_deterministic_with_usage(client):
    first = (await client.post("/v1/chat/completions", json=CHAT)).json()
    second = (await client.post("/v1/chat/completions", json=CHAT)).json()
    assert first["object"] == "chat.completion"
    assert first["model"] == "llama3.2"
    choice = first["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == second["choices"][0]["message"]["content"]
    assert first["usage"] == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}
    assert first["id"] != second["id"]


async def test_max_tokens_caps_the_reply_and_finishes_by_length(client):
    body = (await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2})).json()
    assert body["usage"]["completion_tokens"] == 2
    assert body["choices"][0]["finish_reason"] == "length"


async def test_chat_stream_sends_role_then_one_chunk_per_token_then_done(client):
    whole = (await client.post("/v1/chat/completions", json=CHAT)).json()
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert resp.headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(resp.text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    tokens = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert len(tokens) == 6
    assert "".join(tokens) == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in chunks)


async def test_chat_stream_with_include_usage_ends_with_a_usage_chunk(client):
    request = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    payloads = sse_payloads((await client.post("/v1/chat/completions", json=request)).text)
    last = json.loads(payloads[-2])
    assert last["choices"] == []
    assert last["usage"] == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}
    assert payloads[-1] == "[DONE]"


async def test_completions_stream_and_non_stream_agree(client):
    request = {"model": "llama3.2", "prompt": "once upon a time"}
    whole = (await client.post("/v1/completions", json=request)).json()
    assert whole["object"] == "text_completion"
    assert whole["usage"]["prompt_tokens"] == 4
    payloads = sse_payloads(
        (await client.post("/v1/completions", json={**request, "stream": True})).text
    )
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_completions_give_one_choice_per_prompt(client):
    body = (
        await client.post("/v1/completions", json={"model": "llama3.2", "prompt": ["a", "b c"]})
    ).json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 12, "total_tokens": 15}


async def test_embeddings_are_unit_vectors_in_float_or_base64(client):
    request = {"model": "nomic-embed-text", "input": ["one yard", "two"]}
    body = (await client.post("/v1/embeddings", json=request)).json()
    assert [d["index"] for d in body["data"]] == [0, 1]
    vector = body["data"][0]["embedding"]
    assert len(vector) == 768
    assert math.isclose(sum(v * v for v in vector), 1.0, rel_tol=1e-5)
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    packed = (
        await client.post("/v1/embeddings", json={**request, "encoding_format": "base64"})
    ).json()
    raw = base64.b64decode(packed["data"][0]["embedding"])
    assert list(struct.unpack("<768f", raw)) == vector


async def test_embeddings_accept_token_arrays_and_dimensions(client):
    request = {"model": "nomic-embed-text", "input": [[1, 2, 3], [4]], "dimensions": 8}
    body = (await client.post("/v1/embeddings", json=request)).json()
    assert [len(d["embedding"]) for d in body["data"]] == [8, 8]
    assert body["usage"]["prompt_tokens"] == 4


async def test_models_lists_the_advertised_models(client, sim):
    sim.configure(models=["a", "b"])
    body = (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    assert [(m["id"], m["object"]) for m in body["data"]] == [("a", "model"), ("b", "model")]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
async def test_unknown_model_is_404_model_not_found(client, path):
    body = {"model": "gpt-nope", "messages": [], "prompt": "x", "input": "x"}
    resp = await client.post(path, json=body)
    assert resp.status_code == 404
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "model_not_found"
    assert "gpt-nope" in error["message"]


async def test_malformed_or_mistyped_json_is_400(client):
    resp = await client.post("/v1/chat/completions", content=b'{"model": "llama3.2",')
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"
    resp = await client.post("/v1/chat/completions", json={"model": "llama3.2", "messages": "hi"})
    assert resp.status_code == 400


async def test_unknown_route_is_404_and_wrong_method_is_405(client):
    assert (await client.get("/v1/nothing")).status_code == 404
    assert (await client.get("/v1/chat/completions")).status_code == 405


async def test_official_openai_client_chats_streams_and_embeds(sim):
    oa = openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="unused", max_retries=0)
    async with oa:
        reply = await oa.chat.completions.create(
            model="llama3.2", messages=[{"role": "user", "content": "hello there yard"}]
        )
        assert reply.usage.completion_tokens == 6
        text = reply.choices[0].message.content
        stream = await oa.chat.completions.create(
            model="llama3.2",
            messages=[{"role": "user", "content": "hello there yard"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        parts, usage = [], None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            usage = chunk.usage or usage
        assert "".join(parts) == text
        assert usage.total_tokens == 9
        floats = await oa.embeddings.create(
            model="nomic-embed-text", input="a yard", encoding_format="float"
        )
        packed = await oa.embeddings.create(
            model="nomic-embed-text", input="a yard"
        )  # base64 by default
        assert len(floats.data[0].embedding) == 768
        assert packed.data[0].embedding == pytest.approx(floats.data[0].embedding)
        listed = await oa.models.list()
        assert [m.id for m in listed.data] == ["llama3.2", "nomic-embed-text"]
        with pytest.raises(openai.NotFoundError):
            await oa.chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "x"}]
            )


async def test_cached_tokens_knob_reports_prompt_tokens_details_capped_at_the_prompt(sim, client):
    assert "prompt_tokens_details" not in (await client.post("/v1/chat/completions", json=CHAT)).json()["usage"]
    sim.configure(cached_tokens=2)
    usage = (await client.post("/v1/chat/completions", json=CHAT)).json()["usage"]
    assert usage["prompt_tokens"] == 3 and usage["prompt_tokens_details"] == {"cached_tokens": 2}
    sim.configure(cached_tokens=50)
    streamed = await client.post("/v1/completions", json={"model": "llama3.2", "prompt": "hello there yard",
                                                           "stream": True, "stream_options": {"include_usage": True}})
    last = json.loads(sse_payloads(streamed.text)[-2])
    assert last["usage"]["prompt_tokens_details"] == {"cached_tokens": last["usage"]["prompt_tokens"]}
    ollama = (await client.post("/api/chat", json={**CHAT, "stream": False})).json()
    assert ollama["prompt_eval_cached_count"] == ollama["prompt_eval_count"]
