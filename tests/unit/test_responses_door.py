"""The Responses door (`/v1/responses`): requests to chat completions, hostile values refused, whole answers and
streams as the `openai` SDK's Responses models read them."""

from __future__ import annotations

import base64
import json

import openai
import pydantic
import pytest
from openai._models import construct_type
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response
from openai.types.responses.response_stream_event import ResponseStreamEvent

from switchyard_gateway.services.gateway.edge.errors import BadRequest
from switchyard_gateway.services.gateway.translate.asks import read_request
from switchyard_gateway.services.gateway.translate.doors import Door
from switchyard_gateway.services.gateway.translate.wire import Times, TokenCounts, TranslationError

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city", "strict": True,
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
PNG_URL = "data:image/png;base64,iVBORw0KGgo="
AGENTS = {"type": "namespace", "name": "agents", "description": "Sub-agents.", "tools": [       # as Codex groups tools
    {"type": "function", "name": "spawn_agent", "description": "Start one.", "strict": False,
     "parameters": {"type": "object", "properties": {"task": {"type": "string"}}, "required": ["task"]}},
    {"type": "function", "name": "close_agent"}]}


def body_of(**fields) -> bytes:
    return json.dumps({"model": "gpt-ish", "input": "hi", **fields}).encode()


def door(**fields) -> Door:
    body = body_of(**fields)
    return Door("/v1/responses", read_request("openai.responses", body), body)


def to_chat(kind: str = "openai-compatible", ceiling: int | None = None, **fields) -> dict:
    body = body_of(**fields)
    path, sent = Door("/v1/responses", read_request("openai.responses", body), body).plan(kind).request(
        body, "up-model", ceiling)
    assert path == "/v1/chat/completions"
    return json.loads(sent)


# --- requests -------------------------------------------------------------------------------------

def test_instructions_come_first_and_a_string_input_is_one_user_message() -> None:
    assert to_chat(instructions="Be brief.", input="Hello")["messages"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]


def test_items_become_chat_messages_with_function_calls_and_their_outputs() -> None:
    items = [
        {"role": "developer", "content": "Answer in French."},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "What is this,"}, {"type": "input_image", "image_url": PNG_URL,
                                                              "detail": "low"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "and"},
                                                        {"type": "input_text", "text": "the weather?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me look.",
                                                              "annotations": []}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
        {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": '{"city":"Bergen"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "-3 C"},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "2 C"}]},
    ]
    assert to_chat(input=items, tools=[WEATHER])["messages"] == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": [{"type": "text", "text": "What is this,"},
                                     {"type": "image_url", "image_url": {"url": PNG_URL, "detail": "low"}}]},
        {"role": "user", "content": "and\nthe weather?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather",
                                                              "arguments": '{"city":"Bergen"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "-3 C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "2 C"},
    ]


def test_a_function_outputs_images_follow_its_run_of_tool_messages_in_a_user_message() -> None:
    """A tool returning an image (the Agents SDK's and pydantic-ai's image outputs) was a 400: a chat `tool` message
    holds text alone, so the images are shown to the model as the user's, right after the outputs."""
    called = [{"type": "function_call", "call_id": f"call_{n}", "name": "get_weather", "arguments": "{}"}
              for n in (1, 2)]
    outputs = [
        {"type": "function_call_output", "call_id": "call_1", "output": [
            {"type": "input_text", "text": "A map:"}, {"type": "input_image", "image_url": PNG_URL, "detail": "low"}]},
        {"type": "function_call_output", "call_id": "call_2", "output": [
            {"type": "input_image", "image_url": "https://example.org/radar.png"}]}]
    then = {"type": "message", "role": "user", "content": "Which is colder?"}
    for items, last in ((called + outputs, []), (called + outputs + [then], [{"role": "user",
                                                                              "content": "Which is colder?"}])):
        messages = to_chat(input=items, tools=[WEATHER])["messages"]
        assert messages[1:] == [
            {"role": "tool", "tool_call_id": "call_1", "content": "A map:"},
            {"role": "tool", "tool_call_id": "call_2", "content": ""},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": PNG_URL, "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.org/radar.png"}}]},
            *last]
    with_images = door(input=called + outputs, tools=[WEATHER]).ask(4096, None)
    without = door(input=called + [{**o, "output": "A map:"} for o in outputs], tools=[WEATHER]).ask(4096, None)
    assert with_images.counted_tokens() > without.counted_tokens() + 85     # each image counted as one


NOTES = "data:text/plain;charset=utf-8;base64," + base64.b64encode("Oslo: −3 °C, snow".encode()).decode()


