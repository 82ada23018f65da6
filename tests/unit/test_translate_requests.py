"""Ollama-format request bodies rewritten for Ollama endpoints and translated for OpenAI-style ones."""

from __future__ import annotations

import json

import pytest

from switchyard_gateway.services.gateway.translate.plans import (
    CHAT_PATH, COMPLETIONS_PATH, EMBEDDINGS_PATH, TranslationError, ollama_chat_to_openai, ollama_embed_to_openai,
    ollama_generate_path, ollama_generate_request, ollama_generate_to_openai, ollama_model, ollama_plan,
    ollama_set_model,
)
from switchyard_gateway.services.gateway.translate.asks import read_request
from switchyard_gateway.services.gateway.translate.doors import Door


def body(obj) -> bytes:
    return json.dumps(obj).encode()


def test_chat_keeps_system_and_history_and_renames_the_model() -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "why is the sky blue?"},
        {"role": "assistant", "content": "due to rayleigh scattering."},
        {"role": "user", "content": "how is that different than mie scattering?"},
    ]
    out = json.loads(ollama_chat_to_openai(body({"model": "llama3.2:latest", "messages": messages}), "llama3.2"))
    assert out["model"] == "llama3.2"
    assert out["messages"] == messages


def test_chat_streams_by_default_and_always_asks_for_the_usage_chunk() -> None:
    out = json.loads(ollama_chat_to_openai(body({"model": "m", "messages": []}), "m"))
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}
    out = json.loads(ollama_chat_to_openai(body({"model": "m", "messages": [], "stream": False}), "m"))
    assert out["stream"] is False and "stream_options" not in out


def test_options_with_an_openai_twin_are_mapped_and_the_others_dropped() -> None:
    options = {"num_predict": 100, "temperature": 0.8, "top_p": 0.9, "seed": 42, "stop": ["\n", "user:"],
               "presence_penalty": 1.5, "frequency_penalty": 1.0, "top_k": 20, "num_ctx": 1024,
               "repeat_penalty": 1.2, "mirostat": 1, "num_gpu": 1}
    out = json.loads(ollama_chat_to_openai(
        body({"model": "m", "messages": [], "options": options, "keep_alive": "5m", "think": True}), "m"))
    assert {k: v for k, v in out.items() if k not in ("model", "messages", "stream", "stream_options")} == {
        "max_tokens": 100, "temperature": 0.8, "top_p": 0.9, "seed": 42, "stop": ["\n", "user:"],
        "presence_penalty": 1.5, "frequency_penalty": 1.0,
    }


@pytest.mark.parametrize("num_predict", [-1, -2])
def test_unlimited_num_predict_sets_no_max_tokens(num_predict: int) -> None:
    out = json.loads(ollama_chat_to_openai(
        body({"model": "m", "messages": [], "options": {"num_predict": num_predict}}), "m"))
    assert "max_tokens" not in out


def test_format_json_and_schema_become_response_formats() -> None:
    out = json.loads(ollama_chat_to_openai(body({"model": "m", "messages": [], "format": "json"}), "m"))
    assert out["response_format"] == {"type": "json_object"}
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    out = json.loads(ollama_chat_to_openai(body({"model": "m", "messages": [], "format": schema}), "m"))
    assert out["response_format"] == {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}


def test_images_become_data_url_content_parts() -> None:
    png, jpeg = "iVBORw0KGgoAAAANSUhEUgAAAG0AAABmCAYAAADBPx", "/9j/4AAQSkZJRgABAQ"
    out = json.loads(ollama_chat_to_openai(body({"model": "m", "messages": [
        {"role": "user", "content": "what is in this image?", "images": [png, jpeg]}]}), "m"))
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "what is in this image?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{jpeg}"}},
    ]


