"""The Anthropic door's translations: requests to OpenAI and Ollama chat, whole answers, stream event sequences, errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import anthropic
import pytest
from anthropic.lib.streaming._messages import accumulate_event

from switchyard_gateway.services.gateway.edge.errors import (
    AuthError, BadRequest, ModelNotFound, PayloadTooLarge, UpstreamError,
)
from switchyard_gateway.services.gateway.pipeline.call import InferenceRequest
from switchyard_gateway.services.gateway.pipeline.reserve import QuotaExceeded, RateLimited
from switchyard_gateway.services.gateway.translate.anthropic_door import (
    IMAGE_TOKENS, MESSAGES, AnthropicCall, count_input_tokens, read_request,
)
from switchyard_gateway.services.gateway.translate.anthropic_requests import ollama_chat_body, openai_chat_body
from switchyard_gateway.services.gateway.translate.anthropic_responses import (
    ollama_to_message, openai_to_message, upstream_error,
)
from switchyard_gateway.services.gateway.translate.anthropic_stream import (
    OllamaStreamToAnthropic, OpenAIStreamToAnthropic,
)
from switchyard_gateway.services.gateway.edge.errors import render_for
from switchyard_gateway.services.gateway.translate.doors import Door
from switchyard_gateway.services.gateway.translate.wire import TranslationError

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def request(**fields):
    body = {"model": "claude-ish", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}], **fields}
    return read_request(MESSAGES, json.dumps(body).encode())


def to_openai(takes_top_k: bool = True, **fields) -> dict:
    return json.loads(openai_chat_body(request(**fields), "up-model", top_k=takes_top_k))


def to_ollama(**fields) -> dict:
    return json.loads(ollama_chat_body(request(**fields), "up-model"))


TOOL_ROUND_TRIP = [
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "the user wants weather", "signature": "sig"},
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
    {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "-3 C"}]},
        {"type": "text", "text": "And tomorrow?"}]},
]


# --- requests -------------------------------------------------------------------------------------

def test_system_text_and_blocks_become_the_first_system_message() -> None:
    assert to_openai(system="Be brief.")["messages"][0] == {"role": "system", "content": "Be brief."}
    blocks = [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}]
    assert to_openai(system=blocks)["messages"][0] == {"role": "system", "content": "Be brief.\nBe kind."}
    assert to_ollama(system=blocks)["messages"][0] == {"role": "system", "content": "Be brief.\nBe kind."}
    assert to_openai()["messages"] == [{"role": "user", "content": "hi"}]


def test_sampling_limits_and_metadata_are_mapped_and_top_k_only_where_the_server_takes_it() -> None:
    fields = dict(temperature=0.2, top_p=0.9, top_k=40, stop_sequences=["END", "\n\n"],
                  metadata={"user_id": "u-17"})
    out = to_openai(**fields)
    assert {k: out[k] for k in ("model", "max_tokens", "temperature", "top_p", "top_k", "stop", "user")} == {
        "model": "up-model", "max_tokens": 64, "temperature": 0.2, "top_p": 0.9, "top_k": 40,
        "stop": ["END", "\n\n"], "user": "u-17"}
    assert "top_k" not in to_openai(takes_top_k=False, **fields)          # OpenAI itself refuses unknown parameters
    assert "stream" not in out
    assert to_ollama(**fields)["options"] == {"num_predict": 64, "temperature": 0.2, "top_p": 0.9, "top_k": 40,
                                              "stop": ["END", "\n\n"]}


def test_a_stream_asks_openai_servers_for_the_usage_chunk_and_ollama_for_a_stream() -> None:
    assert to_openai(stream=True)["stream_options"] == {"include_usage": True}
    assert to_ollama(stream=True)["stream"] is True and to_ollama()["stream"] is False


def test_images_become_image_url_parts_and_ollama_base64_images() -> None:
    content = [{"type": "text", "text": "What is this?"},
               {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
               {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]
    message = to_openai(messages=[{"role": "user", "content": content}])["messages"][0]
    assert message == {"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}
    native = to_ollama(messages=[{"role": "user", "content": content[:2]}])["messages"][0]
    assert native == {"role": "user", "content": "What is this?", "images": [PNG]}
    with pytest.raises(TranslationError, match="base64"):
        to_ollama(messages=[{"role": "user", "content": content}])


def test_tool_use_and_results_become_tool_calls_and_tool_messages_in_order() -> None:
    out = to_openai(messages=TOOL_ROUND_TRIP, tools=[WEATHER])
    assert out["messages"] == [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "-3 C"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    assert out["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city", "parameters": WEATHER["input_schema"]}}]
    native = to_ollama(messages=TOOL_ROUND_TRIP, tools=[WEATHER])["messages"]
    assert native[1] == {"role": "assistant", "content": "Let me look.",
                         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]}
    assert native[2] == {"role": "tool", "content": "-3 C", "tool_name": "get_weather"}
    assert native[3] == {"role": "user", "content": "And tomorrow?"}


def test_an_assistant_turn_of_tool_calls_alone_has_null_content() -> None:
    turn = {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "get_weather", "input": {}}]}
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "-3 C"}]}
    out = to_openai(messages=[{"role": "user", "content": "go"}, turn, result], tools=[WEATHER])
    assert out["messages"][1]["content"] is None
    assert out["messages"][1]["tool_calls"][0]["function"]["arguments"] == "{}"


@pytest.mark.parametrize(("choice", "openai", "ollama_tools"), [
    ({"type": "auto"}, "auto", 2),
    ({"type": "any"}, "required", 2),
    ({"type": "tool", "name": "get_time"}, {"type": "function", "function": {"name": "get_time"}}, 1),
    ({"type": "none"}, "none", 0),
])
def test_tool_choice_is_mapped(choice: dict, openai: object, ollama_tools: int) -> None:
    tools = [WEATHER, {"name": "get_time", "input_schema": {"type": "object"}}]
    assert to_openai(tools=tools, tool_choice=choice)["tool_choice"] == openai
    assert len(to_ollama(tools=tools, tool_choice=choice).get("tools", [])) == ollama_tools
    parallel = to_openai(tools=tools, tool_choice={**choice, "disable_parallel_tool_use": True})
    assert parallel["parallel_tool_calls"] is False


@pytest.mark.parametrize(("thinking", "think"), [
    ({"type": "enabled", "budget_tokens": 1024}, None),
    ({"type": "disabled"}, False),
    ({"type": "adaptive"}, None),
    (None, None),
])
def test_thinking_asked_of_an_ollama_endpoint_is_its_think_and_nothing_to_an_openai_server(
        thinking: dict | None, think: bool | None) -> None:
    """Ollama's `/api/chat` has its own switch (`think`), sent to turn thinking off: `think: true` to a model that
    cannot think is a 400 from Ollama, so thinking asked for, or adaptive, is left to the model's default.
    OpenAI-compatible servers have no standard field."""
    fields = {"max_tokens": 2048, **({"thinking": thinking} if thinking else {})}
    assert to_ollama(**fields).get("think") == think
    assert not {"think", "thinking", "reasoning_effort"} & set(to_openai(**fields))


def test_an_answer_schema_is_each_servers_own_way_of_asking_for_it() -> None:
    """Structured outputs (`output_config.format`, or the beta's `output_format`): an OpenAI-compatible server is
    asked by `response_format`, Ollama by `format`; the same schema given both ways is one ask."""
    schema = SCHEMA["schema"]
    for fields in ({"output_config": {"format": SCHEMA, "effort": "low"}}, {"output_format": SCHEMA},
                   {"output_format": SCHEMA, "output_config": {"format": SCHEMA}}):
        assert to_openai(**fields)["response_format"] == {"type": "json_schema",
                                                          "json_schema": {"name": "output", "schema": schema}}
        assert to_ollama(**fields)["format"] == schema
    for effort in ("low", "medium", "high", "xhigh", "max"):     # Anthropic's efforts: a hint, not sent on
        assert {"response_format", "reasoning_effort"}.isdisjoint(to_openai(output_config={"effort": effort}))
    assert "format" not in to_ollama(output_config={"format": None})


# --- what the door refuses ------------------------------------------------------------------------

SCHEMA = {"type": "json_schema", "schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
# fields whose loss would change what the answer must be, and what their refusal names
UNSERVED_FIELDS = [
    ({"mcp_servers": [{"type": "url", "url": "https://mcp.example.com/sse", "name": "example"}]},
     "mcp_servers: MCP connectors"),
    ({"container": "container_011CZ"}, "container: code execution containers"),
]

CALL = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}
RESULT = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "-3 C"}
ASK = {"role": "user", "content": "Weather in Oslo?"}
UNANSWERED = "`tool_use` ids were found without `tool_result` blocks immediately after: "
# what Anthropic refuses that the door accepted (and sent on, or reordered), and what its refusal names
ANTHROPIC_REFUSES = [
    ([ASK, {"role": "assistant", "content": [CALL]}, {"role": "user", "content": "and?"}],
     f"messages.1: {UNANSWERED}toolu_1."),
    ([ASK, {"role": "assistant", "content": [CALL, {**CALL, "id": "toolu_2"}]}, {"role": "user", "content": [RESULT]}],
     f"messages.1: {UNANSWERED}toolu_2."),
    ([ASK, {"role": "assistant", "content": [CALL]}], f"messages.1: {UNANSWERED}toolu_1."),     # the last turn too
    ([ASK, {"role": "assistant", "content": [CALL]}, {"role": "assistant", "content": "Done."}],
     f"messages.1: {UNANSWERED}toolu_1."),
    ([ASK, {"role": "assistant", "content": [CALL, CALL]}, {"role": "user", "content": [RESULT]}],
     "messages.1.content.1: `tool_use` ids must be unique"),
    ([ASK, {"role": "assistant", "content": [CALL]}, {"role": "user", "content": [{"type": "text", "text": "Here:"},
                                                                               RESULT]}],
     "messages.2.content.1: tool_result blocks must come FIRST in the content array"),
    ([{"role": "user", "content": " \n\t"}], "messages.0: text content blocks must contain non-whitespace text"),
    ([{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "  "}]}],
     "messages.0.content.1: text content blocks must contain non-whitespace text"),
    ([ASK, {"role": "assistant", "content": [CALL]},
      {"role": "user", "content": [{**RESULT, "content": [{"type": "text", "text": "\n"}]}]}],
     "messages.2.content.0.content.0: text content blocks must contain non-whitespace text"),
    ([ASK, {"role": "assistant", "content": "The weather is "}],
     "messages.1: final assistant content cannot end with trailing whitespace"),
    ([ASK, {"role": "assistant", "content": [{"type": "text", "text": "It is\n"}]}],
     "messages.1: final assistant content cannot end with trailing whitespace"),
]
# request fields given otherwise than Anthropic takes them, and what the refusal names
ANTHROPIC_REFUSES_FIELDS = [
    ({"system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": " "}]},
     "system.1: text content blocks must contain non-whitespace text"),
    ({"system": [{"type": "text", "text": ""}]}, "system.0: text content blocks must be non-empty"),
    ({"tools": [{"name": "get_weather"}]}, "tools.0.input_schema: Field required"),
    ({"tools": [{"name": "get_weather", "input_schema": {"type": "string"}}]},
     "tools.0.input_schema.type: Input should be 'object'"),
    ({"tools": [{"name": "get_weather", "input_schema": {"properties": {}}}]},
     "tools.0.input_schema.type: Input should be 'object'"),
    ({"messages": [ASK, {"role": "assistant", "content": [{k: v for k, v in CALL.items() if k != "input"}]},
                   {"role": "user", "content": [RESULT]}]}, "Missing required field 'messages[1].content[0].input'"),
    ({"thinking": "yes"}, "Invalid 'thinking'"),
    ({"thinking": {"type": "sometimes"}}, "Invalid 'thinking.type'"),
    ({"thinking": {"type": "enabled"}}, "Missing required field 'thinking.budget_tokens'"),
    ({"thinking": {"type": "enabled", "budget_tokens": 1023}, "max_tokens": 4096},
     "Invalid 'thinking.budget_tokens': Expected `int` >= 1024"),
    ({"thinking": {"type": "enabled", "budget_tokens": 2048}, "max_tokens": 2048},
     "thinking.budget_tokens: must be less than max_tokens"),
    ({"service_tier": "priority"}, "Invalid 'service_tier'"),
    ({"cache_control": {"type": "persistent"}}, "Invalid 'cache_control.type'"),
    ({"system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral", "ttl": "2h"}}]},
     "Invalid 'system[0].cache_control.ttl'"),
    ({"tools": [{**WEATHER, "cache_control": {"ttl": "5m"}}]}, "Missing required field 'tools[0].cache_control.type'"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": "ephemeral"}]}]},
     "Invalid 'messages[0].content[0].cache_control'"),
    ({"metadata": {"user_id": "u" * 257}}, "Invalid 'metadata.user_id'"),
    ({"metadata": {"user_id": "u-17", "session_id": "s-1"}}, "Invalid 'metadata.session_id'"),
]


@pytest.mark.parametrize(("body", "expected"), [
    *[({"model": "m", "max_tokens": 5, "messages": messages}, needle) for messages, needle in ANTHROPIC_REFUSES],
    *[({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], **fields}, needle)
      for fields, needle in ANTHROPIC_REFUSES_FIELDS],
    ({"model": "m", "messages": []}, "max_tokens: Field required"),
    ({"model": "m", "max_tokens": 0, "messages": []}, "max_tokens"),
    ({"model": "m", "max_tokens": 5, "temperature": 1.5, "messages": []}, "temperature"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "role"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document", "source": {
        "type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}]}]}, "PDF documents are not served"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "search_result"}]}]},
     "search_result"),
    ({"model": "m", "max_tokens": 5, "messages": [], "tools": [{"type": "web_search_20250305", "name": "web"}]},
     "server tool"),
    ({"model": "m", "max_tokens": 5, "messages": [], "tools": [WEATHER], "tool_choice": {"type": "tool", "name": "x"}},
     "no tool named 'x'"),
    ({"model": "m", "max_tokens": 5, "messages": []}, "at least one message is required"),
    *[({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": content}]}, needle)
      for content, needle in (("", "non-empty content"), ([], "non-empty content"),
                              ([{"type": "text", "text": ""}], "text content blocks must be non-empty"),
                              ([{"type": "tool_result", "tool_use_id": "t1", "content": "x"}], "does not hold"),
                              ([{"type": "tool_use", "id": "t1", "name": "f", "input": {}}], "assistant messages"),
                              ([{"type": "image", "source": {"type": "base64", "media_type": "text/html",
                                                             "data": "PGI+"}}], "media_type"))],
    ({"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "x"}]}]},
     "user messages"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER, WEATHER]},
     "must be unique"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
      "tools": [{**WEATHER, "name": "a b/c!"}]}, "tools.0.name"),
    *[({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "tool_choice": choice}, needle)
      for choice, needle in (({"type": "any"}, "'any' may only be given with tools"),
                             ({"type": "tool", "name": "get_weather"}, "'tool' may only be given with tools"))],
    *[({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], **field}, needle)
      for field, needle in UNSERVED_FIELDS],
    *[({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], **field}, needle)
      for field, needle in (
          ({"output_config": {"format": {"type": "json_object"}}}, "output_config.format.type"),
          ({"output_config": {"format": {"type": "json_schema"}}}, "schema"),
          ({"output_config": {"format": {"type": "json_schema", "schema": "an object"}}},
           "output_config.format.schema"),
          ({"output_format": SCHEMA, "output_config": {"format": {**SCHEMA, "schema": {"type": "object"}}}},
           "output_format: give the answer's format once"),
          ({"output_config": {"effort": "extreme"}}, "output_config.effort"),
          *(({"thread": thread}, "thread: message threads are not served") for thread in (
              {"type": "create"}, {"type": "continue", "previous_message_id": "msg_1"}, "t", 7, True, 0, "", {})),
          ({"output_config": {"effort": 3}}, "output_config.effort"))],
])
def test_bad_requests_are_refused_with_an_invalid_request_error(body: dict, expected: str) -> None:
    with pytest.raises(BadRequest) as refused:
        Door("/v1/messages", InferenceRequest(model="m"), json.dumps(body).encode())
    assert expected in str(refused.value)
    rendered = json.loads(render_for("/v1/messages", refused.value))
    assert rendered == {"type": "error", "error": {"type": "invalid_request_error", "message": str(refused.value),
                                                   **refused.value.details}}


def test_what_anthropic_takes_is_taken_and_what_only_concerns_anthropic_is_not_sent_on() -> None:
    """Thinking of each type, prompt-cache breakpoints wherever they may be, a service tier, a user id of 256
    characters and a prefill are accepted; tool results may be followed by the turn's text."""
    cached = {"cache_control": {"type": "ephemeral", "ttl": "1h"}}
    messages = [ASK, {"role": "assistant", "content": [{**CALL, **cached}]},
                {"role": "user", "content": [{**RESULT, **cached}, {"type": "text", "text": "In Celsius", **cached}]},
                {"role": "assistant", "content": "It is"}]
    for thinking in ({"type": "enabled", "budget_tokens": 1024}, {"type": "disabled"}, {"type": "adaptive"}):
        sent = to_openai(messages=messages, thinking=thinking, max_tokens=1025, service_tier="standard_only",
                         system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
                         tools=[{**WEATHER, **cached}], cache_control={"type": "ephemeral", "ttl": "5m"},
                         metadata={"user_id": "u" * 256})
        assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "tool", "user", "assistant"]
        assert not {"thinking", "service_tier", "cache_control", "metadata"} & set(sent)
    counted = AnthropicCall("anthropic.count_tokens", InferenceRequest(model="m"), json.dumps(
        {"model": "m", "messages": [ASK], "thinking": {"type": "adaptive"}}).encode())
    assert json.loads(counted.count_tokens(len))["input_tokens"] > 0


