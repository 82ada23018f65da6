"""Output estimates (a token per 4 bytes the model wrote, for answers whose upstream reported no counts) count reasoning
once, under whichever name a server writes it: vLLM renamed `reasoning_content` to `reasoning` and keeps the old name
beside the new, the same text in both."""

from __future__ import annotations

import json

import pytest

from switchyard_gateway.services.gateway.pipeline.relay import _written_tokens
from switchyard_gateway.services.gateway.translate.sse import written_in

THOUGHT = "the user wants a number, so "          # 28 bytes
WORD = "four"


def chunk(delta: dict) -> bytes:
    return b"data: " + json.dumps({"choices": [{"index": 0, "delta": delta}]}).encode() + b"\n\n"


@pytest.mark.parametrize("names", [("reasoning_content",), ("reasoning",), ("reasoning_content", "reasoning"),
                                   ("reasoning", "reasoning_content")])
def test_a_streams_reasoning_counts_once_under_either_name_or_both(names: tuple[str, ...]) -> None:
    events = b"".join(chunk({name: THOUGHT for name in names}) for _ in range(10)) + chunk({"content": WORD})
    assert written_in(events) == 10 * len(THOUGHT) + len(WORD)


def test_a_stream_without_reasoning_counts_every_text_it_wrote() -> None:
    call = {"tool_calls": [{"index": 0, "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]}
    events = chunk({"content": WORD}) + chunk(call) + chunk({"refusal": "no"})
    assert written_in(events) == len(WORD) + len("get_weather") + len('{\\"city\\":\\"Oslo\\"}') + len("no")


@pytest.mark.parametrize("names", [("reasoning_content",), ("reasoning",), ("reasoning_content", "reasoning")])
def test_a_whole_answers_reasoning_counts_once_under_either_name_or_both(names: tuple[str, ...]) -> None:
    message = {"role": "assistant", "content": WORD, **{name: THOUGHT * 10 for name in names}}
    answer = json.dumps({"choices": [{"index": 0, "message": message}]}).encode()
    written = len(json.dumps(WORD)) + len(json.dumps(THOUGHT * 10))         # as JSON, quotes included
    assert _written_tokens(answer) == (written + 3) // 4