def test_a_plain_text_file_is_read_as_text_in_a_message_and_in_a_function_output() -> None:
    """pydantic-ai sends a text attachment (and a tool's text/plain return value) as an `input_file` part: a 400 on
    its type, until plain text in a data URL is read as text (its name, a blank line, the text)."""
    items = [{"role": "user", "content": [{"type": "input_text", "text": "Summarise"},
                                          {"type": "input_file", "file_data": NOTES, "filename": "notes.txt"}]},
             {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
             {"type": "function_call_output", "call_id": "c1", "output": [
                 {"type": "input_text", "text": "Attached: "}, {"type": "input_file", "file_data": NOTES}]}]
    messages = to_chat(input=items, tools=[WEATHER])["messages"]
    assert messages[0] == {"role": "user", "content": "Summarise\nnotes.txt\n\nOslo: −3 °C, snow"}
    assert messages[2] == {"role": "tool", "tool_call_id": "c1", "content": "Attached: Oslo: −3 °C, snow"}
    wrapped = "data:TEXT/Plain;base64," + base64.encodebytes("Oslo: −3 °C, snow".encode()).decode()   # lines
    for data in (wrapped, "data:text/plain;charset=utf-8,Oslo%3A%20%E2%88%923%20%C2%B0C%2C%20snow"):
        file = {"type": "input_file", "file_data": data}
        assert to_chat(input=[{"role": "user", "content": [file]}])["messages"] == [
            {"role": "user", "content": "Oslo: −3 °C, snow"}]
    plain = door(input=[{"role": "user", "content": [{"type": "input_text", "text": "Summarise"}]}])
    assert door(input=items[:1]).ask(4096, None).counted_tokens() > plain.ask(4096, None).counted_tokens() + 5


def test_tools_choice_format_and_sampling_are_mapped() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    chat = to_chat(tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"}, parallel_tool_calls=False,
                   text={"format": {"type": "json_schema", "name": "reply", "schema": schema, "strict": True}},
                   temperature=0.5, top_p=0.9, user="u-1", stream=True, max_output_tokens=64,
                   metadata={"k": "v"}, store=True, reasoning={"effort": "low"}, truncation="auto")
    assert chat["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "parameters": WEATHER["parameters"], "description": "The weather in a city",
        "strict": True}}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["parallel_tool_calls"] is False
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema,
                                                                              "strict": True}}
    assert (chat["temperature"], chat["top_p"], chat["user"], chat["max_tokens"]) == (0.5, 0.9, "u-1", 64)
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    for absent in ("metadata", "store", "reasoning", "reasoning_effort", "truncation", "max_completion_tokens"):
        assert absent not in chat
    assert to_chat(text={"format": {"type": "json_object"}})["response_format"] == {"type": "json_object"}
    assert "response_format" not in to_chat(text={"format": {"type": "text"}})


def test_a_namespaces_functions_are_offered_one_by_one_and_a_call_to_one_is_sent_back_by_its_name() -> None:
    """Codex offers its sub-agent tools in a `namespace` tool: every request it made was a 400 naming `tools[4].type`."""
    items = [{"role": "user", "content": "Start an agent."},
             {"type": "function_call", "call_id": "call_1", "name": "spawn_agent", "namespace": "agents",
              "arguments": '{"task":"look"}'},
             {"type": "function_call_output", "call_id": "call_1", "output": "started"}]
    chat = to_chat(input=items, tools=[WEATHER, AGENTS], tool_choice={"type": "function", "name": "close_agent"})
    assert [tool["function"] for tool in chat["tools"]] == [
        {"name": "get_weather", "parameters": WEATHER["parameters"], "description": "The weather in a city",
         "strict": True},
        {"name": "spawn_agent", "parameters": AGENTS["tools"][0]["parameters"],
         "description": "Sub-agents.\n\nStart one.", "strict": False},
        {"name": "close_agent", "parameters": {"type": "object", "properties": {}}, "description": "Sub-agents."}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "close_agent"}}
    assert chat["messages"][1]["tool_calls"] == [{"id": "call_1", "type": "function", "function": {
        "name": "spawn_agent", "arguments": '{"task":"look"}'}}]


def test_openai_itself_gets_max_completion_tokens_and_reasoning_effort_and_the_ceiling_holds() -> None:
    hosted = to_chat("openai", max_output_tokens=64, reasoning={"effort": "low"})
    assert (hosted["max_completion_tokens"], hosted["reasoning_effort"]) == (64, "low") and "max_tokens" not in hosted
    assert to_chat(ceiling=10, max_output_tokens=64)["max_tokens"] == 10
    assert to_chat(ceiling=10)["max_tokens"] == 10
    assert "max_tokens" not in to_chat()


def test_the_ask_holds_max_output_tokens_and_counts_everything_the_model_reads() -> None:
    plain = door(input="What is the weather?").ask(4096, None)
    assert (plain.output, plain.field) == (None, "max_output_tokens")
    rich = door(input=[{"role": "user", "content": [{"type": "input_text", "text": "What is the weather?"},
                                                     {"type": "input_image", "image_url": PNG_URL}]}],
                instructions="Be brief.", tools=[WEATHER], max_output_tokens=7).ask(4096, None)
    assert rich.output == 7 and rich.counted_tokens() > plain.counted_tokens() + 85     # image, tool, instructions


def refused(limit: int = 4096, **fields) -> BadRequest:
    with pytest.raises(BadRequest) as error:
        door(**fields).ask(limit, None)
    return error.value