def test_a_conversation_of_the_doors_own_answers_sent_back_is_taken() -> None:
    """A local model's whitespace before its tool call (relayed as a text block) and an upstream's tool-call id used
    again in a later answer (`call_0`) came back from the client as the door wrote them, and were refused: the
    conversation could not go on. A repeated id within one turn, and whitespace in a user's turn, still are."""
    call = {**CALL, "id": "call_0"}
    result = {**RESULT, "tool_use_id": "call_0"}
    messages = [ASK, {"role": "assistant", "content": [{"type": "text", "text": "\n\n"}, call]},
                {"role": "user", "content": [result]}, {"role": "assistant", "content": [call]},
                {"role": "user", "content": [result, {"type": "text", "text": "Thanks"}]}]
    sent = to_openai(messages=messages)
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool", "assistant", "tool", "user"]


def test_a_system_turn_partway_through_is_a_system_message_where_it_stands() -> None:
    """Claude Code gives instructions partway through a conversation as `system` role messages (after the user's
    first turn: the agents it may call, the files it read); they were refused, and no call could be made. Each is
    sent on where it stands, as each kind of server takes a system message, and counted as prompt."""
    messages = [ASK, {"role": "system", "content": "Answer in Celsius."},
                {"role": "assistant", "content": [CALL]}, {"role": "user", "content": [RESULT]},
                {"role": "system", "content": [{"type": "text", "text": "Be brief.", "cache_control": {
                    "type": "ephemeral"}}, {"type": "text", "text": "Cite the source."}]}]
    for sent in (to_openai(messages=messages, tools=[WEATHER]), to_ollama(messages=messages, tools=[WEATHER])):
        roles = [(m["role"], m["content"]) for m in sent["messages"] if m["role"] in ("system", "user")]
        assert roles == [("user", "Weather in Oslo?"), ("system", "Answer in Celsius."),
                         ("system", "Be brief.\nCite the source.")]
        assert sent["messages"][-1]["role"] == "system"
    body = {"model": "m", "messages": messages, "tools": [WEATHER]}
    words = lambda text: len(text.split())  # noqa: E731 — a stand-in tokenizer whose counts are easy to check
    without = {**body, "messages": [m for m in messages if m["role"] != "system"]}
    counts = [json.loads(AnthropicCall("anthropic.count_tokens", InferenceRequest(model="m"), json.dumps(b).encode())
                         .count_tokens(words))["input_tokens"] for b in (body, without)]
    assert counts[0] - counts[1] == 2 * 3 + 3 + 2 + 3      # two more messages, and their words