def test_tools_pass_through_and_tool_results_answer_their_call() -> None:
    tool = {"type": "function", "function": {"name": "get_current_weather", "description": "weather",
                                             "parameters": {"type": "object", "properties": {}}}}
    messages = [
        {"role": "user", "content": "What is the weather today in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_current_weather", "arguments": {"location": "Paris, FR"}}}]},
        {"role": "tool", "content": "22 degrees", "tool_name": "get_current_weather"},
    ]
    out = json.loads(ollama_chat_to_openai(body({"model": "m", "messages": messages, "tools": [tool]}), "m"))
    assert out["tools"] == [tool]
    call = out["messages"][1]["tool_calls"][0]
    assert out["messages"][1]["content"] is None
    assert call["type"] == "function" and call["function"]["name"] == "get_current_weather"
    assert json.loads(call["function"]["arguments"]) == {"location": "Paris, FR"}
    assert out["messages"][2] == {"role": "tool", "content": "22 degrees", "tool_call_id": call["id"]}


@pytest.mark.parametrize("tools", ["[]", "[ ]", "null"])
def test_an_empty_tools_list_is_not_sent_to_an_openai_server(tools: str) -> None:
    """llama-index's Ollama client sends `tools: []` with every chat; OpenAI refuses an empty `tools` (400)."""
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": ' + tools.encode() + b"}"
    out = json.loads(ollama_chat_to_openai(raw, "m"))
    assert "tools" not in out
    assert out["messages"] == [{"role": "user", "content": "hi"}]


def test_unicode_survives_translation() -> None:
    text = "Grüße, 世界 🌍 — \"quoted\" \\ back"
    out = json.loads(ollama_chat_to_openai(body({"model": "m", "messages": [{"role": "user", "content": text}]}), "m"))
    assert out["messages"][0]["content"] == text


def test_generate_becomes_a_chat_call_with_its_system_prompt() -> None:
    raw = body({"model": "llama3.2", "prompt": "Why is the sky blue?", "system": "Answer in one line.",
                "stream": False, "options": {"num_predict": 7}, "context": [1, 2, 3], "template": "{{ .Prompt }}"})
    path, translated = ollama_generate_request(raw, "llama3.2")
    assert path == CHAT_PATH == ollama_generate_path(raw)
    assert json.loads(translated) == {
        "model": "llama3.2", "stream": False, "max_tokens": 7,
        "messages": [{"role": "system", "content": "Answer in one line."},
                     {"role": "user", "content": "Why is the sky blue?"}],
    }
    assert ollama_generate_to_openai(raw, "llama3.2") == translated


@pytest.mark.parametrize("extra", [{"raw": True}, {"suffix": "    return result"}])
def test_raw_or_suffixed_generate_becomes_a_text_completion(extra: dict) -> None:
    raw = body({"model": "codellama:code", "prompt": "def compute_gcd(a, b):", "system": "ignored", **extra})
    path, translated = ollama_generate_request(raw, "codellama")
    assert path == COMPLETIONS_PATH == ollama_generate_path(raw)
    out = json.loads(translated)
    assert out["model"] == "codellama" and out["prompt"] == "def compute_gcd(a, b):" and "messages" not in out
    assert out.get("suffix") == extra.get("suffix")
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}


def test_embed_input_and_legacy_prompt_both_become_openai_input_as_floats() -> None:
    out = json.loads(ollama_embed_to_openai(body({"model": "all-minilm", "input": ["a", "b"], "truncate": True,
                                                  "dimensions": 256, "keep_alive": "5m"}), "minilm"))
    assert out == {"model": "minilm", "input": ["a", "b"], "encoding_format": "float", "dimensions": 256}
    out = json.loads(ollama_embed_to_openai(body({"model": "all-minilm", "prompt": "Here is an article"}), "minilm"))
    assert out == {"model": "minilm", "input": "Here is an article", "encoding_format": "float"}


