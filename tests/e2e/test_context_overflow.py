"""Model servers' refusals of a prompt too long for their model, over real HTTP, through the OpenAI and Anthropic
doors: each said as the door's clients act on it (`context_length_exceeded`; `prompt is too long: N tokens > M
maximum`, or `input length and `max_tokens` exceed context limit: P + O > C` when the prompt alone fits, which Claude
Code answers by asking for less output), with the server's counts. Every other 400 is relayed as it was.

The servers' bodies are the ones vLLM, text-generation-inference and OpenAI answer; llama.cpp's own, from a real
llama-server, is in tests/realmodel/test_context_overflow.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import anthropic
import openai
import pytest

from tests.conftest import DemoStack
from tests.e2e.test_anthropic_front_door import Scripted, ScriptedUpstream, scripted_model
from tests.e2e.test_demo import exactly_one_usage_row

VLLM_PROMPT = {"object": "error", "type": "BadRequestError", "param": None, "code": 400, "message":
               "This model's maximum context length is 4096 tokens. However, your request has 5000 input tokens. "
               "Please reduce the length of the input messages."}
VLLM_REQUESTED = {"object": "error", "type": "BadRequestError", "param": None, "code": 400, "message":
                  "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens (4000 in "
                  "the messages, 1000 in the completion). Please reduce the length of the messages or completion."}
VLLM_MAX_TOKENS = {"object": "error", "type": "BadRequestError", "param": None, "code": 400, "message":
                   "'max_tokens' or 'max_completion_tokens' is too large: 1000. This model's maximum context length "
                   "is 4096 tokens and your request has 3500 input tokens (1000 > 4096 - 3500)."}
VLLM_ENGINE = {"object": "error", "type": "BadRequestError", "param": None, "code": 400, "message":
               "The decoder prompt (length 5000) is longer than the maximum model length of 4096. Make sure that "
               "`max_model_len` is no smaller than the number of text tokens."}
TGI = {"error": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 4000 `inputs` "
                "tokens and 1000 `max_new_tokens`", "error_type": "validation"}
OPENAI = {"error": {"message": "This model's maximum context length is 128000 tokens. However, your messages resulted "
                               "in 130191 tokens. Please reduce the length of the messages.",
                    "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}
OTHER = {"object": "error", "type": "BadRequestError", "param": None, "code": 400,
         "message": "temperature must be at most 2"}
REFUSALS = {"vllm_prompt": VLLM_PROMPT, "vllm_requested": VLLM_REQUESTED, "vllm_max_tokens": VLLM_MAX_TOKENS,
            "vllm_engine": VLLM_ENGINE, "tgi": TGI, "openai": OPENAI, "other": OTHER}


class Refusing(ScriptedUpstream):
    """An OpenAI-compatible server refusing each chat call with the body its last user message names (else "ok")."""

    async def answer(self, head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        content = json.loads(body)["messages"][-1]["content"] if not head.startswith(b"GET") else None
        if content not in REFUSALS:
            await super().answer(head, body, writer)
            return
        payload = json.dumps(REFUSALS[content]).encode()
        writer.write(b"HTTP/1.1 400 X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                     % len(payload) + payload)
        await writer.drain()


def openai_client(served: Scripted, request_id: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{served.demo.url}/v1", api_key=served.key, max_retries=0, timeout=30,
                              default_headers={"X-Request-Id": request_id or uuid.uuid4().hex})


@pytest.fixture(scope="module")
async def served(demo: DemoStack) -> AsyncIterator[Scripted]:
    async with scripted_model(demo, f"overflow-{uuid.uuid4().hex[:6]}", Refusing) as registered:
        yield registered


@pytest.mark.parametrize(("refusal", "message"), [
    ("vllm_prompt", "This model's maximum context length is 4096 tokens. However, your messages resulted in 5000 "
                    "tokens. Please reduce the length of the messages."),
    ("vllm_requested", "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens. "
                       "Please reduce the length of the messages."),
    ("vllm_max_tokens", "This model's maximum context length is 4096 tokens. However, you requested 4500 tokens. "
                        "Please reduce the length of the messages."),
    ("vllm_engine", "This model's maximum context length is 4096 tokens. However, your messages resulted in 5000 "
                    "tokens. Please reduce the length of the messages."),
    ("tgi", "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens. Please reduce "
            "the length of the messages."),
    ("openai", OPENAI["error"]["message"]),
])
async def test_the_openai_door_says_context_length_exceeded_in_every_servers_case(served: Scripted, refusal: str,
                                                                                  message: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await openai_client(served).chat.completions.create(model=served.model, max_tokens=1000,
                                                            messages=[{"role": "user", "content": refusal}])
    assert refused.value.body == {"message": message, "type": "invalid_request_error", "param": "messages",
                                  "code": "context_length_exceeded"}


@pytest.mark.parametrize(("refusal", "message"), [
    ("vllm_prompt", "prompt is too long: 5000 tokens > 4096 maximum"),
    ("vllm_engine", "prompt is too long: 5000 tokens > 4096 maximum"),
    ("openai", "prompt is too long: 130191 tokens > 128000 maximum"),
    ("vllm_requested", "input length and `max_tokens` exceed context limit: 4000 + 1000 > 4096, decrease input "
                       "length or `max_tokens` and try again"),
    ("vllm_max_tokens", "input length and `max_tokens` exceed context limit: 3500 + 1000 > 4096, decrease input "
                        "length or `max_tokens` and try again"),
    ("tgi", "input length and `max_tokens` exceed context limit: 4000 + 1000 > 4096, decrease input length or "
            "`max_tokens` and try again"),
])
async def test_the_anthropic_door_says_it_as_anthropic_does(served: Scripted, refusal: str, message: str) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        await served.client().messages.create(model=served.model, max_tokens=1000,
                                              messages=[{"role": "user", "content": refusal}])
    assert refused.value.body["error"] == {"type": "invalid_request_error", "message": message}  # type: ignore[index]


async def test_the_responses_door_names_input(served: Scripted) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await openai_client(served).responses.create(model=served.model, max_output_tokens=1000,
                                                     input=[{"role": "user", "content": "vllm_prompt"}])
    assert (refused.value.code, refused.value.param) == ("context_length_exceeded", "input")
    assert "5000 tokens" in refused.value.body["message"]  # type: ignore[index]


async def test_another_refusal_is_relayed_as_it_was_and_each_refusal_is_one_usage_event(served: Scripted) -> None:
    request_id = uuid.uuid4().hex
    with pytest.raises(openai.BadRequestError) as refused:
        await openai_client(served, request_id).chat.completions.create(
            model=served.model, max_tokens=10, messages=[{"role": "user", "content": "other"}])
    assert refused.value.body["message"] == OTHER["message"]  # type: ignore[index]
    assert refused.value.code != "context_length_exceeded"
    with pytest.raises(anthropic.BadRequestError) as refused_too:
        await served.client().messages.create(model=served.model, max_tokens=10,
                                              messages=[{"role": "user", "content": "other"}])
    assert refused_too.value.body["error"]["message"] == OTHER["message"]  # type: ignore[index]
    event = await exactly_one_usage_row(served.demo, request_id)
    assert event["status"] == 400 and event["output_tokens"] == 0