@pytest.mark.parametrize(("fields", "param"), [
    ({"max_output_tokens": "5"}, "max_output_tokens"),
    ({"max_output_tokens": -1}, "max_output_tokens"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"max_output_tokens": 5000}, "max_output_tokens"),                  # past the model's context
    ({"max_output_tokens": 2**80}, "max_output_tokens"),
    ({"max_output_tokens": 1.5}, "max_output_tokens"),
    ({"temperature": -0.1}, "temperature"), ({"temperature": 2.5}, "temperature"), ({"temperature": "1"}, "temperature"),
    ({"top_p": 1.5}, "top_p"), ({"top_p": -1}, "top_p"),
    ({"top_logprobs": 21}, "top_logprobs"), ({"max_tool_calls": 0}, "max_tool_calls"),
    ({"stream": "yes"}, "stream"), ({"parallel_tool_calls": 1}, "parallel_tool_calls"),
    ({"metadata": {str(n): "v" for n in range(17)}}, "metadata"), ({"metadata": {"k": 1}}, "metadata"),
    ({"metadata": {"k" * 65: "v"}}, "metadata"),            # a key too long: the 400 named no field
    ({"input": None}, "input"), ({"input": []}, "input"), ({"input": 5}, "input"),
    ({"input": [{"content": "no role"}]}, "input[0].role"),
    ({"input": [{"role": "user"}]}, "input[0].content"),
    ({"input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
    ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input[0].content[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input[0].content[0].text"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]},
     "input[0].content[0].image_url"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "file:///etc/passwd"}]}]},
     "input[0].content[0].image_url"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
    ({"input": [{"type": "function_call_output", "call_id": "call_9", "output": "x"}]}, "input[0].call_id"),
    *(({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                  {"type": "function_call_output", "call_id": "c", "output": [part]}]}, param) for part, param in (
        ({"type": "output_text", "text": "x"}, "input[1].output[0].type"),
        ({"type": "input_image"}, "input[1].output[0].image_url"),
        ({"type": "input_image", "image_url": "file:///etc/passwd"}, "input[1].output[0].image_url"),
        ({"type": "input_text"}, "input[1].output[0].text"),
        ({"type": "input_file", "file_id": "file_1"}, "input[1].output[0].file_data"))),
    *(({"input": [{"role": "user", "content": [{"type": "input_file", **part}]}]}, param) for part, param in (
        ({"file_id": "file_1"}, "input[0].content[0].file_data"),
        ({"file_url": "https://example.org/a.pdf"}, "input[0].content[0].file_data"),
        ({"file_data": "data:application/pdf;base64,JVBERi0="}, "input[0].content[0].file_data"),
        ({"file_data": "data:text/plain;base64,not base64!"}, "input[0].content[0].file_data"),
        ({"file_data": "data:text/plain;base64," + base64.b64encode(b"\xff\xfe").decode()},
         "input[0].content[0].file_data"),
        ({"file_data": "text/plain;base64,SGk="}, "input[0].content[0].file_data"),
        ({"file_data": 5}, "input[0].content[0].file_data"))),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "name": "no spaces allowed"}]}, "tools[0].name"),
    ({"tools": [{"type": "namespace", "name": "agents", "description": "no functions"}]}, "tools[0].tools"),
    ({"tools": [{"type": "namespace", "name": "agents", "tools": []}]}, "tools[0].tools"),
    ({"tools": [{"type": "namespace", "name": "agents", "tools": "all"}]}, "tools[0].tools"),
    ({"tools": [{"type": "namespace", "name": "no spaces", "tools": [WEATHER]}]}, "tools[0].name"),
    ({"tools": [{"type": "namespace", "tools": [WEATHER]}]}, "tools[0].name"),
    ({"tools": [{"type": "namespace", "name": "web", "tools": [{"type": "web_search"}]}]}, "tools[0].tools[0].type"),
    ({"tools": [{"type": "namespace", "name": "a", "tools": [{"type": "namespace", "name": "b", "tools": [WEATHER]}]}]},
     "tools[0].tools[0].type"),
    ({"tools": [{"type": "namespace", "name": "a", "tools": [{"type": "function", "name": "bad name"}]}]},
     "tools[0].tools[0].name"),
    ({"tools": [WEATHER, {"type": "namespace", "name": "again", "tools": [WEATHER]}]}, "tools"),
    ({"tools": [{"type": "function"}]}, "tools[0].name"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": "all"}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "other"}}, "tool_choice.name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "web_search_preview"}}, "tool_choice.type"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ({"text": {"format": {"type": "json_schema", "name": "a b!", "schema": {}}}}, "text.format.name"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "bad name!", "arguments": "{}"}]},
     "input[0].name"),
    ({"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, "input"),
    ({"input": [{"role": "system", "content": [{"type": "input_image", "image_url": PNG_URL}]}]},
     "input[0].content[0]"),
    ({"input": [{"role": "assistant", "content": [{"type": "input_image", "image_url": PNG_URL}]}]},
     "input[0].content[0]"),
    ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"conversation": {"id": "conv_1"}}, "conversation"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"background": True}, "background"),
    ({"include": "message.output_text.logprobs"}, "include"),
    ({"include": [7]}, "include[0]"),
    ({"include": [None]}, "include[0]"),
])
def test_hostile_and_unservable_requests_are_refused_naming_the_field(fields: dict, param: str) -> None:
    error = refused(**fields)
    assert error.status == 400 and error.param == param, error.message
    assert error.message.startswith(("Invalid", "Missing")) and param.split("[")[0].split(".")[0] in error.message


def test_what_a_client_may_send_and_the_door_does_not_use_is_taken() -> None:
    taken = door(store=True, background=False, previous_response_id=None, metadata={"k": "v"}, include=["x"],
                 reasoning={"effort": "high", "summary": "auto"}, truncation="disabled", service_tier="auto",
                 a_field_from_next_year={"nested": True}, safety_identifier="s", prompt_cache_key="p")
    assert taken.ask(4096, None).output is None
    sent_back = [{"role": "user", "content": "hi"},
                 {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
                  "content": [{"type": "output_text", "text": "Hello", "annotations": []},
                              {"type": "refusal", "refusal": "no"}]}]
    assert to_chat(input=sent_back)["messages"][-1] == {"role": "assistant", "content": "Hellono"}


def test_an_item_reference_is_refused_saying_how_a_client_sends_the_item_instead() -> None:
    """The AI SDK's Responses model refers to its earlier answers by id unless told `store: false` (its second turn
    was a 400 that said only "send the item itself", which its caller cannot do)."""
    error = refused(input=[{"role": "user", "content": "hi"}, {"type": "item_reference", "id": "msg_1"},
                           {"role": "user", "content": "again"}])
    assert error.param == "input[1].type" and "`store: false`" in error.message


