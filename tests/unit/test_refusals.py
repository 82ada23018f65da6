"""A model's refusal (OpenAI's `refusal`: the model declined and says why, with no content) is not lost on the doors
whose APIs have no refusal of their own: Anthropic's and Ollama's show it as the answer's text, whole and streamed
(Anthropic's with `stop_reason: "refusal"`, as for a content filter).
(The Responses door's `refusal` parts: test_responses_door.py.)"""

from __future__ import annotations

import json

import pytest

from switchyard_gateway.services.gateway.pipeline.call import InferenceRequest
from switchyard_gateway.services.gateway.translate.anthropic_door import MESSAGES, AnthropicCall
from switchyard_gateway.services.gateway.translate.asks import read_request
from switchyard_gateway.services.gateway.translate.doors import Door
from switchyard_gateway.services.gateway.translate.wire import Times

SAID = "I can't help with that."
ASKED = [{"role": "user", "content": "Help me with that."}]


def whole() -> bytes:
    return json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": None, "refusal": SAID}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}}).encode()


def streamed() -> bytes:
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    deltas = [{"role": "assistant", "content": None, "refusal": ""}, {"refusal": "I can't "},
              {"refusal": "help with that."}]
    chunks = [*({**head, "choices": [{"index": 0, "delta": delta}]} for delta in deltas),
              {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def anthropic(stream: bool) -> AnthropicCall:
    body = json.dumps({"model": "m", "max_tokens": 50, "stream": stream, "messages": ASKED}).encode()
    return AnthropicCall(MESSAGES, InferenceRequest(), body)


def ollama(stream: bool) -> Door:
    body = json.dumps({"model": "m", "stream": stream, "messages": ASKED}).encode()
    return Door("/api/chat", read_request("ollama.chat", body), body)


@pytest.mark.parametrize("kind", ["openai-compatible", "openai"])
def test_the_anthropic_door_shows_a_refusal_as_text(kind: str) -> None:
    message = json.loads(anthropic(False).plan(kind).answer(whole(), "m", Times(0, 0)))
    assert message["content"] == [{"type": "text", "text": SAID}] and message["stop_reason"] == "refusal"
    relay = anthropic(True).plan(kind).stream("m", Times(0, 0))
    out = relay.feed(streamed()) + relay.ended() + relay.finish()
    events = [json.loads(block.split("\n")[1][6:]) for block in out.decode().split("\n\n") if block]
    assert "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta") == SAID
    assert [e["delta"]["stop_reason"] for e in events if e["type"] == "message_delta"] == ["refusal"]


@pytest.mark.parametrize("kind", ["openai-compatible", "openai"])
def test_the_ollama_door_shows_a_refusal_as_text(kind: str) -> None:
    reply = json.loads(ollama(False).plan(kind).answer(whole(), "m", Times(0, 0)))
    assert reply["message"]["content"] == SAID and reply["eval_count"] == 6
    relay = ollama(True).plan(kind).stream("m", Times(0, 0))
    lines = [json.loads(line) for line in (relay.feed(streamed()) + relay.ended() + relay.finish()).splitlines()]
    assert "".join(line["message"]["content"] for line in lines) == SAID and lines[-1]["done"]
