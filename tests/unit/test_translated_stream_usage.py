"""What a translated stream reports of its tokens: the output estimated from what the model wrote, as the OpenAI door
estimates it, when the upstream reports none; and an Anthropic stream's input tokens from its first event on."""

from __future__ import annotations

import json

import pytest
from anthropic.lib.streaming._messages import accumulate_event

from switchyard_gateway.quotas.tokens import PER_MESSAGE, TokenEstimator
from switchyard_gateway.services.gateway.pipeline.call import InferenceRequest
from switchyard_gateway.services.gateway.translate.anthropic_door import MESSAGES, AnthropicCall
from switchyard_gateway.services.gateway.translate.asks import Ask
from switchyard_gateway.services.gateway.translate.anthropic_stream import (
    OllamaStreamToAnthropic, OpenAIStreamToAnthropic,
)
from switchyard_gateway.services.gateway.translate.sse import SseTap
from switchyard_gateway.services.gateway.translate.stream import OpenAIStreamToOllama
from switchyard_gateway.services.gateway.translate.wire import Times, TokenCounts

PIECE = "word " * 40                    # 200 bytes a chunk, as JSON writes them
PIECES = 10
WRITTEN = PIECES * len(PIECE)           # 2,000 bytes: 500 tokens at a token per 4


def sse_stream(*deltas: dict, finish: str = "stop") -> bytes:
    """An OpenAI chat stream of these deltas, ended by a finish and [DONE], without usage."""
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": "m"}
    chunks = [{**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]} for delta in deltas]
    chunks.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


BIG_CHUNKS = sse_stream({"role": "assistant", "content": ""}, *({"content": PIECE} for _ in range(PIECES)))
OLLAMA_LINES = b"".join(
    json.dumps({"model": "m", "created_at": "2026-01-01T00:00:00Z", "message": {"role": "assistant", "content": text},
                "done": False}).encode() + b"\n" for text in [PIECE] * PIECES) \
    + b'{"model":"m","created_at":"2026-01-01T00:00:00Z","message":{"role":"assistant","content":""},"done":true}\n'


def fed(stream, data: bytes) -> bytes:
    """Everything the stream relays of `data`, given in pieces that cut events anywhere, and its closing part."""
    out = b"".join(stream.feed(data[i:i + 97]) for i in range(0, len(data), 97)) + stream.ended()
    assert stream.done and stream.usage is None
    return out + stream.finish()


def anthropic_events(raw: bytes) -> list[dict]:
    return [json.loads(block.split("\n")[1][6:]) for block in raw.decode().split("\n\n") if block]


@pytest.mark.parametrize("make", [
    lambda: SseTap(keep_usage=False),
    lambda: OpenAIStreamToOllama("m", "chat"),
    lambda: OpenAIStreamToOllama("m", "generate"),
    lambda: OpenAIStreamToAnthropic("m"),
], ids=["openai door", "ollama chat", "ollama generate", "anthropic"])
def test_big_chunks_without_usage_are_estimated_by_what_they_wrote_on_every_door(make) -> None:
    """Ten chunks of 200 bytes were ten output tokens on the Ollama and Anthropic doors (a token per chunk of text),
    and 500 on the OpenAI door (a token per 4 bytes written): every door estimates the OpenAI door's way now."""
    stream = make()
    fed(stream, BIG_CHUNKS)
    assert stream.content_events == WRITTEN // 4 == 500


def test_an_ollama_stream_without_counts_is_estimated_by_what_it_wrote_on_the_anthropic_door() -> None:
    stream = OllamaStreamToAnthropic("m", input_tokens=12)
    parsed = anthropic_events(fed(stream, OLLAMA_LINES))
    assert stream.content_events == 500
    assert parsed[-2]["usage"] == {"input_tokens": 12, "output_tokens": 500}