def test_gateway_errors_on_the_door_are_openais_shape() -> None:
    error = refused(previous_response_id="resp_1")
    assert json.loads(door().error_body(error)) == {"error": {
        "message": error.message, "type": "invalid_request_error", "param": "previous_response_id",
        "code": "unsupported_parameter"}}


# --- whole answers --------------------------------------------------------------------------------

def completion(message: dict, finish: str = "stop", usage: dict | None = None) -> bytes:
    return json.dumps({"id": "c1", "object": "chat.completion", "created": 1, "model": "up",
                       "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
                       **({"usage": usage} if usage else {})}).encode()


def answer(data: bytes, estimate: TokenCounts | None = None, tools: tuple = (WEATHER,), **fields) -> Response:
    called = door(tools=list(tools), instructions="Be brief.", temperature=0.2, **fields)
    out = called.plan("openai-compatible").answer(data, "gpt-ish", Times(0, 0, estimate))
    return Response.model_validate(json.loads(out))        # strictly: every field the SDK requires is there


def test_a_text_answer_is_a_completed_response_with_the_requests_settings() -> None:
    response = answer(completion({"content": "Hello"}, usage={"prompt_tokens": 9, "completion_tokens": 2,
                                                              "prompt_tokens_details": {"cached_tokens": 4}}))
    assert response.id.startswith("resp_") and response.output_text == "Hello" and response.status == "completed"
    assert (response.model, response.instructions, response.temperature) == ("gpt-ish", "Be brief.", 0.2)
    assert response.tools[0].name == "get_weather" and response.tool_choice == "auto" and response.parallel_tool_calls
    usage = response.usage
    assert (usage.input_tokens, usage.input_tokens_details.cached_tokens, usage.output_tokens, usage.total_tokens) == \
        (9, 4, 2, 11)


def test_tool_calls_are_function_call_items_and_a_length_finish_is_incomplete() -> None:
    calls = [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
             {"type": "function", "function": {"name": "get_weather"}}]
    response = answer(completion({"content": None, "tool_calls": calls}, "tool_calls"))
    first, second = response.output
    assert (first.type, first.call_id, first.name, first.arguments) == ("function_call", "call_1", "get_weather",
                                                                       '{"city":"Oslo"}')
    assert second.call_id.startswith("call_") and second.arguments == "{}" and response.output_text == ""
    cut = answer(completion({"content": "Hel"}, "length"), max_output_tokens=1)
    assert (cut.status, cut.incomplete_details.reason, cut.output[0].status) == ("incomplete", "max_output_tokens",
                                                                                  "incomplete")


def test_a_refusal_is_a_refusal_part_of_the_message() -> None:
    """The model declining (`refusal`, no content) was dropped: `output: []`, nothing said why."""
    response = answer(completion({"content": None, "refusal": "I can't help with that."}))
    (message,) = response.output
    assert [part.model_dump() for part in message.content] == [{"type": "refusal",
                                                               "refusal": "I can't help with that."}]
    assert response.output_text == "" and response.status == "completed"


def test_the_settings_openai_echoes_are_echoed_and_store_says_nothing_was_stored() -> None:
    response = answer(completion({"content": "Hi"}), store=True, top_logprobs=3, max_tool_calls=2,
                      reasoning={"effort": "low"})
    assert (response.store, response.top_logprobs, response.max_tool_calls, response.reasoning.effort) == \
        (False, 3, 2, "low")


def test_the_gateways_estimate_is_shown_when_the_relay_made_one() -> None:
    response = answer(completion({"content": "Hi"}, usage={"prompt_tokens": -5}), estimate=TokenCounts(12, 3))
    assert (response.usage.input_tokens, response.usage.output_tokens) == (12, 3)


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_under_either_name_is_a_reasoning_item_before_the_message(field: str) -> None:
    """vLLM's and DeepSeek's `reasoning_content`, Ollama's and OpenRouter's `reasoning`: dropped before; a first
    `reasoning` item now, with the upstream's reasoning token count in the usage."""
    usage = {"prompt_tokens": 9, "completion_tokens": 20, "completion_tokens_details": {"reasoning_tokens": 18}}
    response = answer(completion({"content": "42", field: "6 times 7"}, usage=usage))
    reasoning, message = response.output
    assert (reasoning.type, reasoning.id[:3], reasoning.summary, reasoning.status) == ("reasoning", "rs_", [],
                                                                                       "completed")
    assert [part.model_dump() for part in reasoning.content] == [{"type": "reasoning_text", "text": "6 times 7"}]
    assert message.type == "message" and response.output_text == "42"
    assert (response.usage.output_tokens, response.usage.output_tokens_details.reasoning_tokens) == (20, 18)
    assert answer(completion({"content": "42"}, usage=usage)).output[0].type == "message"


def test_reasoning_tokens_are_the_upstreams_or_none() -> None:
    """0 when the upstream says nothing of them, or says what cannot be (more than its output, not a count); 0 with the
    gateway's estimate, which does not know them."""
    reasoned = completion({"content": "42", "reasoning": "x"}, usage={"prompt_tokens": 9, "completion_tokens": 3})
    assert answer(reasoned).usage.output_tokens_details.reasoning_tokens == 0
    for details, shown in (({"reasoning_tokens": 50}, 3), ({"reasoning_tokens": "2"}, 0), ([1], 0)):
        usage = {"prompt_tokens": 9, "completion_tokens": 3, "completion_tokens_details": details}
        assert answer(completion({"content": "42"}, usage=usage)).usage.output_tokens_details.reasoning_tokens == shown
    estimated = answer(completion({"content": "42"}, usage={"prompt_tokens": -1, "completion_tokens_details": {
        "reasoning_tokens": 2}}), estimate=TokenCounts(12, 3))
    assert (estimated.usage.output_tokens, estimated.usage.output_tokens_details.reasoning_tokens) == (3, 0)