@pytest.mark.parametrize(("messages", "expected"), [
    ([{"role": "system", "content": "Be brief."}, ASK],
     "messages.0: the conversation may not open with a `system` role message"),
    ([ASK, {"role": "system", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                         "data": PNG}}]}],
     "messages.1.content.0: system messages may only hold text blocks"),
    ([ASK, {"role": "system", "content": " \n"}], "messages.1: text content blocks must contain non-whitespace text"),
    ([ASK, {"role": "system", "content": [{"type": "text", "text": ""}]}],
     "messages.1.content.0: text content blocks must be non-empty"),
    ([ASK, {"role": "assistant", "content": [CALL]}, {"role": "system", "content": "Be brief."},
      {"role": "user", "content": [RESULT]}], "messages.1: `tool_use` ids were found without `tool_result` blocks"),
])
def test_a_system_turn_that_opens_the_conversation_or_holds_more_than_text_is_refused(messages: list,
                                                                                      expected: str) -> None:
    with pytest.raises(BadRequest) as refused:
        request(messages=messages)
    assert expected in str(refused.value)


def test_fields_it_does_not_know_or_that_only_hint_are_ignored() -> None:
    """Newer clients send fields the door has never seen; refusing them would break them. Only the fields whose loss
    changes the answer are refused (see the refusals above); given as null or empty, they ask for nothing."""
    fields = {"a_field_from_next_year": {"x": 1}, "service_tier": "auto", "output_config": {"effort": "low"},
              "output_format": None, "mcp_servers": [], "container": None}
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], **fields}
    call = AnthropicCall(MESSAGES, InferenceRequest(model="m"), json.dumps(body).encode())
    _, sent = call.plan("openai-compatible").request(json.dumps(body).encode(), "up-model", None)
    assert json.loads(sent) == {"model": "up-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.mark.parametrize(("content", "text"), [
    ("timed out after 30 s", "Error: timed out after 30 s"),
    ([{"type": "text", "text": "no such city"}], "Error: no such city"),
    (None, "Error"),
    ("", "Error"),
])
def test_a_failed_tool_result_says_so_in_its_tool_message(content: object, text: str) -> None:
    """A `tool_result` with `is_error: true` reached the upstream as a plain tool message (with no content as an
    empty string), so the model could not tell the tool had failed."""
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
              **({} if content is None else {"content": content})}
    messages = [*TOOL_ROUND_TRIP[:2], {"role": "user", "content": [result]}]
    assert to_openai(messages=messages, tools=[WEATHER])["messages"][2] == {
        "role": "tool", "tool_call_id": "toolu_1", "content": text}
    assert to_ollama(messages=messages, tools=[WEATHER])["messages"][2] == {
        "role": "tool", "content": text, "tool_name": "get_weather"}
    fine = {**result, "is_error": False, "content": "-3 C"}
    assert to_openai(messages=[*TOOL_ROUND_TRIP[:2], {"role": "user", "content": [fine]}],
                     tools=[WEATHER])["messages"][2]["content"] == "-3 C"


