"""Anthropic's prefill, and the Ollama door's, against a real llama.cpp `llama-server`: the body the Anthropic door sends an OpenAI-compatible
endpoint is taken (the build tested refuses `continue_final_message` without `add_generation_prompt: false`, as vLLM
does) and has the server continue the final assistant turn; the door's answer begins after the prefill, which the
server repeats at the start of a whole answer (not of a stream, in the build tested; without those fields, of both).

The door's translation is driven directly (no gateway): the server is the part not ours. Skipped without
llama-server, as every test here is.
"""

from __future__ import annotations

import json

import httpx

from switchyard_gateway.services.gateway.pipeline.call import InferenceRequest
from switchyard_gateway.services.gateway.translate.anthropic_door import MESSAGES, AnthropicCall
from switchyard_gateway.services.gateway.translate.asks import read_request
from switchyard_gateway.services.gateway.translate.doors import Door
from switchyard_gateway.services.gateway.translate.wire import Times
from tests.realmodel.conftest import Servers

PREFILL = "the water"      # words of the tiny model's vocabulary


def door_call(model: str, stream: bool) -> tuple[AnthropicCall, str, bytes]:
    """An Anthropic call ending in a prefill, and the path and body the door sends an OpenAI-compatible endpoint."""
    body = {"model": "tiny", "max_tokens": 4, "stream": stream, "messages": [
        {"role": "user", "content": "hello switch yard"}, {"role": "assistant", "content": PREFILL}]}
    raw = json.dumps(body).encode()
    call = AnthropicCall(MESSAGES, InferenceRequest(), raw)
    path, sent = call.plan("openai-compatible").request(raw, model)
    return call, path, sent


def texts(events: bytes) -> str:
    """The text of Anthropic events."""
    parsed = [json.loads(block.split("\n")[1][6:]) for block in events.decode().split("\n\n") if block]
    return "".join(e["delta"]["text"] for e in parsed if e["type"] == "content_block_delta")


def test_llama_server_continues_the_prefill_and_the_answer_begins_after_it(llama: Servers) -> None:
    url = llama.chat.url
    with httpx.Client(timeout=30) as client:
        call, path, sent = door_call(llama.model_path, stream=False)
        rendered = client.post(f"{url}/apply-template", content=sent).json()["prompt"]
        assert rendered.endswith(f"<|im_start|>assistant\n{PREFILL}"), rendered     # no end of turn: continued

        whole = client.post(f"{url}{path}", content=sent)
        assert whole.status_code == 200, whole.text
        said = whole.json()["choices"][0]["message"]["content"]
        message = json.loads(call.plan("openai-compatible").answer(whole.content, "tiny", Times(0, 0)))
        assert message["content"] == [{"type": "text", "text": said.removeprefix(PREFILL)}], said

        call, path, sent = door_call(llama.model_path, stream=True)
        streamed = client.post(f"{url}{path}", content=sent)
        assert streamed.status_code == 200, streamed.text
        chunks = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
        said = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        relay = call.plan("openai-compatible").stream("tiny", Times(0, 0))
        out = relay.feed(streamed.content) + relay.ended()
        assert relay.done
        assert texts(out + relay.finish()) == said.removeprefix(PREFILL), said


def test_the_ollama_door_has_llama_server_continue_a_final_assistant_message(llama: Servers) -> None:
    """The same through the Ollama door: `/api/chat` ending with an assistant message, as Ollama continues it."""
    chat = {"model": "tiny", "options": {"num_predict": 4}, "messages": [
        {"role": "user", "content": "hello switch yard"}, {"role": "assistant", "content": PREFILL}]}
    with httpx.Client(timeout=30) as client:
        for stream in (False, True):
            raw = json.dumps({**chat, "stream": stream}).encode()
            door = Door("/api/chat", read_request("ollama.chat", raw), raw)
            plan = door.plan("openai-compatible")
            path, sent = plan.request(raw, llama.model_path)
            rendered = client.post(f"{llama.chat.url}/apply-template", content=sent).json()["prompt"]
            assert rendered.endswith(f"<|im_start|>assistant\n{PREFILL}"), rendered
            answered = client.post(f"{llama.chat.url}{path}", content=sent)
            assert answered.status_code == 200, answered.text
            if not stream:
                said = answered.json()["choices"][0]["message"]["content"]
                reply = json.loads(plan.answer(answered.content, "tiny", Times(0, 0)))
                assert reply["message"]["content"] == said.removeprefix(PREFILL), said
                continue
            chunks = [json.loads(line[6:]) for line in answered.text.splitlines() if line.startswith("data: {")]
            said = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
            relay = plan.stream("tiny", Times(0, 0))
            lines = [json.loads(line) for line in (relay.feed(answered.content) + relay.ended() + relay.finish())
                     .splitlines()]
            assert "".join(line["message"]["content"] for line in lines) == said.removeprefix(PREFILL), said
            assert lines[-1]["done"] and lines[-1]["eval_count"] == 4