@pytest.mark.parametrize(("raw", "streams"), [
    (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}', True),
    (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": null}', True),
    (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true}', True),
    (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": false}', False),
])
def test_stream_defaults_to_true_for_ollama(raw: bytes, streams: bool) -> None:
    request = read_request("ollama.chat", raw)
    Door("/api/chat", request, raw)                 # the door decides whether the call streams
    assert request.stream is streams


def test_native_bodies_are_untouched_unless_the_endpoint_knows_another_name() -> None:
    raw = b'{"model": "llama3.2", "messages": [], "options": {"top_k": 3}}'
    assert ollama_set_model(raw, "llama3.2") is raw
    renamed = json.loads(ollama_set_model(raw, "llama3.2:3b"))
    assert renamed == {"model": "llama3.2:3b", "messages": [], "options": {"top_k": 3}}
    assert ollama_model(raw) == "llama3.2" and ollama_model(b"{}") == ""


@pytest.mark.parametrize("raw", [b'{"model": "m", "messages": [', b'{"model": "m", "messages": "hi"}', b"[]"])
def test_unreadable_requests_raise_translation_errors(raw: bytes) -> None:
    with pytest.raises(TranslationError):
        ollama_chat_to_openai(raw, "m")


@pytest.mark.parametrize(("api", "kind", "path"), [
    ("ollama.chat", "ollama", "/api/chat"), ("ollama.generate", "ollama", "/api/generate"),
    ("ollama.embed", "ollama", "/api/embed"), ("ollama.embeddings", "ollama", "/api/embeddings"),
    ("ollama.chat", "openai-compatible", CHAT_PATH), ("ollama.generate", "openai", CHAT_PATH),
    ("ollama.embed", "openai-compatible", EMBEDDINGS_PATH), ("ollama.embeddings", "openai", EMBEDDINGS_PATH),
])
def test_plan_sends_each_ollama_api_to_the_right_upstream_path(api: str, kind: str, path: str) -> None:
    plan = ollama_plan(api, kind)
    raw = body({"model": "m", "messages": [], "prompt": "p", "input": "i"})
    upstream_path, translated = plan.request(raw, "up")
    assert upstream_path == path
    assert json.loads(translated)["model"] == "up"
    assert plan.native is (kind == "ollama")
    assert (plan.answer is None) is plan.native and (plan.error is None) is plan.native
    assert (plan.stream is None) is api.endswith(("embed", "embeddings"))


@pytest.mark.parametrize("api", ["ollama.chat", "ollama.generate", "ollama.embed", "ollama.embeddings"])
def test_plan_reads_usage_in_the_upstreams_own_format(api: str) -> None:
    native = body({"model": "m", "done": True, "prompt_eval_count": 26, "eval_count": 3})
    openai = body({"choices": [], "usage": {"prompt_tokens": 26, "completion_tokens": 3, "total_tokens": 29}})
    assert ollama_plan(api, "ollama").usage(native) == (26, 3, 0)
    assert ollama_plan(api, "openai-compatible").usage(openai) == (26, 3, 0)
    assert ollama_plan(api, "ollama").usage(openai) is None


def test_roles_and_integer_options_are_sent_on_as_ollama_reads_them() -> None:
    """Ollama lowercases a role and truncates any number given for an integer option; an OpenAI-style server
    takes neither `USER` nor a `max_tokens` of 5.0."""
    out = json.loads(ollama_chat_to_openai(body({
        "model": "m", "messages": [{"role": "SYSTEM", "content": "terse"}, {"role": "User", "content": "hi"}],
        "options": {"num_predict": 5.0, "seed": 7.9}}), "m"))
    assert [m["role"] for m in out["messages"]] == ["system", "user"]
    assert (out["max_tokens"], out["seed"]) == (5, 7) and type(out["max_tokens"]) is int
    raw = body({"model": "m", "messages": [], "options": {"num_predict": 900.5}})
    assert json.loads(ollama_set_model(raw, "m", 40))["options"]["num_predict"] == 40
    assert json.loads(ollama_set_model(raw, "m", 1000))["options"]["num_predict"] == 900.5, "kept as written"