def test_count_tokens_does_not_need_max_tokens_and_counts_every_part() -> None:
    body = {"model": "m", "system": "Be brief.", "tools": [WEATHER], "messages": [
        *TOOL_ROUND_TRIP,
        {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                    "data": PNG}}]}]}
    call = AnthropicCall("anthropic.count_tokens", InferenceRequest(model="m"), json.dumps(body).encode())
    words = lambda text: len(text.split())  # noqa: E731 — a stand-in tokenizer whose counts are easy to check
    counted = json.loads(call.count_tokens(words))["input_tokens"]
    texts = ["Be brief.", "Weather in Oslo?", "Let me look.", "toolu_1", "get_weather", '{"city":"Oslo"}', "toolu_1",
             "-3 C", "And tomorrow?",
             "get_weather", "The weather in a city", json.dumps(WEATHER["input_schema"], separators=(",", ":"))]
    assert counted == 3 + 3 * 5 + sum(words(t) for t in texts) + IMAGE_TOKENS
    assert count_input_tokens(call.request, words) == counted


@pytest.mark.parametrize("api", ["anthropic.count_tokens", MESSAGES])
@pytest.mark.parametrize("given", ["output_config", "output_format"])
def test_the_schema_an_answer_must_follow_is_counted_as_prompt(api: str, given: str) -> None:
    """Servers bill a structured output's schema as prompt (it is in the grammar, or the template): the quota hold
    and `count_tokens` count it, as the chat door counts `response_format`."""
    schema = {"type": "object", "properties": {"verdict": {"type": "string", "enum": ["yes", "no", "maybe so"]}}}
    fields = {"output_config": {"format": {"type": "json_schema", "schema": schema}}} if given == "output_config" \
        else {"output_format": {"type": "json_schema", "schema": schema}}
    plain = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    words = lambda text: len(text.split())  # noqa: E731
    counts = [count_input_tokens(AnthropicCall(api, InferenceRequest(model="m"), json.dumps(body).encode()).request,
                                 words) for body in (plain, {**plain, **fields})]
    assert counts[1] - counts[0] == words(json.dumps(schema, separators=(",", ":"))) == 2


# --- whole answers --------------------------------------------------------------------------------

def openai_answer(message: dict, finish: str, **choice) -> bytes:
    return json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "up",
                       "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}],
                       "usage": {"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37,
                                 "prompt_tokens_details": {"cached_tokens": 20}}}).encode()


def test_a_text_answer_becomes_a_message_with_anthropic_usage() -> None:
    message = json.loads(openai_to_message(openai_answer({"role": "assistant", "content": "Hello."}, "stop"),
                                           "claude-ish"))
    assert message["id"].startswith("msg_") and message["type"] == "message" and message["role"] == "assistant"
    assert message["model"] == "claude-ish"
    assert message["content"] == [{"type": "text", "text": "Hello."}]
    assert (message["stop_reason"], message["stop_sequence"]) == ("end_turn", None)
    assert message["usage"] == {"input_tokens": 10, "output_tokens": 7, "cache_read_input_tokens": 20}


