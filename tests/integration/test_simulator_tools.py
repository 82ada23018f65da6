"""The simulator's tool calls (the `call_tools` knob) and stop strings, over real HTTP on both APIs."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from switchyard_gateway.simulator import SimConfig, Simulator
from switchyard_gateway.simulator.tools import Function, arguments, cut_at_stop

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                     "unit": {"type": "string", "enum": ["c", "f"]}}}}},
         {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
ASK = [{"role": "user", "content": "weather in oslo"}]


@pytest.fixture
async def sim():
    async with Simulator(SimConfig(tokens=12, call_tools=True)) as sim:
        yield sim


def test_arguments_follow_the_schema_and_repeat() -> None:
    function = Function("get_weather", TOOLS[0]["function"]["parameters"])
    args = arguments("llama3.2", function)
    assert set(args) == {"city", "days", "unit"} and args["days"] == 1 and args["unit"] == "c"
    assert isinstance(args["city"], str) and args["city"].isalpha()
    assert arguments("llama3.2", function) == args


def test_a_stop_string_cuts_the_reply_before_it() -> None:
    tokens = ("The", " quick", " yard", " master.")
    assert cut_at_stop(tokens, [" yard", "zzz"]) == (("The", " quick"), " yard")
    assert cut_at_stop(tokens, "ui") == (("The", " q"), "ui")
    assert cut_at_stop(tokens, ["absent"]) == (tokens, None)
    assert cut_at_stop(tokens, None) == (tokens, None)


async def test_openai_chat_offering_tools_gets_a_tool_call_then_text_after_the_result(sim: Simulator) -> None:
    client = openai.AsyncOpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0)
    first = await client.chat.completions.create(model="llama3.2", messages=ASK, tools=TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and set(json.loads(call.function.arguments)) == {"city", "days", "unit"}
    named = await client.chat.completions.create(
        model="llama3.2", messages=ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert named.choices[0].message.tool_calls[0].function.name == "get_time"
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
               {"role": "tool", "tool_call_id": call.id, "content": "-3 C"}]
    second = await client.chat.completions.create(model="llama3.2", messages=history, tools=TOOLS)
    assert second.choices[0].message.content and second.choices[0].finish_reason == "stop"
    none = await client.chat.completions.create(model="llama3.2", messages=ASK, tools=TOOLS, tool_choice="none")
    assert none.choices[0].message.tool_calls is None


async def test_a_streamed_openai_tool_call_sends_id_and_name_then_the_arguments_in_pieces(sim: Simulator) -> None:
    client = openai.AsyncOpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0)
    stream = await client.chat.completions.create(model="llama3.2", messages=ASK, tools=TOOLS, stream=True,
                                                  stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    calls = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert calls[0].id and calls[0].function.name == "get_weather" and calls[0].function.arguments == ""
    assert len(calls) >= 3 and all(c.id is None for c in calls[1:])
    assert set(json.loads("".join(c.function.arguments for c in calls))) == {"city", "days", "unit"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


async def test_ollama_chat_offering_tools_gets_a_tool_call(sim: Simulator) -> None:
    async with httpx.AsyncClient(base_url=sim.url, timeout=5) as http:
        whole = (await http.post("/api/chat", json={"model": "llama3.2", "messages": ASK, "tools": TOOLS,
                                                     "stream": False})).json()
        streamed = (await http.post("/api/chat", json={"model": "llama3.2", "messages": ASK, "tools": TOOLS})).text
    [call] = whole["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and set(call["function"]["arguments"]) == {"city", "days", "unit"}
    assert whole["done"] and whole["done_reason"] == "stop" and whole["eval_count"] > 0
    lines = [json.loads(line) for line in streamed.splitlines()]
    assert lines[0]["message"]["tool_calls"] == whole["message"]["tool_calls"] and lines[-1]["done"]


async def test_stop_strings_end_the_reply_and_vllm_style_name_the_one_that_did(sim: Simulator) -> None:
    async with httpx.AsyncClient(base_url=sim.url, timeout=5) as http:
        body = {"model": "llama3.2", "messages": [{"role": "user", "content": "stop somewhere"}]}
        whole = (await http.post("/v1/chat/completions", json=body)).json()["choices"][0]
        stop = " " + whole["message"]["content"].split()[2]
        cut = (await http.post("/v1/chat/completions", json={**body, "stop": [stop]})).json()
        native = (await http.post("/api/chat", json={**body, "stream": False, "options": {"stop": [stop]}})).json()
    choice = cut["choices"][0]
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", stop)
    assert whole["message"]["content"].startswith(choice["message"]["content"])
    assert stop not in choice["message"]["content"] and cut["usage"]["completion_tokens"] < 12
    assert native["message"]["content"] == choice["message"]["content"] and native["done_reason"] == "stop"