def test_reasoning_before_tool_calls_is_a_reasoning_item_before_the_function_calls() -> None:
    calls = [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]
    response = answer(completion({"content": None, "reasoning_content": "The weather tool.", "tool_calls": calls},
                                 "tool_calls"))
    assert [(item.type, item.status) for item in response.output] == [("reasoning", "completed"),
                                                                       ("function_call", "completed")]
    assert response.output[0].content[0].text == "The weather tool." and response.output_text == ""
    cut = answer(completion({"content": None, "reasoning": "Still think"}, "length"), max_output_tokens=2)
    assert [(item.type, item.status) for item in cut.output] == [("reasoning", "incomplete")]


def test_an_unreadable_answer_is_a_translation_error() -> None:
    with pytest.raises(TranslationError):
        answer(b"<html>")


def test_an_upstream_error_answer_is_relayed_in_openais_shape() -> None:
    plan = door().plan("openai-compatible")
    body = json.loads(plan.error(b'{"error": {"message": "too long", "code": 400}}', 400))
    assert body["error"]["message"] == "too long" and body["error"]["code"] == "400"
    named = json.loads(plan.error(b'{"error": {"message": "bad name", "type": "invalid_request_error", '
                                  b'"param": "messages[1].tool_calls[0].function.name", "code": null}}', 400))
    assert named["error"] == {"message": "bad name", "type": "invalid_request_error", "param": None, "code": None}


# --- streams --------------------------------------------------------------------------------------

def chunk(delta: dict | None = None, finish: str | None = None, **fields) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return b"data: " + json.dumps({"id": "c1", "object": "chat.completion.chunk", "choices": choices,
                                   **fields}).encode() + b"\n\n"


def call(index: int, call_id: str | None = None, name: str | None = None, arguments: str | None = None) -> dict:
    function = {key: value for key, value in (("name", name), ("arguments", arguments)) if value is not None}
    piece = {"index": index, "function": function, **({"id": call_id} if call_id else {})}
    return {"tool_calls": [piece]}