def test_tool_calls_become_tool_use_blocks() -> None:
    call = {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    answer = openai_answer({"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls")
    message = json.loads(openai_to_message(answer, "m"))
    assert message["content"] == [{"type": "tool_use", "id": "call_9", "name": "get_weather",
                                   "input": {"city": "Oslo"}}]
    assert message["stop_reason"] == "tool_use"


@pytest.mark.parametrize(("finish", "matched", "reason", "sequence"), [
    ("length", None, "max_tokens", None),
    ("stop", "END", "stop_sequence", "END"),           # vLLM says which stop string ended the answer
    ("stop", "NOT-ASKED", "end_turn", None),
    ("stop", 128009, "end_turn", None),                # an end-of-sequence token id, not a stop string
    ("content_filter", None, "refusal", None),
])
def test_stop_reasons_are_mapped(finish: str, matched: object, reason: str, sequence: str | None) -> None:
    answer = openai_answer({"role": "assistant", "content": "text"}, finish, stop_reason=matched)
    message = json.loads(openai_to_message(answer, "m", ["END"]))
    assert (message["stop_reason"], message["stop_sequence"]) == (reason, sequence)


def test_an_ollama_answer_becomes_a_message() -> None:
    answer = json.dumps({"model": "up", "created_at": "2025-01-01T00:00:00Z", "done": True, "done_reason": "stop",
                         "message": {"role": "assistant", "content": "",
                                     "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
                         "prompt_eval_count": 12, "eval_count": 4}).encode()
    message = json.loads(ollama_to_message(answer, "m"))
    [block] = message["content"]
    assert block["type"] == "tool_use" and block["id"].startswith("toolu_") and block["input"] == {"city": "Oslo"}
    assert message["stop_reason"] == "tool_use"
    assert message["usage"] == {"input_tokens": 12, "output_tokens": 4}
    long = json.loads(ollama_to_message(json.dumps({"message": {"content": "so"}, "done": True,
                                                    "done_reason": "length"}).encode(), "m"))
    assert long["stop_reason"] == "max_tokens" and long["content"] == [{"type": "text", "text": "so"}]


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_under_either_name_is_a_thinking_block_before_the_text(field: str) -> None:
    """vLLM's and DeepSeek's `reasoning_content`, Ollama's and OpenRouter's `reasoning`: the answer's reasoning was
    dropped; it is a `thinking` block (its signature empty: no upstream signs it) before the text now."""
    answer = openai_answer({"role": "assistant", "content": "42", field: "6 times 7"}, "stop")
    message = json.loads(openai_to_message(answer, "m"))
    assert message["content"] == [{"type": "thinking", "thinking": "6 times 7", "signature": ""},
                                  {"type": "text", "text": "42"}]
    parsed = anthropic.types.Message.model_validate(message)
    assert [block.type for block in parsed.content] == ["thinking", "text"]


def test_reasoning_before_tool_calls_is_a_thinking_block_before_the_tool_use_blocks() -> None:
    call = {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    answer = openai_answer({"role": "assistant", "content": None, "reasoning_content": "I need the weather.",
                            "tool_calls": [call]}, "tool_calls")
    message = json.loads(openai_to_message(answer, "m"))
    assert message["content"] == [
        {"type": "thinking", "thinking": "I need the weather.", "signature": ""},
        {"type": "tool_use", "id": "call_9", "name": "get_weather", "input": {"city": "Oslo"}}]
    assert message["stop_reason"] == "tool_use"


def test_an_ollama_answers_thinking_is_a_thinking_block_before_its_text_and_tool_calls() -> None:
    answer = json.dumps({"model": "up", "done": True, "done_reason": "stop", "message": {
        "role": "assistant", "content": "Looking.", "thinking": "Oslo, so the weather tool.",
        "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]}}).encode()
    message = json.loads(ollama_to_message(answer, "m"))
    assert [block["type"] for block in message["content"]] == ["thinking", "text", "tool_use"]
    assert message["content"][0] == {"type": "thinking", "thinking": "Oslo, so the weather tool.", "signature": ""}
    plain = json.loads(ollama_to_message(json.dumps({"message": {"content": "hi", "thinking": None},
                                                     "done": True}).encode(), "m"))
    assert plain["content"] == [{"type": "text", "text": "hi"}]


# --- streams --------------------------------------------------------------------------------------

def sse(obj) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


def chunk(delta: dict | None = None, finish: str | None = None, **extra) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, **extra}]
    return sse({"id": "c", "object": "chat.completion.chunk", "created": 1, "choices": choices})


USAGE = sse({"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}})


def tool_delta(**fields) -> dict:
    return {"tool_calls": [{"index": 0, **fields}]}


TOOL_STREAM = b"".join([
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Checking"}), chunk({"content": " now."}),
    chunk(tool_delta(id="call_1", type="function", function={"name": "get_weather", "arguments": ""})),
    chunk(tool_delta(function={"arguments": '{"city":'})), chunk(tool_delta(function={"arguments": ' "Oslo"}'})),
    chunk({}, "tool_calls"), USAGE, sse(b"[DONE]"),
])


def relay(tap, data: bytes, size: int) -> list[tuple[str, dict]]:
    out = b"".join(tap.feed(data[i:i + size]) for i in range(0, len(data), size))
    assert tap.done
    return events(out + tap.finish())


def events(raw: bytes) -> list[tuple[str, dict]]:
    parsed = []
    for block in raw.decode().split("\n\n"):
        if block:
            name, data = block.split("\n")
            assert name.startswith("event: ") and data.startswith("data: ")
            payload = json.loads(data[6:])
            assert payload["type"] == name[7:]
            parsed.append((name[7:], payload))
    return parsed


def final_message(parsed: list[tuple[str, dict]]):
    """What the official SDK's stream helper builds from these events (`get_final_message()`)."""
    snapshot, json_bufs = None, {}
    for _, event in parsed:
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
    return snapshot


@pytest.mark.parametrize("size", [1, 9, 64, len(TOOL_STREAM)])
def test_a_stream_with_text_and_a_tool_call_is_anthropics_event_sequence(size: int) -> None:
    parsed = relay(OpenAIStreamToAnthropic("claude-ish"), TOOL_STREAM, size)
    assert [name for name, _ in parsed] == [
        "message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta",
        "content_block_stop", "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop"]
    assert parsed[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert parsed[6][1]["content_block"] == {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}
    assert parsed[7][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"city":"Oslo"}'}
    assert parsed[9][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert parsed[9][1]["usage"] == {"output_tokens": 9, "input_tokens": 30}
    message = final_message(parsed)
    assert message.content[0].text == "Checking now."
    assert message.content[1].input == {"city": "Oslo"} and message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens, message.model) == (30, 9, "claude-ish")


def call_delta(index: int, **fields) -> dict:
    return {"tool_calls": [{"index": index, **fields}]}


INTERLEAVED = b"".join([
    chunk({"role": "assistant", "content": None}),
    chunk(call_delta(0, id="call_a", type="function", function={"name": "get_weather", "arguments": '{"ci'})),
    chunk(call_delta(1, id="call_b", type="function", function={"name": "get_time", "arguments": '{"tz":'})),
    chunk(call_delta(0, function={"arguments": 'ty": "Oslo"}'})),
    chunk(call_delta(2, id="call_c", type="function", function={"name": "get_weather", "arguments": ""})),
    chunk(call_delta(1, function={"arguments": ' "UTC"}'})),
    chunk(call_delta(2, function={"arguments": '{"city": "Rome"}'})),
    chunk({}, "tool_calls"), USAGE, sse(b"[DONE]"),
])


@pytest.mark.parametrize("size", [1, 17, len(INTERLEAVED)])
def test_parallel_tool_calls_whose_arguments_interleave_are_written_one_block_after_another(size: int) -> None:
    """An upstream may send the argument pieces of parallel calls in turns (0, 1, 0); Anthropic's blocks come one
    after another. Before, the first call's block was closed when the second began and its later pieces went to a
    closed block (a tool run at its block's stop got no arguments); now each call is kept until its block's turn
    and written whole, in the order the calls began."""
    parsed = relay(OpenAIStreamToAnthropic("m"), INTERLEAVED, size)
    open_blocks: set[int] = set()
    inputs: dict[int, str] = {}
    for name, event in parsed:
        if name == "content_block_start":
            assert not open_blocks, "a block started while another was open"
            open_blocks.add(event["index"])
            inputs[event["index"]] = ""
        elif name == "content_block_delta":
            assert event["index"] in open_blocks, "a piece went to a block not open"
            inputs[event["index"]] += event["delta"]["partial_json"]
        elif name == "content_block_stop":
            open_blocks.remove(event["index"])
    assert not open_blocks
    starts = [e["content_block"] for name, e in parsed if name == "content_block_start"]
    assert [(b["id"], b["name"]) for b in starts] == [("call_a", "get_weather"), ("call_b", "get_time"),
                                                      ("call_c", "get_weather")]
    assert [json.loads(inputs[i]) for i in range(3)] == [{"city": "Oslo"}, {"tz": "UTC"}, {"city": "Rome"}]
    message = final_message(parsed)
    assert [block.input for block in message.content] == [{"city": "Oslo"}, {"tz": "UTC"}, {"city": "Rome"}]
    assert message.stop_reason == "tool_use"


def blocks(parsed: list[tuple[str, dict]]) -> list[dict]:
    """The content blocks a stream wrote, each with its pieces joined, checked as Anthropic's grammar has them: one
    block open at a time, and every delta to the open one."""
    open_block: int | None = None
    written: list[dict] = []
    for name, event in parsed:
        if name == "content_block_start":
            assert open_block is None, "a block started while another was open"
            open_block = event["index"]
            assert open_block == len(written)
            written.append({**event["content_block"], "pieces": ""})
        elif name == "content_block_delta":
            assert event["index"] == open_block, "a piece went to a block not open"
            delta = event["delta"]
            written[open_block]["pieces"] += delta.get("text") or delta.get("partial_json") or delta.get("thinking") \
                or ""
        elif name == "content_block_stop":
            assert event["index"] == open_block
            open_block = None
    assert open_block is None
    return written


@pytest.mark.parametrize(("pieces", "expected"), [
    (["{not json"], {"arguments": "{not json"}),
    (["[1,", "2]"], {"arguments": [1, 2]}),
    (['"Oslo"'], {"arguments": "Oslo"}),
    (["", ""], {}),
    (['{"city":', ' "Oslo"}'], {"city": "Oslo"}),
])
def test_streamed_tool_arguments_are_the_object_a_whole_answer_gives(pieces: list[str], expected: dict) -> None:
    """A streamed call's arguments were relayed as the upstream wrote them: `{not json` made the official SDK raise
    mid-stream (`Unable to parse tool parameter JSON`) and `[1,2]` gave a list as `tool_use.input`, while a whole
    answer reads them with `wire.tool_arguments` (always an object). A stream writes that object now, as one
    `input_json_delta`, or none when it is empty."""
    stream = b"".join([
        chunk({"role": "assistant"}),
        *(chunk(tool_delta(**({"id": "call_1", "type": "function"} if n == 0 else {}),
                           function={"arguments": piece, **({"name": "get_weather"} if n == 0 else {})}))
          for n, piece in enumerate(pieces)),
        chunk({}, "tool_calls"), USAGE, sse(b"[DONE]")])
    parsed = relay(OpenAIStreamToAnthropic("m"), stream, 7)
    [block] = blocks(parsed)
    assert (block["type"], block["id"], block["name"]) == ("tool_use", "call_1", "get_weather")
    assert block["pieces"] == ("" if not expected else json.dumps(expected, separators=(",", ":")))
    message = final_message(parsed)
    assert message.content[0].input == expected and message.stop_reason == "tool_use"
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "".join(pieces)}}
    whole = json.loads(openai_to_message(openai_answer({"role": "assistant", "content": None, "tool_calls": [call]},
                                                       "tool_calls"), "m"))
    assert whole["content"][0]["input"] == expected


def test_a_tool_name_that_comes_after_the_calls_first_piece_is_kept() -> None:
    """A server that sends a call's id first and its name in a later piece gave `content_block_start` with
    `name: ""`: the block began at the first piece. It begins once the call is whole now."""
    stream = b"".join([
        chunk({"role": "assistant"}),
        chunk(tool_delta(id="call_1", type="function", function={"name": "", "arguments": ""})),
        chunk(tool_delta(function={"name": "get_weather", "arguments": '{"city":'})),
        chunk(tool_delta(function={"arguments": ' "Paris"}'})),
        chunk({}, "tool_calls"), USAGE, sse(b"[DONE]")])
    parsed = relay(OpenAIStreamToAnthropic("m"), stream, 11)
    [block] = blocks(parsed)
    assert (block["id"], block["name"], json.loads(block["pieces"])) == ("call_1", "get_weather", {"city": "Paris"})


@pytest.mark.parametrize("between", [{"content": "One moment."}, {"reasoning_content": "One moment."}])
def test_a_calls_arguments_split_by_text_or_reasoning_reach_its_block_whole(between: dict) -> None:
    """A server may write text or reasoning between two pieces of one call's arguments. The call was written when
    that came, and the rest of its arguments dropped (`{"ci`, then `{"arguments": ...}`); it is written at the end
    now, whole, after what came meanwhile."""
    stream = b"".join([
        chunk({"role": "assistant", "content": "Let me look."}),
        chunk(tool_delta(id="call_1", type="function", function={"name": "get_weather", "arguments": '{"ci'})),
        chunk(between),
        chunk(tool_delta(function={"arguments": 'ty": "Oslo"}'})),
        chunk({}, "tool_calls"), USAGE, sse(b"[DONE]")])
    parsed = relay(OpenAIStreamToAnthropic("m", thinking=True), stream, 5)
    kind = "text" if "content" in between else "thinking"
    assert [(b["type"], b["pieces"]) for b in blocks(parsed)] == [
        ("text", "Let me look."), (kind, "One moment."), ("tool_use", '{"city":"Oslo"}')]
    assert final_message(parsed).stop_reason == "tool_use"


def test_a_new_call_under_a_written_calls_index_is_a_call_of_its_own() -> None:
    """A server may number the calls after a text run from 0 again; the new id says it is another call."""
    stream = b"".join([
        chunk(tool_delta(id="call_1", type="function", function={"name": "get_weather", "arguments": '{"city": "A"}'})),
        chunk({"content": "And the next."}),
        chunk(tool_delta(id="call_2", type="function", function={"name": "get_time", "arguments": "{}"})),
        chunk({}, "tool_calls"), USAGE, sse(b"[DONE]")])
    written = blocks(relay(OpenAIStreamToAnthropic("m"), stream, 13))
    assert [(b["type"], b.get("id"), b.get("name"), b["pieces"]) for b in written] == [
        ("text", None, None, "And the next."), ("tool_use", "call_1", "get_weather", '{"city":"A"}'),
        ("tool_use", "call_2", "get_time", "")]


@pytest.mark.parametrize(("finish", "extra", "reason", "sequence"), [
    ("stop", {}, "end_turn", None),
    ("length", {}, "max_tokens", None),
    ("stop", {"stop_reason": "END"}, "stop_sequence", "END"),
])
def test_a_text_stream_ends_with_the_mapped_stop_reason(finish: str, extra: dict, reason: str,
                                                        sequence: str | None) -> None:
    stream = chunk({"role": "assistant"}) + chunk({"content": "Hi"}) + chunk({}, finish, **extra) + USAGE \
        + sse(b"[DONE]")
    parsed = relay(OpenAIStreamToAnthropic("m", ["END"]), stream, 5)
    assert parsed[-2][1]["delta"] == {"stop_reason": reason, "stop_sequence": sequence}


def test_a_stream_without_usage_reports_what_it_relayed() -> None:
    stream = chunk({"content": "abcd"}) + chunk({"content": "e"}) + chunk({}, "stop") + sse(b"[DONE]")
    tap = OpenAIStreamToAnthropic("m", input_tokens=9)
    parsed = relay(tap, stream, 7)
    assert tap.usage is None and tap.content_events == 2             # 5 bytes written, a token per 4
    assert parsed[-2][1]["usage"] == {"output_tokens": 2, "input_tokens": 9}


def test_an_empty_answer_still_pings_and_ends() -> None:
    parsed = relay(OpenAIStreamToAnthropic("m"), chunk({}, "stop") + USAGE + sse(b"[DONE]"), 100)
    assert [name for name, _ in parsed] == ["message_start", "ping", "message_delta", "message_stop"]


def test_an_error_inside_the_stream_becomes_an_error_event_and_nothing_follows() -> None:
    tap = OpenAIStreamToAnthropic("m")
    out = tap.feed(chunk({"content": "a"}) + sse({"error": {"message": "model crashed", "type": "server_error"}})
                   + chunk({"content": "b"}))
    parsed = events(out + tap.finish())
    assert parsed[-1] == ("error", {"type": "error", "error": {"type": "api_error", "message": "model crashed"}})


@pytest.mark.parametrize(("error", "kind"), [
    ({"message": "context too long", "type": "invalid_request_error", "code": 400}, "invalid_request_error"),
    ({"message": "slow down", "type": "server_error", "code": "429"}, "rate_limit_error"),
    ({"message": "no such model", "type": "not_found_error"}, "not_found_error"),
    ({"message": "model crashed", "type": "server_error", "code": True}, "api_error"),
])
def test_an_upstream_error_inside_a_stream_keeps_the_type_its_status_stands_for(error: dict, kind: str) -> None:
    """An upstream's refusal inside its stream (`code: 400`) ended the stream with an `error` event of type
    `api_error`, whatever it said; the event's type is the one its code, or its type when Anthropic has that
    name, stands for."""
    tap = OpenAIStreamToAnthropic("m")
    parsed = events(tap.feed(sse({"error": error})) + tap.finish())
    assert [name for name, _ in parsed] == ["message_start", "error"]
    assert parsed[-1][1]["error"] == {"type": kind, "message": error["message"]}


def test_an_ollama_stream_with_a_tool_call_is_anthropics_event_sequence() -> None:
    lines = [
        {"message": {"role": "assistant", "content": "Sure"}, "done": False},
        {"message": {"role": "assistant", "content": "",
                     "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
         "done": False},
        {"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
         "prompt_eval_count": 21, "eval_count": 6, "prompt_eval_cached_count": 8},
    ]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    tap = OllamaStreamToAnthropic("m")
    parsed = relay(tap, data, 11)
    assert [name for name, _ in parsed] == [
        "message_start", "content_block_start", "ping", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert parsed[-2][1]["usage"] == {"output_tokens": 6, "input_tokens": 13, "cache_read_input_tokens": 8}
    message = final_message(parsed)
    assert message.content[1].input == {"city": "Oslo"} and message.stop_reason == "tool_use"
    assert tap.usage == (21, 6, 8)


REASONING_STREAM = b"".join([
    chunk({"role": "assistant", "content": ""}),
    chunk({"reasoning_content": "6 times"}), chunk({"reasoning_content": " 7"}),
    chunk({"content": "4"}), chunk({"content": "2"}),
    chunk({}, "stop"), USAGE, sse(b"[DONE]"),
])


@pytest.mark.parametrize("size", [1, 13, len(REASONING_STREAM)])
def test_a_stream_of_reasoning_then_text_is_a_thinking_block_then_a_text_block(size: int) -> None:
    """Anthropic's order: the thinking block's deltas, an empty `signature_delta`, its stop; the text at the next
    index. The reasoning deltas were dropped."""
    parsed = relay(OpenAIStreamToAnthropic("m"), REASONING_STREAM, size)
    assert [(name, event.get("index")) for name, event in parsed] == [
        ("message_start", None), ("content_block_start", 0), ("ping", None),
        ("content_block_delta", 0), ("content_block_delta", 0), ("content_block_delta", 0), ("content_block_stop", 0),
        ("content_block_start", 1), ("content_block_delta", 1), ("content_block_delta", 1), ("content_block_stop", 1),
        ("message_delta", None), ("message_stop", None)]
    assert parsed[1][1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert [parsed[i][1]["delta"] for i in (3, 4, 5)] == [
        {"type": "thinking_delta", "thinking": "6 times"}, {"type": "thinking_delta", "thinking": " 7"},
        {"type": "signature_delta", "signature": ""}]
    assert parsed[7][1]["content_block"] == {"type": "text", "text": ""}
    message = final_message(parsed)
    assert [(block.type, getattr(block, "thinking", None) or block.text) for block in message.content] == [
        ("thinking", "6 times 7"), ("text", "42")]
    assert message.content[0].signature == ""


def test_reasoning_text_and_tool_calls_that_interleave_keep_consecutive_indices() -> None:
    """Reasoning under either name, text, a tool call, more reasoning, text: one block each, indices 0 to 4, the
    call written at the end."""
    stream = b"".join([
        chunk({"role": "assistant", "reasoning": "First the weather."}),
        chunk({"content": "Let me look."}),
        chunk(tool_delta(id="call_1", type="function", function={"name": "get_weather", "arguments": '{"city": "A"}'})),
        chunk({"reasoning_content": "Now the time."}),
        chunk({"reasoning_content": " Done.", "content": "Both asked."}),
        chunk({}, "tool_calls"), USAGE, sse(b"[DONE]")])
    parsed = relay(OpenAIStreamToAnthropic("m"), stream, 9)
    assert [(b["type"], b["pieces"]) for b in blocks(parsed)] == [
        ("thinking", "First the weather."), ("text", "Let me look."), ("thinking", "Now the time. Done."),
        ("text", "Both asked."), ("tool_use", '{"city":"A"}')]
    signed = [e["index"] for name, e in parsed if name == "content_block_delta" and e["delta"]["type"] ==
              "signature_delta"]
    assert signed == [0, 2]
    assert [block.type for block in final_message(parsed).content] == ["thinking", "text", "thinking", "text",
                                                                       "tool_use"]


def test_a_repeat_of_the_prefill_after_the_reasoning_is_still_taken_off() -> None:
    """Reasoning is not the answer's text: a server repeating the prefill after it has the repeat taken off."""
    stream = (chunk({"reasoning": "Sunny, I think."}) + chunk({"content": "It "}) + chunk({"content": "is sunny."})
              + chunk({}, "stop") + USAGE + sse(b"[DONE]"))
    parsed = relay(OpenAIStreamToAnthropic("m", prefill="It is"), stream, 6)
    assert [(b["type"], b["pieces"]) for b in blocks(parsed)] == [("thinking", "Sunny, I think."), ("text", " sunny.")]


def test_a_reasoning_stream_without_usage_counts_the_reasoning_once() -> None:
    stream = chunk({"reasoning_content": "abcdefgh"}) + chunk({"content": "ok"}) + chunk({}, "stop") + sse(b"[DONE]")
    tap = OpenAIStreamToAnthropic("m", input_tokens=9)
    parsed = relay(tap, stream, 7)
    assert tap.written == 10 and tap.content_events == 3             # 8 bytes of reasoning, 2 of text
    assert parsed[-2][1]["usage"] == {"output_tokens": 3, "input_tokens": 9}


def test_an_ollama_streams_thinking_is_a_thinking_block_before_its_text() -> None:
    lines = [
        {"message": {"role": "assistant", "content": "", "thinking": "Hm,"}, "done": False},
        {"message": {"role": "assistant", "content": "", "thinking": " easy."}, "done": False},
        {"message": {"role": "assistant", "content": "Yes."}, "done": False},
        {"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop"},
    ]
    tap = OllamaStreamToAnthropic("m", input_tokens=5)
    parsed = relay(tap, b"".join(json.dumps(line).encode() + b"\n" for line in lines), 10)
    assert [(b["type"], b["pieces"]) for b in blocks(parsed)] == [("thinking", "Hm, easy."), ("text", "Yes.")]
    assert [parsed[i][1]["delta"]["type"] for i in (3, 4, 5)] == ["thinking_delta", "thinking_delta",
                                                                  "signature_delta"]
    assert tap.written == len("Hm, easy.Yes.") and parsed[-2][1]["usage"]["output_tokens"] == 4


# --- errors ---------------------------------------------------------------------------------------

def anthropic_error(error) -> dict:
    return json.loads(error.render("anthropic"))


def test_gateway_errors_take_anthropics_types_by_status() -> None:
    assert anthropic_error(AuthError()) == {"type": "error", "error": {"type": "authentication_error",
                                                                       "message": "Invalid or expired token"}}
    assert anthropic_error(ModelNotFound("x"))["error"]["type"] == "not_found_error"
    assert anthropic_error(UpstreamError("no endpoint", status=503))["error"]["type"] == "overloaded_error"
    assert anthropic_error(UpstreamError("slow", status=504))["error"]["type"] == "timeout_error"
    assert anthropic_error(PayloadTooLarge("too big"))["error"]["type"] == "request_too_large"


def test_a_quota_refusal_is_a_billing_error_with_its_figures() -> None:
    reset = datetime(2030, 1, 2, tzinfo=UTC)
    body = anthropic_error(QuotaExceeded("daily", 1000, 1012, reset, ["small-model"]))
    assert body == {"type": "error", "error": {
        "type": "billing_error", "message": "Quota exceeded", "quota_type": "daily", "limit": 1000,
        "used": 1012, "reset_time": "2030-01-02T00:00:00Z", "suggested_models": ["small-model"]}}
    limited = anthropic_error(RateLimited("rpm", 10, 10, reset, now=reset.timestamp() - 30))
    assert limited["error"]["type"] == "rate_limit_error" and limited["error"]["limit_type"] == "rpm"


@pytest.mark.parametrize(("data", "status", "kind", "message"), [
    (b'{"error": {"message": "model x not found", "type": "invalid_request_error"}}', 404, "not_found_error",
     "model x not found"),
    (b'{"error": "model \\"x\\" not found, try pulling it first"}', 404, "not_found_error",
     'model "x" not found, try pulling it first'),
    (b"upstream exploded", 500, "api_error", "upstream exploded"),
    (b'{"detail": "nope"}', 422, "invalid_request_error", '{"detail": "nope"}'),
])
def test_upstream_errors_are_rewritten_keeping_their_message(data: bytes, status: int, kind: str,
                                                            message: str) -> None:
    assert json.loads(upstream_error(data, status)) == {"type": "error", "error": {"type": kind, "message": message}}


@pytest.mark.parametrize(("kind", "field", "absent"), [("openai", "max_completion_tokens", "max_tokens"),
                                                       ("openai-compatible", "max_tokens", "max_completion_tokens")])
def test_openai_itself_is_given_the_output_limit_as_max_completion_tokens(kind: str, field: str, absent: str) -> None:
    """OpenAI's reasoning models refuse `max_tokens`; the OpenAI door already wrote `max_completion_tokens` for
    `openai` endpoints, the Anthropic door did not, so those models were out of its reach."""
    raw = json.dumps({"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}).encode()
    call = AnthropicCall(MESSAGES, InferenceRequest(model="m"), raw)
    _, body = call.plan(kind).request(raw, "up-model", 40)
    sent = json.loads(body)
    assert sent[field] == 40 and absent not in sent



@pytest.mark.parametrize(("source", "needle"), [
    ({"type": "url", "url": "file:///etc/passwd"}, "url"), ({"type": "url", "url": "gopher://h/"}, "url"),
])
def test_an_image_url_the_upstream_would_fetch_from_its_own_disk_is_refused(source: dict, needle: str) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": source}]}]}
    with pytest.raises(BadRequest) as refused:
        Door("/v1/messages", InferenceRequest(model="m"), json.dumps(body).encode())
    assert needle in str(refused.value)


def test_top_k_past_any_vocabulary_is_refused() -> None:
    body = {"model": "m", "max_tokens": 5, "top_k": 2**70, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(BadRequest) as refused:
        Door("/v1/messages", InferenceRequest(model="m"), json.dumps(body).encode())
    assert "top_k" in str(refused.value)


@pytest.mark.parametrize("counts", [{"prompt_eval_count": 10.0, "eval_count": 2},
                                    {"prompt_eval_count": "10", "eval_count": 2, "prompt_eval_cached_count": "3"}])
def test_an_ollama_answer_whose_counts_are_not_whole_numbers_shows_the_gateways_estimate(counts: dict) -> None:
    """A count of 10.0 made the whole Ollama answer unreadable to the Anthropic door (502) while the same answer
    on the Ollama door was estimated; the stream's last line likewise."""
    from switchyard_gateway.services.gateway.translate.wire import TokenCounts

    whole = json.dumps({"message": {"role": "assistant", "content": "hi"}, "done": True, "done_reason": "stop",
                        **counts}).encode()
    message = json.loads(ollama_to_message(whole, "m", estimate=TokenCounts(7, 1)))
    assert message["content"] == [{"type": "text", "text": "hi"}]
    assert (message["usage"]["input_tokens"], message["usage"]["output_tokens"]) == (7, 1)
    tap = OllamaStreamToAnthropic("m")
    tap.feed(whole + b"\n")
    assert tap.done
    tap.estimate = TokenCounts(7, 1)
    assert b'"output_tokens":1' in tap.finish()


def test_an_assistant_turn_of_thinking_alone_is_not_sent_nor_continued() -> None:
    """Thinking blocks are dropped; a turn holding nothing else was sent as an empty assistant message, and as the
    final turn it was a prefill of nothing for the server to continue."""
    thinking = {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"}]}
    for messages in ([ASK, thinking], [ASK, thinking, {"role": "user", "content": "Well?"}]):
        sent = json.loads(openai_chat_body(request(messages=messages), "up-model", top_k=True, continues=True))
        assert [m["role"] for m in sent["messages"]] == [m["role"] for m in messages if m is not thinking]
        assert "continue_final_message" not in sent
        assert [m["role"] for m in to_ollama(messages=messages)["messages"]] == [
            m["role"] for m in messages if m is not thinking]


@pytest.mark.parametrize(("status", "kind"), [(502, "api_error"), (504, "timeout_error")])
def test_a_stream_the_upstream_cut_or_left_silent_ends_with_the_matching_error_type(status: int, kind: str) -> None:
    """An upstream that went silent mid-stream longer than its timeout was reported as any cut (`api_error`)."""
    body = json.dumps({"model": "m", "max_tokens": 5, "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    ended = Door("/v1/messages", InferenceRequest(model="m"), body).cut_event("The upstream stream was cut", status)
    name, data = ended.decode().strip().split("\n")
    assert name == "event: error" and json.loads(data.removeprefix("data: "))["error"]["type"] == kind
