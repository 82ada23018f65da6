"""Odd upstream answers on every door that translates. Reasoning written as something other than text (a number, an
object) is no reasoning: the answer beside it stands, whole or streamed (it made the whole answer unreadable, a 502
and a failure counted against the endpoint's breaker, though reasoning is an extra beside it). A whole answer that
holds no choice is unreadable: the endpoint's failure, not an empty answer recorded as served."""

from __future__ import annotations

import json

import pytest

from switchyard_gateway.services.gateway.translate.asks import read_request
from switchyard_gateway.services.gateway.translate.doors import Door
from switchyard_gateway.services.gateway.translate.wire import Times, TranslationError

ODD = [42, {"a": 1}, ["x"], True]
DOORS = {      # path, api, body: each asking for thinking where the door shows it only when asked
    "anthropic": ("/v1/messages", "anthropic.messages",
                  {"model": "m", "max_tokens": 2000, "messages": [{"role": "user", "content": "hi"}],
                   "thinking": {"type": "enabled", "budget_tokens": 1024}}),
    "responses": ("/v1/responses", "openai.responses", {"model": "m", "input": "hi"}),
    "ollama": ("/api/chat", "ollama.chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
}


def plan(door: str, kind: str, stream: bool):
    path, api, body = DOORS[door]
    raw = json.dumps({**body, "stream": stream}).encode()
    return Door(path, read_request(api, raw), raw).plan(kind)


def texts_of(door: str, answer: bytes) -> tuple[str, str]:
    """(the text, the reasoning) a door's whole answer shows."""
    shown = json.loads(answer)
    if door == "anthropic":
        blocks = shown["content"]
        return ("".join(b.get("text", "") for b in blocks), "".join(b.get("thinking", "") for b in blocks))
    if door == "responses":
        items = shown["output"]
        return ("".join(p["text"] for i in items if i["type"] == "message" for p in i["content"]),
                "".join(p["text"] for i in items if i["type"] == "reasoning" for p in i["content"]))
    return shown["message"]["content"], shown["message"].get("thinking") or ""


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("odd", ODD)
def test_a_whole_answers_odd_reasoning_is_none_and_its_text_stands(door: str, odd: object) -> None:
    message = {"role": "assistant", "content": "ok", "reasoning_content": odd, "reasoning": odd}
    data = json.dumps({"id": "c1", "object": "chat.completion", "created": 1, "model": "up",
                       "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}).encode()
    assert texts_of(door, plan(door, "openai-compatible", False).answer(data, "m", Times(0, 0))) == ("ok", "")


@pytest.mark.parametrize("odd", ODD)
def test_an_ollama_answers_odd_thinking_is_none_and_its_text_stands(odd: object) -> None:
    data = json.dumps({"model": "up", "created_at": "2026-01-01T00:00:00Z", "done": True, "done_reason": "stop",
                       "message": {"role": "assistant", "content": "ok", "thinking": odd},
                       "prompt_eval_count": 3, "eval_count": 1}).encode()
    assert texts_of("anthropic", plan("anthropic", "ollama", False).answer(data, "m", Times(0, 0))) == ("ok", "")


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("odd", ODD)
def test_a_streams_odd_reasoning_is_skipped_and_its_text_relayed(door: str, odd: object) -> None:
    def chunk(delta: dict, finish: str | None = None) -> bytes:
        return b"data: " + json.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "up",
                                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}).encode() \
            + b"\n\n"

    tap = plan(door, "openai-compatible", True).stream("m", Times(0, 0))
    out = tap.feed(chunk({"role": "assistant", "reasoning_content": odd}) + chunk({"reasoning": odd, "content": "o"})
                   + chunk({"content": "k"}) + chunk({}, "stop") + b"data: [DONE]\n\n") + tap.ended()
    assert tap.error is None and tap.done
    out += tap.finish()
    said = out.decode()
    assert '"o"' in said and '"k"' in said
    assert not any(failed in said for failed in ("event: error", '"type":"error"', '{"error"', "response.failed"))


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("data", [b"{}", b'{"choices": []}', b'{"choices": null, "usage": {"prompt_tokens": 3}}'])
def test_a_whole_answer_without_a_choice_is_unreadable(door: str, data: bytes) -> None:
    with pytest.raises(TranslationError, match="holds no choices"):
        plan(door, "openai-compatible", False).answer(data, "m", Times(0, 0))


@pytest.mark.parametrize("data", [b"{}", b'{"done": true, "eval_count": 3}'])
def test_an_ollama_answer_without_a_message_is_unreadable(data: bytes) -> None:
    with pytest.raises(TranslationError, match="holds no message"):
        plan("anthropic", "ollama", False).answer(data, "m", Times(0, 0))