USAGE = chunk(None, usage={"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11})
DONE = b"data: [DONE]\n\n"


def relay(stream_bytes: bytes, size: int = 0, estimate: TokenCounts | None = None, tools: tuple = (WEATHER,),
          **fields) -> tuple[list, object]:
    """The events a stream is written as (each checked against the SDK's event models), and the SDK's final
    Response from its own stream state machine (None when none completed)."""
    called = door(tools=list(tools), stream=True, **fields)
    tap = called.plan("openai-compatible").stream("gpt-ish", Times(0, 0))
    pieces = [stream_bytes[i:i + size] for i in range(0, len(stream_bytes), size)] if size else [stream_bytes]
    out = b"".join(tap.feed(piece) for piece in pieces) + tap.ended()
    if tap.done:
        tap.estimate = estimate
        out += tap.finish()
    state = ResponseStreamState(input_tools=[WEATHER], text_format=openai.omit)
    events = []
    for block in out.split(b"\n\n")[:-1]:
        name, data = block.split(b"\n")
        payload = json.loads(data.removeprefix(b"data: "))
        assert name == b"event: " + payload["type"].encode()
        pydantic.TypeAdapter(ResponseStreamEvent).validate_python(payload)
        events.append(payload)
        state.handle_event(construct_type(type_=ResponseStreamEvent, value=payload))
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    return events, state._completed_response


TEXT_THEN_CALL = (chunk({"role": "assistant", "content": "Let "}) + chunk({"content": "me look."})
                  + chunk(call(0, "call_1", "get_weather", '{"city":')) + chunk(call(0, None, None, ' "Oslo"}'))
                  + chunk({}, "tool_calls") + USAGE + DONE)


@pytest.mark.parametrize("size", [0, 1, 7])
def test_text_then_a_tool_call_is_the_responses_event_sequence(size: int) -> None:
    events, final = relay(TEXT_THEN_CALL, size)
    assert [event["type"] for event in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    assert final.output_text == "Let me look." and final.status == "completed"
    assert (final.output[1].call_id, final.output[1].arguments) == ("call_1", '{"city": "Oslo"}')
    assert (final.usage.input_tokens, final.usage.output_tokens, final.usage.total_tokens) == (7, 4, 11)


def test_parallel_calls_that_interleave_and_a_late_name_each_keep_theirs() -> None:
    stream = (chunk(call(0, "call_a", "", "")) + chunk(call(1, "call_b", "get_weather", '{"city":'))
              + chunk(call(0, None, "get_weather", '{"city":')) + chunk(call(1, None, None, '"Bergen"}'))
              + chunk(call(0, None, None, '"Oslo"}')) + chunk({}, "tool_calls") + USAGE + DONE)
    _, final = relay(stream)
    assert [(item.call_id, item.name, item.arguments) for item in final.output] == [
        ("call_a", "get_weather", '{"city":"Oslo"}'), ("call_b", "get_weather", '{"city":"Bergen"}')]


def test_a_call_to_a_namespaces_function_names_the_namespace_whole_and_streamed() -> None:
    """Codex finds a namespaced tool by its namespace and name, as OpenAI answers calls to one."""
    calls = [{"id": "call_1", "type": "function", "function": {"name": "spawn_agent", "arguments": '{"task":"x"}'}},
             {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]
    whole = answer(completion({"content": None, "tool_calls": calls}, "tool_calls"), tools=(WEATHER, AGENTS))
    assert [(item.name, item.namespace) for item in whole.output] == [("spawn_agent", "agents"), ("get_weather", None)]
    assert "namespace" not in json.loads(whole.model_dump_json(exclude_none=True))["output"][1]
    stream = (chunk(call(0, "call_1", "spawn_agent", '{"task":"x"}')) + chunk(call(1, "call_2", "get_weather", "{}"))
              + chunk({}, "tool_calls") + USAGE + DONE)
    events, final = relay(stream, tools=(WEATHER, AGENTS))
    assert [event["item"].get("namespace") for event in events if event["type"].startswith("response.output_item")] \
        == ["agents", "agents", None, None]
    assert [(item.name, item.namespace) for item in final.output] == [("spawn_agent", "agents"), ("get_weather", None)]


def test_a_stream_cut_by_the_output_limit_ends_with_response_incomplete() -> None:
    events, final = relay(chunk({"content": "Hel"}) + chunk({}, "length") + USAGE + DONE, max_output_tokens=1)
    assert events[-1]["type"] == "response.incomplete" and final is None
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-2]["item"]["status"] == "incomplete"


def test_a_stream_without_usage_shows_the_relays_estimate() -> None:
    events, final = relay(chunk({"content": "Hello"}, "stop") + DONE, estimate=TokenCounts(21, 2))
    assert (final.usage.input_tokens, final.usage.output_tokens) == (21, 2)


@pytest.mark.parametrize("size", [0, 5])
def test_a_streamed_refusal_is_its_own_part_with_refusal_events(size: int) -> None:
    stream = (chunk({"role": "assistant", "content": "Hm. "}) + chunk({"refusal": "I can't "})
              + chunk({"refusal": "help."}) + chunk({}, "stop") + USAGE + DONE)
    events, final = relay(stream, size)
    assert [event["type"] for event in events][2:] == [
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.content_part.added",
        "response.refusal.delta", "response.refusal.delta", "response.refusal.done", "response.content_part.done",
        "response.output_item.done", "response.completed"]
    assert [event["content_index"] for event in events if event["type"].startswith("response.refusal")] == [1, 1, 1]
    assert [(part.type, getattr(part, "text", None) or part.refusal) for part in final.output[0].content] == [
        ("output_text", "Hm. "), ("refusal", "I can't help.")]


def test_an_error_inside_the_stream_is_an_error_event_and_response_failed_and_nothing_follows() -> None:
    error = b'data: {"error": {"message": "try later", "type": "server_error", "code": 429}}\n\n'
    events, final = relay(chunk({"content": "Hi"}) + error + chunk({"content": "more"}) + DONE)
    assert [event["type"] for event in events][-3:] == ["response.output_text.delta", "error", "response.failed"]
    assert (events[-2]["code"], events[-2]["message"]) == ("429", "try later")
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"] == {"code": "rate_limit_exceeded", "message": "try later"}
    assert [(item["status"], item["content"]) for item in failed["output"]] == [      # what was written, cut short
        ("incomplete", [{"type": "output_text", "text": "Hi", "annotations": [], "logprobs": []}])]
    assert final is None


REASONING_THEN_TEXT = (chunk({"role": "assistant", "content": ""}) + chunk({"reasoning_content": "6 times"})
                      + chunk({"reasoning": " 7"}) + chunk({"content": "4"}) + chunk({"content": "2"})
                      + chunk({}, "stop")
                      + chunk(None, usage={"prompt_tokens": 7, "completion_tokens": 6, "total_tokens": 13,
                                           "completion_tokens_details": {"reasoning_tokens": 4}}) + DONE)


@pytest.mark.parametrize("size", [0, 1, 9])
def test_a_stream_of_reasoning_then_text_is_a_reasoning_item_then_the_message(size: int) -> None:
    """The reasoning deltas were dropped; they are a `reasoning` item's `reasoning_text` now, at output_index 0, and
    the message at 1; the SDK's stream state builds the final Response with both."""
    events, final = relay(REASONING_THEN_TEXT, size)
    shape = [(e["type"], e.get("output_index"), e.get("content_index")) for e in events]
    assert shape == [
        ("response.created", None, None), ("response.in_progress", None, None),
        ("response.output_item.added", 0, None), ("response.content_part.added", 0, 0),
        ("response.reasoning_text.delta", 0, 0), ("response.reasoning_text.delta", 0, 0),
        ("response.reasoning_text.done", 0, 0), ("response.content_part.done", 0, 0),
        ("response.output_item.done", 0, None),
        ("response.output_item.added", 1, None), ("response.content_part.added", 1, 0),
        ("response.output_text.delta", 1, 0), ("response.output_text.delta", 1, 0),
        ("response.output_text.done", 1, 0), ("response.content_part.done", 1, 0),
        ("response.output_item.done", 1, None), ("response.completed", None, None)]
    reasoning_id = events[2]["item"]["id"]
    assert events[2]["item"] == {"type": "reasoning", "id": reasoning_id, "summary": [], "content": [],
                                 "status": "in_progress"}
    assert events[3]["part"] == {"type": "reasoning_text", "text": ""}
    assert [(e["item_id"], e["delta"]) for e in events[4:6]] == [(reasoning_id, "6 times"), (reasoning_id, " 7")]
    assert (events[6]["text"], events[7]["part"]) == ("6 times 7", {"type": "reasoning_text", "text": "6 times 7"})
    assert events[8]["item"] == {"type": "reasoning", "id": reasoning_id, "summary": [],
                                 "content": [{"type": "reasoning_text", "text": "6 times 7"}], "status": "completed"}
    assert events[-1]["response"]["output"][0] == events[8]["item"]
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output[0].content[0].text == "6 times 7" and final.output_text == "42"
    assert (final.usage.output_tokens, final.usage.output_tokens_details.reasoning_tokens) == (6, 4)


def test_a_call_split_by_reasoning_and_text_is_written_whole_at_the_end_with_consecutive_indices() -> None:
    """Reasoning or text between two pieces of one call's arguments wrote the call then, cut short (`{"ci`); it is
    written at the end now, whole."""
    stream = (chunk({"reasoning": "Weather first."}) + chunk(call(0, "call_1", "get_weather", '{"ci'))
              + chunk({"reasoning": "Then say so."}) + chunk({"content": "Asked."}) + chunk(call(0, None, None,
                                                                                             'ty":"Oslo"}'))
              + chunk({}, "tool_calls") + USAGE + DONE)
    events, final = relay(stream, 5)
    added = [(e["output_index"], e["item"]["type"]) for e in events if e["type"] == "response.output_item.added"]
    assert added == [(0, "reasoning"), (1, "reasoning"), (2, "message"), (3, "function_call")]
    assert [item.type for item in final.output] == ["reasoning", "reasoning", "message", "function_call"]
    assert json.loads(final.output[3].arguments) == {"city": "Oslo"}
    assert final.usage.output_tokens_details.reasoning_tokens == 0          # the upstream said nothing of them


def test_a_failed_streams_response_has_the_usage_its_usage_event_records() -> None:
    """`response.failed` had no usage. It has what the usage event records: the upstream's counts when they came,
    else the prompt as the call's Ask counted it and a token per 4 bytes the model wrote (reasoning included), held
    to what the call was held to."""
    error = b'data: {"error": {"message": "crashed", "type": "server_error"}}\n\n'
    called = door(stream=True, max_output_tokens=50)
    ask = called.ask(4096, None)
    tap = called.plan("openai-compatible").stream("gpt-ish", Times(0, 0))
    out = tap.feed(chunk({"reasoning_content": "abcdefgh"}) + chunk({"content": "Hi"}) + error)
    failed = json.loads(out.split(b"\n\n")[-2].split(b"\n")[1][6:])
    assert failed["type"] == "response.failed" and tap.content_events == 3        # 10 bytes written
    assert failed["response"]["usage"] == {
        "input_tokens": ask.counted_tokens(), "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": ask.counted_tokens() + 3}
    assert [item["type"] for item in failed["response"]["output"]] == ["reasoning", "message"]
    Response.model_validate(failed["response"])
    held = door(stream=True, max_output_tokens=1)
    held.ask(4096, None)
    cut_tap = held.plan("openai-compatible").stream("gpt-ish", Times(0, 0))
    cut_tap.feed(chunk({"reasoning": "a" * 400}))
    ended = held.cut_event("The upstream stream was cut: ResponseCut")
    assert json.loads(ended.split(b"\n\n")[-2].split(b"\n")[1][6:])["response"]["usage"]["output_tokens"] == 1
    reported = door(stream=True)
    counted_tap = reported.plan("openai-compatible").stream("gpt-ish", Times(0, 0))
    counted_tap.feed(chunk({"content": "Hi"}) + USAGE)
    ended = reported.cut_event("cut")
    usage = json.loads(ended.split(b"\n\n")[-2].split(b"\n")[1][6:])["response"]["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (7, 4)


def test_a_cut_stream_ends_with_the_doors_error_events() -> None:
    called = door(stream=True)
    assert called.cut_event("cut").startswith(b"data: {\"error\"")      # no stream began: the OpenAI shape
    tap = called.plan("openai-compatible").stream("gpt-ish", Times(0, 0))
    started = tap.feed(chunk({"content": "Hi"}))
    ended = called.cut_event("The upstream stream was cut: ResponseCut")
    events = [json.loads(block.split(b"\n")[1][6:]) for block in (started + ended).split(b"\n\n")[:-1]]
    assert [event["type"] for event in events][-2:] == ["error", "response.failed"]
    assert events[-2]["code"] == "stream_cut" and events[-1]["sequence_number"] == len(events) - 1


# --- log probabilities ----------------------------------------------------------------------------

def scored(token: str, logprob: float, *alternatives: tuple[str, float]) -> dict:
    """A chat answer's `logprobs.content` entry; `bytes` left out, as some servers do, for the door to write."""
    return {"token": token, "logprob": logprob,
            "top_logprobs": [{"token": t, "logprob": p, "bytes": list(t.encode())} for t, p in alternatives]}


def logprob(token: str, value: float, *alternatives: tuple[str, float]) -> dict:
    """The same entry as the Responses API writes it."""
    return {"token": token, "bytes": list(token.encode()), "logprob": value,
            "top_logprobs": [{"token": t, "bytes": list(t.encode()), "logprob": p} for t, p in alternatives]}


@pytest.mark.parametrize(("fields", "sent"), [
    ({"include": ["message.output_text.logprobs"]}, {"logprobs": True}),
    ({"include": ["message.output_text.logprobs"], "top_logprobs": 2}, {"logprobs": True, "top_logprobs": 2}),
    ({"top_logprobs": 3}, {"logprobs": True, "top_logprobs": 3}),
    ({"include": ["reasoning.encrypted_content"]}, {}),
    ({}, {}),
])
def test_log_probabilities_asked_by_include_or_top_logprobs_are_asked_of_the_chat(fields: dict, sent: dict) -> None:
    body = to_chat(input="hi", **fields)
    assert {name: body[name] for name in ("logprobs", "top_logprobs") if name in body} == sent


def test_a_whole_answers_text_carries_its_tokens_log_probabilities() -> None:
    data = json.dumps({"id": "c1", "object": "chat.completion", "created": 1, "model": "up", "choices": [{
        "index": 0, "message": {"role": "assistant", "content": "Hi there"}, "finish_reason": "stop",
        "logprobs": {"content": [scored("Hi", -0.1, ("Hi", -0.1), ("Hello", -2.5)), scored(" there", -0.3)]}}]})
    response = answer(data.encode(), include=["message.output_text.logprobs"], top_logprobs=2)
    [part] = response.output[0].content
    assert [entry.model_dump() for entry in part.logprobs] == [
        logprob("Hi", -0.1, ("Hi", -0.1), ("Hello", -2.5)), logprob(" there", -0.3)]
    assert response.top_logprobs == 2


@pytest.mark.parametrize("size", [0, 5])
def test_a_streams_deltas_carry_their_tokens_log_probabilities_and_the_text_all_of_them(size: int) -> None:
    def scored_chunk(text: str, value: float) -> bytes:
        choice = {"index": 0, "delta": {"content": text}, "finish_reason": None,
                  "logprobs": {"content": [scored(text, value, ("x", -9.0))]}}
        return b"data: " + json.dumps({"id": "c1", "object": "chat.completion.chunk",
                                       "choices": [choice]}).encode() + b"\n\n"

    stream = (chunk({"role": "assistant", "content": ""}) + scored_chunk("Hi", -0.1) + scored_chunk(" there", -0.3)
              + chunk({}, "stop") + USAGE + DONE)
    events, final = relay(stream, size, include=["message.output_text.logprobs"], top_logprobs=1)
    deltas = [event for event in events if event["type"] == "response.output_text.delta"]
    assert [event["logprobs"] for event in deltas] == [[logprob("Hi", -0.1, ("x", -9.0))],
                                                       [logprob(" there", -0.3, ("x", -9.0))]]
    [done] = [event for event in events if event["type"] == "response.output_text.done"]
    assert done["logprobs"] == [logprob("Hi", -0.1, ("x", -9.0)), logprob(" there", -0.3, ("x", -9.0))]
    assert [entry.token for entry in final.output[0].content[0].logprobs] == ["Hi", " there"]


def test_log_probabilities_not_of_openais_form_are_left_out_and_the_answer_stands() -> None:
    data = json.dumps({"id": "c1", "object": "chat.completion", "created": 1, "model": "up", "choices": [{
        "index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop",
        "logprobs": {"content": [{"token": 7, "logprob": "very likely"}]}}]})
    response = answer(data.encode(), include=["message.output_text.logprobs"])
    assert response.output_text == "Hi" and response.output[0].content[0].logprobs == []


def test_an_answers_own_output_sent_back_as_input_is_read_and_its_reasoning_dropped() -> None:
    """A stateless client (the Agents SDK, `input += response.output`) sends the door's items back as they were: its
    reasoning item, `reasoning_text` part and all, was a 400 on the second turn."""
    first = answer(completion({"content": "Let me look.", "reasoning_content": "the user wants weather"}))
    assert [item.type for item in first.output] == ["reasoning", "message"]
    items = [{"role": "user", "content": "Weather?"}, *[item.model_dump(exclude_none=True) for item in first.output],
             {"role": "user", "content": "And tomorrow?"}]
    assert to_chat(input=items)["messages"] == [
        {"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "Let me look."},
        {"role": "user", "content": "And tomorrow?"}]
    with pytest.raises(BadRequest, match="'reasoning_text' is a part of a reasoning item"):
        door(input=[{"role": "user", "content": [{"type": "reasoning_text", "text": "sneaky"}]}])


@pytest.mark.parametrize(("fields", "shown"), [
    ({}, []),                                                       # not asked: a server's unasked ones left out
    ({"include": ["reasoning.encrypted_content"]}, []),
    ({"include": ["message.output_text.logprobs"]}, [logprob("Hi", -0.1)]),          # no alternatives asked
    ({"top_logprobs": 1}, [logprob("Hi", -0.1, ("Hi", -0.1))]),                      # at most as many as asked
])
def test_log_probabilities_are_shown_as_asked_whatever_the_server_sent(fields: dict, shown: list) -> None:
    alternatives = [("Hi", -0.1), ("Hello", -2.5), ("Hey", -3.0)]
    entry = {**scored("Hi", -0.1, *alternatives), "bytes": [999999, -5]}             # no bytes: written from the token
    data = json.dumps({"id": "c1", "object": "chat.completion", "created": 1, "model": "up", "choices": [{
        "index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop",
        "logprobs": {"content": [entry]}}]})
    response = answer(data.encode(), **fields)
    assert [entry.model_dump() for entry in response.output[0].content[0].logprobs] == shown


def test_a_log_probability_a_server_wrote_as_null_is_openais_minus_9999() -> None:
    """llama.cpp's JSON writes minus infinity (a token that could never be sampled) as null, which dropped every
    log probability of the answer; OpenAI writes -9999.0 for it."""
    entry = {"token": "Hi", "logprob": -0.1, "top_logprobs": [{"token": "Hi", "logprob": -0.1},
                                                              {"token": "Zz", "logprob": None}]}
    data = json.dumps({"id": "c1", "object": "chat.completion", "created": 1, "model": "up", "choices": [{
        "index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop",
        "logprobs": {"content": [entry]}}]})
    [shown] = answer(data.encode(), top_logprobs=2).output[0].content[0].logprobs
    assert [(a.token, a.logprob) for a in shown.top_logprobs] == [("Hi", -0.1), ("Zz", -9999.0)]
