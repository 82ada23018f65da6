"""The Ollama door's prefill: an `/api/chat` ending with an assistant message is continued, as Ollama continues it.

What each kind of endpoint is sent (an OpenAI-compatible server vLLM's `continue_final_message`, Ollama the chat as
it is, OpenAI itself no field it would refuse), and a server's repeat of the message taken off its answer, whole and
streamed however its text is cut, as Ollama's own answer holds the continuation alone.
"""

from __future__ import annotations

import json

import pytest

from switchyard_gateway.services.gateway.translate.asks import read_request
from switchyard_gateway.services.gateway.translate.doors import Door
from switchyard_gateway.services.gateway.translate.wire import Times

PREFILL = '{"answer": ['
ASKED = [{"role": "user", "content": "List three primes as JSON."}]
CONTINUED = [*ASKED, {"role": "assistant", "content": PREFILL}]


def door(messages: list[dict], **fields: object) -> Door:
    body = json.dumps({"model": "m", "messages": messages, **fields}).encode()
    return Door("/api/chat", read_request("ollama.chat", body), body)


def sent(kind: str, messages: list[dict], **fields: object) -> dict:
    """The body the gateway sends an endpoint of `kind` for this chat."""
    chat = door(messages, **fields)
    _, body = chat.plan(kind).request(chat._body, "up")
    return json.loads(body)


def test_an_openai_compatible_server_is_asked_to_continue_the_final_assistant_message() -> None:
    body = sent("openai-compatible", CONTINUED)
    assert body["messages"][-1] == {"role": "assistant", "content": PREFILL}
    assert (body["continue_final_message"], body["add_generation_prompt"]) == (True, False)


@pytest.mark.parametrize("kind", ["ollama", "openai"])
def test_ollama_and_openai_are_sent_the_chat_as_it_is(kind: str) -> None:
    """Ollama continues a final assistant message itself; OpenAI refuses fields it does not know."""
    body = sent(kind, CONTINUED)
    assert body["messages"][-1] == {"role": "assistant", "content": PREFILL}
    assert "continue_final_message" not in body and "add_generation_prompt" not in body


@pytest.mark.parametrize("messages", [
    ASKED,
    [*ASKED, {"role": "assistant", "content": ""}],
    [*ASKED, {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]}],
], ids=["user last", "empty assistant", "assistant's tool call"])
def test_nothing_to_continue_asks_for_no_continuation(messages: list[dict]) -> None:
    assert "continue_final_message" not in sent("openai-compatible", messages)


def answer(text: str) -> bytes:
    return json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}).encode()


@pytest.mark.parametrize(("kind", "said", "shown"), [
    ("openai-compatible", PREFILL + "2, 3, 5]}", "2, 3, 5]}"),     # llama.cpp's llama-server repeats the prefill
    ("openai-compatible", "2, 3, 5]}", "2, 3, 5]}"),               # vLLM does not
    ("openai", PREFILL + "2]}", PREFILL + "2]}"),                  # OpenAI answered a new turn: nothing taken off
], ids=["repeated", "not repeated", "openai"])
def test_a_whole_answer_begins_after_the_prefill(kind: str, said: str, shown: str) -> None:
    chat = door(CONTINUED, stream=False)
    reply = json.loads(chat.plan(kind).answer(answer(said), "m", Times(0, 0)))
    assert reply["message"]["content"] == shown
    assert (reply["prompt_eval_count"], reply["eval_count"]) == (9, 4)


def stream_of(*pieces: str | dict) -> bytes:
    """A chat stream of these deltas (a text as its content), with usage."""
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    deltas = [{"role": "assistant", "content": None},
              *(piece if isinstance(piece, dict) else {"content": piece} for piece in pieces)]
    chunks = [*({**head, "choices": [{"index": 0, "delta": delta}]} for delta in deltas),
              {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
              {**head, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}]
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def streamed(kind: str, data: bytes, **fields: object) -> list[dict]:
    """The NDJSON lines the door writes for this upstream stream."""
    chat = door(CONTINUED, **fields)
    stream = chat.plan(kind).stream("m", Times(0, 0))
    out = stream.feed(data) + stream.ended()
    assert stream.done
    return [json.loads(line) for line in (out + stream.finish()).splitlines()]


def text_of(lines: list[dict]) -> str:
    return "".join(line["message"]["content"] for line in lines)


@pytest.mark.parametrize("pieces", [
    (PREFILL + "2", ", 3", ", 5]}"),               # llama-server: the prefill and the first token in one delta
    ('{"ans', 'wer": [', "2, 3, 5]}"),            # a repeat cut anywhere
    ("{", '"answer": [2', ", 3, 5]}"),
])
def test_a_stream_begins_after_a_repeated_prefill(pieces: tuple[str, ...]) -> None:
    lines = streamed("openai-compatible", stream_of(*pieces))
    assert text_of(lines) == "2, 3, 5]}"
    assert lines[-1]["done"] and (lines[-1]["prompt_eval_count"], lines[-1]["eval_count"]) == (9, 4)


@pytest.mark.parametrize(("pieces", "shown"), [
    (("2, 3", ", 5]}"), "2, 3, 5]}"),              # no repeat (vLLM)
    (('{"ans', "2, 3"), '{"ans2, 3'),              # began like one and was not: held, then relayed whole
    (('{"answer": ',), '{"answer": '),             # began like one and ended: relayed at the end
])
def test_a_stream_that_does_not_repeat_the_prefill_is_relayed_whole(pieces: tuple[str, ...], shown: str) -> None:
    lines = streamed("openai-compatible", stream_of(*pieces))
    assert text_of(lines) == shown
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]


def test_openai_itself_continues_nothing_so_nothing_is_taken_off() -> None:
    assert text_of(streamed("openai", stream_of(PREFILL + "2]}"))) == PREFILL + "2]}"


def test_text_held_as_a_possible_repeat_comes_before_a_tool_call_that_follows_it() -> None:
    piece = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": 1}'}}
    lines = streamed("openai-compatible", stream_of('{"ans', {"tool_calls": [piece]}),
                     tools=[{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}])
    assert [line["message"].get("content") for line in lines[:2]] == ['{"ans', ""]
    assert lines[1]["message"]["tool_calls"] == [{"function": {"name": "lookup", "arguments": {"q": 1}},
                                                  "id": "call_1"}]
