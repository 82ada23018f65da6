"""OpenAI-style answers the Ollama door (and the OpenAI door's embedding options) translate, from a raw upstream.

Each test adds an odd endpoint to the hostile lab (tests/e2e/test_upstream_answers.py: `odd_endpoint`, tried before
the lab's simulators `a` and `b`) that answers every call with what the test sets: values real servers write that the
translation once could not convert. A value with a sensible reading is read so; an answer with none is the
endpoint's failure, and the call moves on.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec

from tests.e2e import test_hostile, test_upstream_answers
from tests.e2e.test_hostile import Lab, exactly_one_usage_row
from tests.e2e.test_quota_e2e import Gateway
from tests.e2e.test_upstream_answers import Rig, odd_endpoint, raw, served_by_a

lab = test_hostile.lab
gateway = test_upstream_answers.gateway
JSON = b"content-type: application/json"


def chat_answer(**fields: Any) -> dict[str, Any]:
    return {"id": "odd", "object": "chat.completion", "created": int(time.time()), "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "from the odd one"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}, **fields}


def chat_stream(created: int) -> bytes:
    head = {"id": "odd", "object": "chat.completion.chunk", "created": created, "model": "m"}
    events = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "from "}}]},
              {**head, "choices": [{"index": 0, "delta": {"content": "the odd one"}, "finish_reason": "stop"}]},
              {**head, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}]
    return b"".join(b"data: " + msgspec.json.encode(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def embeddings(vector: Any) -> bytes:
    return msgspec.json.encode({"object": "list", "model": "m", "usage": {"prompt_tokens": 2, "total_tokens": 2},
                                "data": [{"object": "embedding", "index": 0, "embedding": vector}]})


async def post(rig: Rig, path: str, **fields: Any) -> httpx.Response:
    """A call through the rig's gateway with the lab's body for `path` and these fields; its id kept."""
    request_id = f"odd-{uuid.uuid4().hex}"
    rig.request_ids.append(request_id)
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(f"{rig.gateway.url}{path}", headers=rig.lab.headers(request_id=request_id),
                                 json={**rig.lab.body(path), "model": rig.lab.model, **fields})


def year(created_at: str) -> int:
    return datetime.fromisoformat(created_at.replace("Z", "+00:00")).year


async def test_a_created_in_milliseconds_is_read_as_the_moment_it_names(lab: Lab, gateway: Gateway) -> None:
    """mistral.rs, Qwen's Bailian and web-llm write `created` in milliseconds: every translated answer was a 500
    (datetime refused the year 58000), with no failover and a traceback in the log."""
    now = time.time()
    async with odd_endpoint(lab, gateway) as rig:
        for created in (int(now * 1000), int(now * 1_000_000), 10**15, -10**12, 0):
            rig.odd.reply = raw(200, msgspec.json.encode(chat_answer(created=created)), JSON)
            for path in ("/api/chat", "/api/generate"):
                reply = await post(rig, path)
                assert reply.status_code == 200, (created, path, reply.text)
                answer = reply.json()
                assert answer.get("message", {}).get("content", answer.get("response")) == "from the odd one"
                assert 2001 <= year(answer["created_at"]) <= datetime.now(UTC).year, (created, answer)
            rig.odd.reply = raw(200, chat_stream(created), b"content-type: text/event-stream")
            reply = await post(rig, "/api/chat", stream=True)
            assert reply.status_code == 200, (created, reply.text)
            lines = [json.loads(line) for line in reply.text.splitlines()]
            assert "".join(line["message"]["content"] for line in lines) == "from the odd one"
            assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 4, lines[-1]
            assert all(2001 <= year(line["created_at"]) <= datetime.now(UTC).year for line in lines), lines
        rows = await asyncio.gather(*(exactly_one_usage_row(lab.demo, r) for r in rig.request_ids))
        assert {(row["endpoint_id"], row["status"], row["outcome"]) for row in rows} == {(rig.endpoint_id, 200, "ok")}


async def test_upstream_timings_past_any_duration_are_held_to_what_was_measured(lab: Lab, gateway: Gateway) -> None:
    """llama.cpp-style `timings` of 1e308 or -1e308 ms: int(inf) was an OverflowError, and a 500."""
    async with odd_endpoint(lab, gateway) as rig:
        for timings in ({"prompt_ms": 1e308, "predicted_ms": 1e308}, {"prompt_ms": -5.0, "predicted_ms": -1e308},
                        {"prompt_ms": "soon", "predicted_ms": [1]}):
            rig.odd.reply = raw(200, msgspec.json.encode(chat_answer(timings=timings)), JSON)
            reply = await post(rig, "/api/chat")
            assert reply.status_code == 200, (timings, reply.text)
            answer = reply.json()
            assert answer["message"]["content"] == "from the odd one"
            spent = answer["load_duration"] + answer.get("prompt_eval_duration", 0) + answer["eval_duration"]
            assert 0 < answer["eval_duration"] and spent <= answer["total_duration"] < 30 * 10**9, (timings, answer)


BAD_VECTORS = {"not base64": "!!!not-base64!!!", "not whole float32s": "MTIzNDU=", "nested": [[1, 2], {"a": 1}]}


async def test_an_embedding_that_is_no_vector_is_the_endpoints_failure_and_the_call_moves_on(
        lab: Lab, gateway: Gateway) -> None:
    """Malformed base64 (binascii.Error) or 5 bytes of float32s made /api/embed and /api/embeddings a 500, and
    the OpenAI door's /v1/embeddings with `dimensions` too; nested lists reached the client as its vector."""
    async with odd_endpoint(lab, gateway) as rig:
        for case, vector in BAD_VECTORS.items():
            rig.odd.reply = raw(200, embeddings(vector), JSON)
            for path, fields in (("/api/embed", {}), ("/api/embeddings", {}),
                                 ("/v1/embeddings", {"input": "route me well", "dimensions": 2})):
                if path == "/v1/embeddings" and case == "nested":
                    continue            # the OpenAI door relays what it need not convert, as it relays any answer
                before = rig.odd.calls
                reply = await post(rig, path, **fields)
                assert reply.status_code == 200, (case, path, reply.text)
                body = reply.json()
                vector = body["embeddings"][0] if path == "/api/embed" else body["embedding"] \
                    if path == "/api/embeddings" else body["data"][0]["embedding"]
                assert vector and all(isinstance(x, float) for x in vector), (case, path, body)
                assert rig.odd.calls - before == 1, (case, path)
                await rig.heard(1)
        await served_by_a(rig, attempts=2)


