"""Anthropic's prefill: a final assistant turn is continued, not answered, and the answer begins after it.

What each kind of endpoint is sent (an OpenAI-compatible server vLLM's `continue_final_message`, Ollama the turn
as it is, OpenAI itself no field it would refuse), and a server's repeat of the prefill taken off its answer, whole
and streamed however its text is cut.
"""

from __future__ import annotations

import json

import pytest

from switchyard_gateway.services.gateway.pipeline.call import InferenceRequest
from switchyard_gateway.services.gateway.translate.anthropic_door import MESSAGES, AnthropicCall
from switchyard_gateway.services.gateway.translate.wire import Times

PREFILL = '{"answer": ['
ASKED = [{"role": "user", "content": "List three primes as JSON."}]


def call(messages: list[dict], **fields: object) -> AnthropicCall:
    body = {"model": "m", "max_tokens": 100, "messages": messages, **fields}
    return AnthropicCall(MESSAGES, InferenceRequest(), json.dumps(body).encode())


def sent(kind: str, messages: list[dict]) -> dict:
    """The body the gateway sends an endpoint of `kind` for these messages."""
    anthropic = call(messages)
    _, body = anthropic.plan(kind).request(anthropic._body, "up")
    return json.loads(body)


@pytest.mark.parametrize("content", [PREFILL, [{"type": "text", "text": PREFILL}]], ids=["text", "blocks"])
def test_an_openai_compatible_server_is_asked_to_continue_the_final_assistant_turn(content: object) -> None:
    """vLLM answered a final assistant turn as a new turn after it; `continue_final_message` (with
    `add_generation_prompt: false`, which vLLM refuses beside it) makes it continue the turn."""
    body = sent("openai-compatible", [*ASKED, {"role": "assistant", "content": content}])
    assert body["messages"][-1] == {"role": "assistant", "content": PREFILL}
    assert (body["continue_final_message"], body["add_generation_prompt"]) == (True, False)


def test_ollama_and_openai_are_sent_the_final_turn_as_it_is() -> None:
    """Ollama's /api/chat continues a final assistant message itself; OpenAI refuses fields it does not know."""
    for kind in ("ollama", "openai"):
        body = sent(kind, [*ASKED, {"role": "assistant", "content": PREFILL}])
        assert body["messages"][-1] == {"role": "assistant", "content": PREFILL}, kind
        assert "continue_final_message" not in body and "add_generation_prompt" not in body, kind


def test_a_user_turn_last_asks_for_no_continuation() -> None:
    assert "continue_final_message" not in sent("openai-compatible", ASKED)


def answer(text: str) -> bytes:
    return json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}).encode()


@pytest.mark.parametrize(("said", "shown"), [
    (PREFILL + "2, 3, 5]}", "2, 3, 5]}"),          # llama.cpp's llama-server repeats the prefill
    ("2, 3, 5]}", "2, 3, 5]}"),                    # vLLM does not
], ids=["repeated", "not repeated"])
def test_a_whole_answer_begins_after_the_prefill(said: str, shown: str) -> None:
    anthropic = call([*ASKED, {"role": "assistant", "content": PREFILL}])
    message = json.loads(anthropic.plan("openai-compatible").answer(answer(said), "m", Times(0, 0)))
    assert message["content"] == [{"type": "text", "text": shown}]


def stream_of(*pieces: str | dict) -> bytes:
    """A chat stream of these deltas (a text as its content), without usage."""
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    deltas = [{"role": "assistant", "content": None},
              *(piece if isinstance(piece, dict) else {"content": piece} for piece in pieces)]
    chunks = [*({**head, "choices": [{"index": 0, "delta": delta}]} for delta in deltas),
              {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def streamed_text(kind: str, data: bytes, prefill: str = PREFILL) -> str:
    anthropic = call([*ASKED, {"role": "assistant", "content": prefill}], stream=True)
    stream = anthropic.plan(kind).stream("m", Times(0, 0))
    out = stream.feed(data) + stream.ended()
    assert stream.done
    events = [json.loads(block.split("\n")[1][6:]) for block in (out + stream.finish()).decode().split("\n\n")
              if block]
    return "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")


@pytest.mark.parametrize("pieces", [
    (PREFILL + "2", ", 3", ", 5]}"),               # llama-server: the prefill and the first token in one delta
    ('{"ans', 'wer": [', "2, 3, 5]}"),            # a repeat cut anywhere
    ("{", '"answer": [2', ", 3, 5]}"),
])
def test_a_stream_begins_after_a_repeated_prefill(pieces: tuple[str, ...]) -> None:
    assert streamed_text("openai-compatible", stream_of(*pieces)) == "2, 3, 5]}"


@pytest.mark.parametrize(("pieces", "shown"), [
    (("2, 3", ", 5]}"), "2, 3, 5]}"),              # no repeat (vLLM)
    (('{"ans', "2, 3"), '{"ans2, 3'),              # began like one and was not: held, then relayed whole
    (('{"answer": ',), '{"answer": '),             # began like one and ended: relayed at the end
])
def test_a_stream_that_does_not_repeat_the_prefill_is_relayed_whole(pieces: tuple[str, ...], shown: str) -> None:
    assert streamed_text("openai-compatible", stream_of(*pieces)) == shown


def test_openai_itself_continues_no_turn_so_nothing_is_taken_off() -> None:
    assert streamed_text("openai", stream_of(PREFILL + "2]}")) == PREFILL + "2]}"


def test_text_held_as_a_possible_repeat_comes_before_a_tool_call_that_follows_it() -> None:
    piece = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": 1}'}}
    anthropic = call([*ASKED, {"role": "assistant", "content": PREFILL}], stream=True,
                     tools=[{"name": "lookup", "input_schema": {"type": "object"}}])
    stream = anthropic.plan("openai-compatible").stream("m", Times(0, 0))
    out = stream.feed(stream_of('{"ans', {"tool_calls": [piece]})) + stream.ended() + stream.finish()
    events = [json.loads(block.split("\n")[1][6:]) for block in out.decode().split("\n\n") if block]
    assert [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"] == ["text", "tool_use"]
    assert [e["delta"] for e in events if e["type"] == "content_block_delta"] == [
        {"type": "text_delta", "text": '{"ans'}, {"type": "input_json_delta", "partial_json": '{"q":1}'}]
