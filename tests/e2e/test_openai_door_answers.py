"""End to end: what the OpenAI door (and the Anthropic and Responses doors, for reasoning) makes of answers a model
server may well send, through a one-worker gateway.

Each test registers a raw upstream (`Odd`, tests/e2e/test_upstream_answers.py) as the only endpoint of a model of its
own (`rig.lone`) beside the hostile lab's, and sets the answer it gives to every call.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import anthropic
import httpx
import msgspec
import openai
import pytest

from tests.e2e.test_hostile import Lab, exactly_one_usage_row
from tests.e2e.test_quota_e2e import Gateway
from tests.e2e.test_upstream_answers import gateway as gateway  # noqa: F401  (the fixtures)
from tests.e2e.test_upstream_answers import lab as lab  # noqa: F401
from tests.e2e.test_upstream_answers import odd_endpoint, raw


def events(*chunks: Any) -> bytes:
    """An SSE stream of these chunks (each a chat chunk's `choices[0]`), without usage, then `[DONE]`."""
    head = {"id": "chatcmpl-odd", "object": "chat.completion.chunk", "created": 1700000000, "model": "odd"}
    data = b"".join(b"data: " + msgspec.json.encode({**head, "choices": [{"index": 0, **choice}]}) + b"\n\n"
                    for choice in chunks)
    return data + b"data: [DONE]\n\n"


ROLE = {"delta": {"role": "assistant", "content": ""}, "finish_reason": None}
ARGUMENTS = "word " * 20                # 100 bytes a delta
THOUGHT = "think " * 20                 # 120 bytes a delta
STREAMS = {
    # tool-call arguments alone, as a model calling a tool writes them: 200 deltas, none with content
    "tool calls": (events(
        {"delta": {"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}},
        *({"delta": {"tool_calls": [{"index": 0, "function": {"arguments": ARGUMENTS}}]}} for _ in range(200)),
        {"delta": {}, "finish_reason": "tool_calls"}), len("get_weather") + 200 * len(ARGUMENTS)),
    # reasoning deltas (vLLM's and DeepSeek's `reasoning_content`; Ollama's and OpenRouter's `reasoning`), then a word
    "reasoning_content": (events(
        ROLE, *({"delta": {"reasoning_content": THOUGHT}} for _ in range(200)), {"delta": {"content": "ok"}},
        {"delta": {}, "finish_reason": "stop"}), 200 * len(THOUGHT) + 2),
    "reasoning": (events(
        ROLE, *({"delta": {"reasoning": THOUGHT}} for _ in range(200)), {"delta": {"content": "ok"}},
        {"delta": {}, "finish_reason": "stop"}), 200 * len(THOUGHT) + 2),
    # the role chunk's empty content is nothing written
    "a word": (events(ROLE, {"delta": {"content": "hi"}}, {"delta": {}, "finish_reason": "stop"}), 2),
}


@pytest.mark.parametrize("case", list(STREAMS))
async def test_a_stream_without_usage_is_estimated_from_everything_the_model_wrote(lab: Lab, gateway: Gateway,
                                                                                   case: str) -> None:
    """Without counts a stream was billed a token per chunk holding `"content":"`: 200 deltas of tool-call
    arguments (4,000 words) were 0 output tokens, as were as many of reasoning, and the role chunk's empty content
    was a token. Now a token per 4 bytes the model wrote (its text, reasoning and tool calls), as a whole answer's
    estimate is; the usage chunk a client asked for shows what is recorded."""
    stream, written = STREAMS[case]
    async with odd_endpoint(lab, gateway) as rig:
        rig.odd.reply = raw(200, stream, b"content-type: text/event-stream")
        request_id = f"written-{uuid.uuid4().hex}"
        async with httpx.AsyncClient(timeout=30) as client:
            reply = await client.post(f"{gateway.url}/v1/chat/completions", headers=lab.headers(request_id=request_id),
                                      json={**lab.body(), "model": rig.lone, "stream": True,
                                            "stream_options": {"include_usage": True}})
        assert reply.status_code == 200, reply.text[:300]
        data = [e[6:] for e in reply.text.split("\n\n") if e.startswith("data: ")]
        assert data[-1] == "[DONE]"
        shown = json.loads(data[-2])["usage"]
        row = await exactly_one_usage_row(lab.demo, request_id)
        assert row["estimated"] is True and row["outcome"] == "ok", row
        assert row["output_tokens"] == -(-written // 4), (case, row["output_tokens"], written)
        assert (shown["prompt_tokens"], shown["completion_tokens"]) == (row["input_tokens"], row["output_tokens"])


THOUGHTS = 10                           # reasoning deltas of THOUGHT in the answers below
REASONED = events(ROLE, *({"delta": {"reasoning_content": THOUGHT}} for _ in range(THOUGHTS // 2)),
                  *({"delta": {"reasoning": THOUGHT}} for _ in range(THOUGHTS // 2)), {"delta": {"content": "ok"}},
                  {"delta": {}, "finish_reason": "stop"})
REASONED_WHOLE = msgspec.json.encode({
    "id": "chatcmpl-odd", "object": "chat.completion", "created": 1700000000, "model": "odd", "choices": [
        {"index": 0, "finish_reason": "stop",
         "message": {"role": "assistant", "content": "ok", "reasoning_content": THOUGHT * THOUGHTS}}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 310, "total_tokens": 319,
              "completion_tokens_details": {"reasoning_tokens": 300}}})


async def test_the_anthropic_sdk_reads_an_upstreams_reasoning_as_a_thinking_block(lab: Lab, gateway: Gateway) -> None:
    """The Anthropic door dropped the reasoning a model server writes (`reasoning_content`, `reasoning`); the
    official SDK reads it as a thinking block before the text now, streamed or whole, when the request asks for
    thinking (as Anthropic's answers have them only then), and the call's output estimate counts it either way."""
    async with odd_endpoint(lab, gateway) as rig:
        client = anthropic.AsyncAnthropic(base_url=gateway.url, api_key=lab.member, max_retries=0, timeout=30)
        ask = {"model": rig.lone, "max_tokens": 2000, "messages": [{"role": "user", "content": "think first"}],
               "thinking": {"type": "enabled", "budget_tokens": 1024}}
        rig.odd.reply = raw(200, REASONED, b"content-type: text/event-stream")
        request_id = f"thinking-{uuid.uuid4().hex}"
        async with client.messages.stream(**ask, extra_headers={"X-Request-Id": request_id}) as stream:
            streamed = await stream.get_final_message()
        assert [block.type for block in streamed.content] == ["thinking", "text"], streamed
        assert (streamed.content[0].thinking, streamed.content[0].signature) == (THOUGHT * THOUGHTS, "")
        assert streamed.content[1].text == "ok" and streamed.stop_reason == "end_turn"
        row = await exactly_one_usage_row(lab.demo, request_id)
        assert row["estimated"] is True and row["output_tokens"] == -(-(THOUGHTS * len(THOUGHT) + 2) // 4), row
        assert streamed.usage.output_tokens == row["output_tokens"]
        rig.odd.reply = raw(200, REASONED_WHOLE, b"content-type: application/json")
        whole = await client.messages.create(**ask)
        assert [(block.type, getattr(block, "thinking", None) or block.text) for block in whole.content] == [
            ("thinking", THOUGHT * THOUGHTS), ("text", "ok")]
        unasked = {**ask, "thinking": {"type": "disabled"}}     # and left out: the same
        rig.odd.reply = raw(200, REASONED, b"content-type: text/event-stream")
        async with client.messages.stream(**unasked) as stream:
            plain = await stream.get_final_message()
        rig.odd.reply = raw(200, REASONED_WHOLE, b"content-type: application/json")
        for answer in (plain, await client.messages.create(**unasked)):
            assert [(block.type, block.text) for block in answer.content] == [("text", "ok")]


async def test_the_openai_sdk_reads_an_upstreams_reasoning_as_a_responses_reasoning_item(lab: Lab,
                                                                                       gateway: Gateway) -> None:
    """The Responses door dropped the reasoning too; `responses.stream` and `responses.create` give a `reasoning`
    item before the message now, `output_text` the answer alone, and the upstream's reasoning token count."""
    async with odd_endpoint(lab, gateway) as rig:
        client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=lab.member, max_retries=0, timeout=30)
        rig.odd.reply = raw(200, REASONED, b"content-type: text/event-stream")
        request_id = f"reasoning-{uuid.uuid4().hex}"
        async with client.responses.stream(model=rig.lone, input="think first", max_output_tokens=2000,
                                           extra_headers={"X-Request-Id": request_id}) as stream:
            kinds = [event.type async for event in stream]
            streamed = await stream.get_final_response()
        assert kinds.count("response.reasoning_text.delta") == THOUGHTS and "response.reasoning_text.done" in kinds
        assert [item.type for item in streamed.output] == ["reasoning", "message"], streamed
        assert streamed.output[0].content[0].text == THOUGHT * THOUGHTS and streamed.output_text == "ok"
        row = await exactly_one_usage_row(lab.demo, request_id)
        assert row["estimated"] is True and row["output_tokens"] == -(-(THOUGHTS * len(THOUGHT) + 2) // 4), row
        assert streamed.usage.output_tokens == row["output_tokens"]
        rig.odd.reply = raw(200, REASONED_WHOLE, b"content-type: application/json")
        whole = await client.responses.create(model=rig.lone, input="think first", max_output_tokens=2000)
        assert whole.output[0].type == "reasoning" and whole.output[0].content[0].text == THOUGHT * THOUGHTS
        assert whole.output_text == "ok" and whole.usage.output_tokens_details.reasoning_tokens == 300


SLOW_THOUGHTS = 200                     # reasoning deltas dripped, `Odd.pause` apart: 4 s, were all read
SLOW_HEAD = raw(200, b"", b"content-type: text/event-stream", b"transfer-encoding: chunked", framed=False)


def dripped_reasoning(odd) -> None:
    """Set `odd` to answer a stream of reasoning deltas (then a word), one event at a time."""
    stream = events(ROLE, *({"delta": {"reasoning_content": THOUGHT}} for _ in range(SLOW_THOUGHTS)),
                    {"delta": {"content": "ok"}}, {"delta": {}, "finish_reason": "stop"})
    odd.reply, odd.drip, odd.dripped = SLOW_HEAD, [event + b"\n\n" for event in stream.split(b"\n\n") if event], 0


async def left_mid_reasoning(lab: Lab, rig, request_id: str, api: str) -> None:
    """The call a client left in the middle of the upstream's reasoning: the upstream's stream was closed (not read
    to its end), and one usage event records it cancelled, with the reasoning written before it left."""
    row = await exactly_one_usage_row(lab.demo, request_id)
    assert (row["outcome"], row["api"], row["estimated"]) == ("cancelled", api, True), row
    assert 5 * len(THOUGHT) // 4 <= row["output_tokens"] < SLOW_THOUGHTS * len(THOUGHT) // 4, row
    assert rig.odd.dripped < len(rig.odd.drip), "the upstream was read to its end after the client left"


async def test_a_client_leaving_in_the_middle_of_a_thinking_block_is_one_cancelled_call(lab: Lab,
                                                                                         gateway: Gateway) -> None:
    async with odd_endpoint(lab, gateway) as rig:
        dripped_reasoning(rig.odd)
        client = anthropic.AsyncAnthropic(base_url=gateway.url, api_key=lab.member, max_retries=0, timeout=30)
        request_id, thought = f"left-thinking-{uuid.uuid4().hex}", 0
        async with client.messages.stream(model=rig.lone, max_tokens=8000, extra_headers={"X-Request-Id": request_id},
                                          messages=[{"role": "user", "content": "think long"}],
                                          thinking={"type": "enabled", "budget_tokens": 4000}) as stream:
            async for event in stream:
                thought += event.type == "content_block_delta" and event.delta.type == "thinking_delta"
                if thought >= 5:
                    break                           # leave: the connection closes with the block still open
        await left_mid_reasoning(lab, rig, request_id, "anthropic.messages")


async def test_a_client_leaving_in_the_middle_of_a_reasoning_item_is_one_cancelled_call(lab: Lab,
                                                                                         gateway: Gateway) -> None:
    async with odd_endpoint(lab, gateway) as rig:
        dripped_reasoning(rig.odd)
        client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=lab.member, max_retries=0, timeout=30)
        request_id, thought = f"left-reasoning-{uuid.uuid4().hex}", 0
        stream = await client.responses.create(model=rig.lone, input="think long", max_output_tokens=8000,
                                               stream=True, extra_headers={"X-Request-Id": request_id})
        async for event in stream:
            thought += event.type == "response.reasoning_text.delta"
            if thought >= 5:
                break
        await stream.close()                        # leave: the connection closes with the item still open
        await left_mid_reasoning(lab, rig, request_id, "openai.responses")


async def test_a_streams_estimate_is_never_past_what_the_call_was_held_to(lab: Lab, gateway: Gateway) -> None:
    """As a whole answer's: 4,000 words of tool-call arguments asked with `max_tokens` 50 are billed 50."""
    stream, _ = STREAMS["tool calls"]
    async with odd_endpoint(lab, gateway) as rig:
        rig.odd.reply = raw(200, stream, b"content-type: text/event-stream")
        request_id = f"held-{uuid.uuid4().hex}"
        async with httpx.AsyncClient(timeout=30) as client:
            reply = await client.post(f"{gateway.url}/v1/chat/completions", headers=lab.headers(request_id=request_id),
                                      json={**lab.body(), "model": rig.lone, "stream": True, "max_tokens": 50})
        assert reply.status_code == 200 and reply.text.rstrip().endswith("data: [DONE]"), reply.text[-300:]
        row = await exactly_one_usage_row(lab.demo, request_id)
        assert (row["estimated"], row["output_tokens"]) == (True, 50), row


SHORT_VECTOR = msgspec.json.encode({"object": "list", "model": "odd", "usage": {"prompt_tokens": 3, "total_tokens": 3},
                                    "data": [{"object": "embedding", "index": 0, "embedding": [0.6, 0.8, 0.0, 0.0]}]})


@pytest.mark.parametrize("encoding", ["float", "base64"])
async def test_a_vector_shorter_than_the_dimensions_asked_is_the_endpoints_failure(lab: Lab, gateway: Gateway,
                                                                                    encoding: str) -> None:
    """An upstream answering 4 values to `dimensions: 8` had its vector passed on, shorter than asked. It cannot
    answer the call: the attempt fails (its breaker hears it) and the call moves on to `a`, or is a 502 when no
    endpoint is left."""
    async with odd_endpoint(lab, gateway) as rig:
        rig.odd.reply = raw(200, SHORT_VECTOR, b"content-type: application/json")
        async with httpx.AsyncClient(timeout=30) as client:
            async def embed(model: str) -> httpx.Response:
                request_id = f"dims-{uuid.uuid4().hex}"
                rig.request_ids.append(request_id)
                return await client.post(f"{gateway.url}/v1/embeddings", headers=lab.headers(request_id=request_id),
                                         json={"model": model, "input": "route me well", "dimensions": 8,
                                               "encoding_format": encoding})
            moved_on = await embed(lab.model)
            assert moved_on.status_code == 200, moved_on.text
            vector = moved_on.json()["data"][0]["embedding"]
            assert (len(vector) if encoding == "float" else len(base64.b64decode(vector)) // 4) == 8, vector
            row = await exactly_one_usage_row(lab.demo, rig.request_ids[-1])
            assert (row["endpoint_id"], row["attempts"], row["status"]) == (lab.ids["a"], 2, 200), row
            await rig.heard(1)
            alone = await embed(rig.lone)
            assert alone.status_code == 502, alone.text
            assert alone.json()["error"]["message"] == f"Endpoint '{rig.endpoint_id}' answered something unreadable"
            row = await exactly_one_usage_row(lab.demo, rig.request_ids[-1])
            assert (row["outcome"], row["status"], row["input_tokens"]) == ("error", 502, 0), row
            await rig.heard(1)


async def test_a_client_leaving_before_a_streams_first_event_is_recorded_as_closed_not_200(lab: Lab,
                                                                                         gateway: Gateway) -> None:
    """The upstream sent its stream's head and then nothing; the client gave up. No head had reached the client,
    but the call was recorded with status 200 (the relay set it when the stream began, not when its head left)."""
    async with odd_endpoint(lab, gateway) as rig:
        rig.odd.reply = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
                         b"\r\n")
        request_id = f"left-{uuid.uuid4().hex}"
        with pytest.raises(httpx.ReadTimeout):
            async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=1.0)) as client:
                await client.post(f"{gateway.url}/v1/chat/completions", headers=lab.headers(request_id=request_id),
                                  json={**lab.body(), "model": rig.lone, "stream": True})
        row = await exactly_one_usage_row(lab.demo, request_id)
        assert (row["outcome"], row["status"], row["ttfb_ms"]) == ("cancelled", 499, None), row


async def test_an_upstream_silent_mid_stream_past_its_timeout_ends_an_anthropic_stream_with_a_timeout_error(
        lab: Lab, gateway: Gateway) -> None:
    """An upstream that sent its first event and then nothing for longer than the endpoint's `timeout_s` was
    reported to an Anthropic client as any cut (`api_error`); it is Anthropic's `timeout_error` now, recorded once."""
    async with odd_endpoint(lab, gateway, timeout_s=1) as rig:
        first = b'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]}\n\n'
        rig.odd.reply = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
                         b"\r\n" + b"%x\r\n%s\r\n" % (len(first), first))          # and then silence
        request_id = f"silent-{uuid.uuid4().hex}"
        async with httpx.AsyncClient(timeout=30) as client:
            answer = await client.post(f"{gateway.url}/v1/messages", headers=lab.headers(request_id=request_id),
                                       json={"model": rig.lone, "max_tokens": 20, "stream": True,
                                             "messages": [{"role": "user", "content": "hi"}]})
        events = [block.split("\n") for block in answer.text.strip().split("\n\n")]
        assert events[-1][0] == "event: error", answer.text
        assert json.loads(events[-1][1].removeprefix("data: "))["error"]["type"] == "timeout_error"
        assert any('"Hel"' in line for event in events for line in event)
        row = await exactly_one_usage_row(lab.demo, request_id)
        assert (row["outcome"], row["status"]) == ("error", 200), row


LONG_VECTOR = msgspec.json.encode({"object": "list", "model": "odd", "usage": {"prompt_tokens": 3, "total_tokens": 3},
                                   "data": [{"object": "embedding", "index": 0, "embedding": [3.0, 4.0, 12.0, 0.0]}]})


async def test_the_ollama_doors_dimensions_hold_through_a_server_that_ignores_them(lab: Lab, gateway: Gateway) -> None:
    """/api/embed with `dimensions` through an OpenAI-compatible server that answers its whole vector: Ollama cuts
    it and scales it back to unit length, and so does the door now (the whole vector was passed on); a vector
    shorter than asked is the endpoint's failure, in Ollama's shape, as the OpenAI door has it."""
    async with odd_endpoint(lab, gateway) as rig:
        async with httpx.AsyncClient(timeout=30) as client:
            async def embed(reply: bytes, dimensions: int) -> httpx.Response:
                rig.odd.reply = raw(200, reply, b"content-type: application/json")
                request_id = f"ollama-dims-{uuid.uuid4().hex}"
                rig.request_ids.append(request_id)
                return await client.post(f"{gateway.url}/api/embed", headers=lab.headers(request_id=request_id),
                                         json={"model": rig.lone, "input": "cut me", "dimensions": dimensions})
            cut = await embed(LONG_VECTOR, 2)
            assert cut.status_code == 200, cut.text
            assert cut.json()["embeddings"] == [[0.6, 0.8]], cut.text
            short = await embed(SHORT_VECTOR, 8)
            assert short.status_code == 502, short.text
            assert short.json() == {"error": f"Endpoint '{rig.endpoint_id}' answered something unreadable"}
            row = await exactly_one_usage_row(lab.demo, rig.request_ids[-1])
            assert (row["outcome"], row["status"]) == ("error", 502), row


@pytest.mark.parametrize(("said", "shown"), [
    ({"error": {"message": "only a message"}},
     {"message": "only a message", "type": "invalid_request_error", "param": None, "code": None}),
    ({"error": {"message": "vLLM's new style", "type": "BadRequestError", "param": None, "code": 400}},
     {"message": "vLLM's new style", "type": "BadRequestError", "param": None, "code": "400"}),
    ({"error": {"message": "odd members", "type": 7, "param": ["x"], "code": True, "detail": "kept"}},
     {"message": "odd members", "type": "invalid_request_error", "param": None, "code": None, "detail": "kept"}),
    ({"error": {"message": "OpenAI's own", "type": "invalid_request_error", "param": "temperature", "code": "bad"}},
     {"message": "OpenAI's own", "type": "invalid_request_error", "param": "temperature", "code": "bad"}),
])
async def test_an_upstreams_error_that_only_looks_like_openais_is_given_openais_members(
        lab: Lab, gateway: Gateway, said: dict, shown: dict) -> None:
    """An error body with a message but no `type`, `param` or `code` (or vLLM's integer `code`) was relayed as it
    came, though the door promises OpenAI's shape, which its SDKs read (`code` a string or null)."""
    async with odd_endpoint(lab, gateway) as rig:
        rig.odd.reply = raw(400, msgspec.json.encode(said), b"content-type: application/json")
        async with httpx.AsyncClient(timeout=30) as client:
            reply = await client.post(f"{gateway.url}/v1/chat/completions", headers=lab.headers(),
                                      json={**lab.body(), "model": rig.lone})
        assert reply.status_code == 400 and reply.json() == {"error": shown}, reply.text