async def test_with_no_endpoint_left_an_untranslatable_answer_is_a_502_recorded_as_one(
        lab: Lab, gateway: Gateway) -> None:
    async with odd_endpoint(lab, gateway) as rig:
        rig.odd.reply = raw(200, embeddings("!!!not-base64!!!"), JSON)
        reply = await post(rig, "/api/embed", model=rig.lone)
        assert reply.status_code == 502 and isinstance(reply.json()["error"], str), reply.text
        row = await exactly_one_usage_row(lab.demo, rig.request_ids[-1])
        assert (row["status"], row["outcome"], row["input_tokens"]) == (502, "error", 0), row
        await rig.heard(1)


def tool_call_stream() -> bytes:
    head = {"id": "odd", "object": "chat.completion.chunk", "created": int(time.time()), "model": "m"}
    call = {"index": 0, "id": "call_7", "type": "function", "function": {"name": "weather", "arguments": ""}}
    events = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [call]}}]},
              {**head, "choices": [{"index": 0, "delta": {"tool_calls": [
                  {"index": 0, "function": {"arguments": "{\"city\": \"Oslo\"}"}}]}, "finish_reason": "tool_calls"}]},
              {**head, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}]
    return b"".join(b"data: " + msgspec.json.encode(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


async def test_tool_calls_keep_their_ids_and_durations_read_as_ollamas(lab: Lab, gateway: Gateway) -> None:
    """A tool call's id was dropped (a tool result names it); a whole answer said `prompt_eval_duration: 0`, which
    Ollama leaves out; a stream of tool calls alone reported `eval_duration: 1` and all its time as the prompt's."""
    called = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_7", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}]}
    whole = chat_answer()
    whole["choices"][0].update(message=called, finish_reason="tool_calls")
    wanted = [{"id": "call_7", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}]
    async with odd_endpoint(lab, gateway) as rig:
        rig.odd.reply = raw(200, msgspec.json.encode(whole), JSON)
        answer = (await post(rig, "/api/chat")).json()
        assert answer["message"]["tool_calls"] == wanted, answer
        assert "prompt_eval_duration" not in answer and answer["eval_duration"] > 0, answer
        rig.odd.reply = raw(200, tool_call_stream(), b"content-type: text/event-stream")
        reply = await post(rig, "/api/chat", stream=True)
        lines = [json.loads(line) for line in reply.text.splitlines()]
        assert [line["message"].get("tool_calls") for line in lines] == [wanted, None], lines
        assert lines[-1]["done"] is True and lines[-1]["eval_duration"] > 1, lines[-1]


async def test_streamed_lines_are_stamped_when_the_gateway_wrote_them(lab: Lab, gateway: Gateway) -> None:
    """Every line of a translated stream carried the upstream's one `created` (here 2001), where Ollama stamps each
    line as it writes it."""
    async with odd_endpoint(lab, gateway) as rig:
        rig.odd.reply = raw(200, chat_stream(1_000_000_000), b"content-type: text/event-stream")
        before = datetime.now(UTC)
        reply = await post(rig, "/api/generate", stream=True)
        moments = [datetime.fromisoformat(json.loads(line)["created_at"].replace("Z", "+00:00"))
                   for line in reply.text.splitlines()]
        assert len(moments) == 3 and before <= moments[0] <= moments[1] <= moments[2] <= datetime.now(UTC), moments
