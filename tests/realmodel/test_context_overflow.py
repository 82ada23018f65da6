"""A prompt longer than the real llama-server's context (the tiny model's 512 tokens), through every door: each says
it as its clients recognise it, with the server's own counts.

llama.cpp refuses it as `exceed_context_size_error` with `n_prompt_tokens` and `n_ctx`; OpenAI's clients (Codex, the
SDKs' users, litellm) act on `code: "context_length_exceeded"`, Anthropic's (Claude Code compacts the conversation)
on `prompt is too long: N tokens > M maximum`. These were relayed in llama.cpp's words.
"""

from __future__ import annotations

import re
import uuid

import anthropic
import httpx
import openai
import pytest

from tests.realmodel.conftest import RealUpstream
from tests.realmodel.test_llama_server import messages, openai_client

LONG = "the switch yard counts every token " * 150       # about 1,000 tokens of the tiny model's vocabulary


async def servers_own_refusal(real: RealUpstream) -> dict:
    """What llama-server itself answers the long prompt: its counts are the ones every door must give."""
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{real.servers.chat.url}/v1/chat/completions",
                                   json={"model": real.servers.model_path, "messages": messages(LONG), "max_tokens": 4})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "exceed_context_size_error" and error["n_ctx"] == 512
    return error


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_the_openai_door_says_context_length_exceeded(real: RealUpstream, stream: bool) -> None:
    said = await servers_own_refusal(real)
    with pytest.raises(openai.BadRequestError) as refused:
        await openai_client(real, uuid.uuid4().hex).chat.completions.create(
            model=real.alias, messages=messages(LONG), max_tokens=4, stream=stream)  # type: ignore[arg-type]
    assert refused.value.code == "context_length_exceeded" and refused.value.param == "messages"
    assert refused.value.type == "invalid_request_error"
    assert refused.value.body["message"] == (  # type: ignore[index]
        f"This model's maximum context length is 512 tokens. However, your messages resulted in "
        f"{said['n_prompt_tokens']} tokens. Please reduce the length of the messages.")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_the_responses_door_says_context_length_exceeded_of_input(real: RealUpstream, stream: bool) -> None:
    said = await servers_own_refusal(real)
    with pytest.raises(openai.BadRequestError) as refused:
        await openai_client(real, uuid.uuid4().hex).responses.create(model=real.alias, input=LONG,
                                                                       max_output_tokens=16, stream=stream)
    assert refused.value.code == "context_length_exceeded" and refused.value.param == "input"
    assert str(said["n_prompt_tokens"]) in refused.value.body["message"]  # type: ignore[index]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_the_anthropic_door_says_the_prompt_is_too_long(real: RealUpstream, stream: bool) -> None:
    said = await servers_own_refusal(real)
    client = anthropic.AsyncAnthropic(base_url=real.demo.url, api_key=real.key, max_retries=0, timeout=30)
    with pytest.raises(anthropic.BadRequestError) as refused:
        if stream:
            async with client.messages.stream(model=real.alias, max_tokens=4, messages=messages(LONG)) as events:
                await events.get_final_message()
        else:
            await client.messages.create(model=real.alias, max_tokens=4, messages=messages(LONG))  # type: ignore[arg-type]
    error = refused.value.body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error"
    assert error["message"] == f"prompt is too long: {said['n_prompt_tokens']} tokens > 512 maximum"
    assert re.fullmatch(r"prompt is too long: \d+ tokens > \d+ maximum", error["message"])


async def test_the_ollama_door_keeps_the_servers_words(real: RealUpstream) -> None:
    """Ollama's clients have no form of their own to act on: the server's sentence, counts and all, is relayed."""
    said = await servers_own_refusal(real)
    async with httpx.AsyncClient(base_url=real.demo.url, headers=real.headers(uuid.uuid4().hex), timeout=30) as http:
        answer = await http.post("/api/chat", json={"model": real.alias, "messages": messages(LONG), "stream": False})
    assert answer.status_code == 400
    assert answer.json() == {"error": said["message"]}