def test_an_ollama_tool_call_counts_its_name_and_its_arguments_as_json() -> None:
    line = {"model": "m", "created_at": "2026-01-01T00:00:00Z", "done": False, "message": {
        "role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}}
    stream = OllamaStreamToAnthropic("m")
    fed(stream, json.dumps(line).encode() + b"\n" + OLLAMA_LINES.splitlines(keepends=True)[-1])
    assert stream.written == len("get_weather") + len('{"city":"Paris"}')


def test_the_usage_shown_is_the_relays_estimate_when_it_made_one() -> None:
    stream = OpenAIStreamToOllama("m", "chat")
    out = b"".join(stream.feed(BIG_CHUNKS[i:i + 500]) for i in range(0, len(BIG_CHUNKS), 500))
    stream.estimate = TokenCounts(31, stream.content_events)        # what the relay does, as it records
    final = json.loads((out + stream.finish()).splitlines()[-1])
    assert (final["prompt_eval_count"], final["eval_count"]) == (31, 500)


def counting_call(body: dict) -> tuple[AnthropicCall, Ask, list[str]]:
    """An Anthropic call, and its Ask, which counts with a tokenizer that notes each text it is given."""
    seen: list[str] = []
    estimator = TokenEstimator()
    call = AnthropicCall(MESSAGES, InferenceRequest(), json.dumps(body).encode())

    class Noting:
        exact, image_tokens = estimator.exact, estimator.image_tokens

        def counter(self):
            count = estimator.counter()
            return lambda text: (seen.append(text), count(text))[1]

    return call, call.ask(1 << 20, Noting()), seen     # type: ignore[arg-type]


BODY = {"model": "m", "max_tokens": 1000, "stream": True, "system": "Be brief.",
        "messages": [{"role": "user", "content": "How far is the moon from the earth, in kilometres?"}]}
STREAMS = [("openai-compatible", BIG_CHUNKS), ("openai", BIG_CHUNKS), ("ollama", OLLAMA_LINES)]
KINDS = [kind for kind, _ in STREAMS]


def start_and_end(call: AnthropicCall, kind: str, upstream: bytes) -> tuple[dict, dict]:
    """The usage of a stream's `message_start` and `message_delta` through the call's plan for `kind`."""
    parsed = anthropic_events(fed(call.plan(kind).stream("m", Times(0, 0)), upstream))
    assert (parsed[0]["type"], parsed[-2]["type"]) == ("message_start", "message_delta")
    return parsed[0]["message"]["usage"], parsed[-2]["usage"]


@pytest.mark.parametrize(("kind", "upstream"), STREAMS, ids=KINDS)
def test_message_start_says_the_prompts_tokens_as_the_quota_hold_counted_them(kind: str, upstream: bytes) -> None:
    """`message_start` said `input_tokens: 0` whatever the prompt (Anthropic's own says the prompt's count there);
    `message_delta` carries the final input and output counts, which replace it."""
    call, ask, seen = counting_call(BODY)
    counted = ask.prompt_tokens()                                     # the quota hold's count
    assert counted > 10
    start, end = start_and_end(call, kind, upstream)
    assert start == {"input_tokens": counted, "output_tokens": 0}
    assert end == {"input_tokens": counted, "output_tokens": 500}
    assert len(seen) == 2, "the prompt was counted once (its system and its one message), not again for the stream"


@pytest.mark.parametrize(("kind", "upstream"), STREAMS, ids=KINDS)
def test_a_prompt_no_hold_counted_is_shown_at_four_bytes_a_token_without_a_tokenizer_pass(kind: str,
                                                                                         upstream: bytes) -> None:
    """A call no limit holds is never counted on its way (a tokenizer pass costs about 50 µs a KB on the loop):
    its `message_start` says its texts at four bytes a token, with the chat framing the count adds."""
    call, _, seen = counting_call(BODY)
    start, _ = start_and_end(call, kind, upstream)
    rough = 3 * PER_MESSAGE + -(-len(BODY["system"]) // 4) + -(-len(BODY["messages"][0]["content"]) // 4)
    assert start == {"input_tokens": rough, "output_tokens": 0} and seen == []


def test_message_delta_carries_the_upstreams_final_counts_which_the_sdk_takes() -> None:
    counts = {"prompt_tokens": 40, "completion_tokens": 7, "total_tokens": 47,
              "prompt_tokens_details": {"cached_tokens": 30}}
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    data = sse_stream({"content": "Hi"}).replace(
        b"data: [DONE]", b"data: " + json.dumps({**head, "choices": [], "usage": counts}).encode()
        + b"\n\ndata: [DONE]")
    parsed = anthropic_events(fed_with_usage(OpenAIStreamToAnthropic("m", input_tokens=35), data))
    assert parsed[0]["message"]["usage"]["input_tokens"] == 35
    assert parsed[-2]["usage"] == {"input_tokens": 10, "output_tokens": 7, "cache_read_input_tokens": 30}
    snapshot, buffers = None, {}
    for event in parsed:
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=buffers)
    assert (snapshot.usage.input_tokens, snapshot.usage.output_tokens, snapshot.usage.cache_read_input_tokens) \
        == (10, 7, 30)


def fed_with_usage(stream, data: bytes) -> bytes:
    out = stream.feed(data) + stream.ended()
    assert stream.done and stream.usage is not None
    return out + stream.finish()
