"""Whole OpenAI answers translated to Ollama answers, token counts kept; Ollama counts and error bodies."""

from __future__ import annotations

import array
import base64
import json

import pytest

from switchyard_gateway.services.gateway.translate.plans import (
    TranslationError, ollama_error, ollama_error_line, ollama_usage, openai_chat_to_ollama,
    openai_completion_to_ollama_generate, openai_embeddings_to_ollama_embed, openai_embeddings_to_ollama_embeddings,
    openai_error_to_ollama, openai_usage,
)
from switchyard_gateway.services.gateway.translate.responses import durations, openai_error_body
from switchyard_gateway.services.gateway.translate.wire import Times, Timings, now_ns


def body(obj) -> bytes:
    return json.dumps(obj).encode()


CHAT = body({
    "id": "chatcmpl-9ajD3", "object": "chat.completion", "created": 1_718_000_000, "model": "meta-llama/Llama-3.2-3B",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How are you today?", "refusal": None},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 26, "completion_tokens": 7, "total_tokens": 33},
})


def test_chat_answer_keeps_content_and_usage_as_ollama_counts() -> None:
    out = json.loads(openai_chat_to_ollama(CHAT, "llama3.2"))
    assert out == {
        "model": "llama3.2", "created_at": "2024-06-10T06:13:20.000000Z",
        "message": {"role": "assistant", "content": "Hello! How are you today?"},
        "done_reason": "stop", "done": True, "prompt_eval_count": 26, "eval_count": 7,
    }
    assert ollama_usage(openai_chat_to_ollama(CHAT, "llama3.2")) == (26, 7, 0)


def test_measured_times_become_the_ollama_durations() -> None:
    """Arrived at 0, sent upstream at 2 ms, answered at 12 ms: no upstream timings, so the upstream's 10 ms
    are evaluation, and no prompt evaluation is shown (Ollama leaves a zero duration out)."""
    out = durations(Times(1_000_000_000, 1_002_000_000), None, now=1_012_000_000)
    assert out == {"total_duration": 12_000_000, "load_duration": 2_000_000, "eval_duration": 10_000_000}
    now = now_ns()
    answer = json.loads(openai_chat_to_ollama(CHAT, "llama3.2", Times(now - 5_000_000, now - 1_000_000)))
    assert answer["total_duration"] >= 5_000_000 and answer["load_duration"] == 4_000_000
    assert answer["total_duration"] == answer["load_duration"] + answer["eval_duration"]


def test_upstream_timings_split_the_upstream_time_between_prompt_and_output() -> None:
    """llama.cpp's `timings` (prompt_ms, predicted_ms) say how its time went; never more than was measured."""
    times = Times(0, 1_000_000)
    assert durations(times, Timings(prompt_ms=3.0, predicted_ms=5.0), now=11_000_000) == {
        "total_duration": 11_000_000, "load_duration": 1_000_000, "prompt_eval_duration": 3_000_000,
        "eval_duration": 5_000_000}
    capped = durations(times, Timings(prompt_ms=500.0, predicted_ms=500.0), now=11_000_000)
    assert capped["prompt_eval_duration"] + capped["eval_duration"] <= 10_000_000 and capped["eval_duration"] >= 1
    with_timings = body({"created": 1, "choices": [{"index": 0, "finish_reason": "length", "message": {
        "role": "assistant", "content": "x"}}], "usage": {"prompt_tokens": 54, "completion_tokens": 4},
        "timings": {"prompt_n": 54, "prompt_ms": 2.766, "predicted_n": 4, "predicted_ms": 0.534}})
    generated = json.loads(openai_completion_to_ollama_generate(with_timings, "m", Times(now_ns() - 10**9, now_ns() - 10**9)))
    assert (generated["prompt_eval_duration"], generated["eval_duration"]) == (2_766_000, 534_000)


def test_no_times_no_durations() -> None:
    assert "total_duration" not in json.loads(openai_chat_to_ollama(CHAT, "llama3.2"))


def test_length_finish_is_kept_and_tool_calls_become_objects_with_their_ids() -> None:
    data = body({"created": 1, "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_current_weather", "arguments": "{\"location\": \"Paris, FR\", \"format\": \"celsius\"}"}}]}}],
        "usage": {"prompt_tokens": 122, "completion_tokens": 33, "total_tokens": 155}})
    out = json.loads(openai_chat_to_ollama(data, "m"))
    assert out["message"] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "function": {"name": "get_current_weather",
                                      "arguments": {"location": "Paris, FR", "format": "celsius"}}}]}
    assert out["done_reason"] == "stop"
    cut = json.loads(openai_chat_to_ollama(CHAT.replace(b'"stop"', b'"length"'), "m"))
    assert cut["done_reason"] == "length"


def test_reasoning_becomes_thinking() -> None:
    data = body({"choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "42", "reasoning_content": "6 times 7"}}]})
    assert json.loads(openai_chat_to_ollama(data, "m"))["message"] == {
        "role": "assistant", "content": "42", "thinking": "6 times 7"}


def test_missing_usage_leaves_counts_out_and_total_only_usage_still_counts() -> None:
    no_usage = json.loads(openai_chat_to_ollama(body({"choices": [{"message": {"content": "hi"}}]}), "m"))
    assert "eval_count" not in no_usage and "prompt_eval_count" not in no_usage
    assert ollama_usage(body(no_usage)) is None
    total_only = body({"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 5, "total_tokens": 9}})
    assert ollama_usage(openai_chat_to_ollama(total_only, "m")) == (5, 4, 0)


def test_text_completion_becomes_a_generate_answer() -> None:
    data = body({"id": "cmpl-1", "object": "text_completion", "created": 1_700_000_000, "model": "codellama",
                 "choices": [{"index": 0, "text": "\n  if a == 0:\n    return b", "logprobs": None,
                              "finish_reason": "length"}],
                 "usage": {"prompt_tokens": 17, "completion_tokens": 63, "total_tokens": 80}})
    out = json.loads(openai_completion_to_ollama_generate(data, "codellama:code"))
    assert out == {"model": "codellama:code", "created_at": "2023-11-14T22:13:20.000000Z",
                   "response": "\n  if a == 0:\n    return b", "done_reason": "length", "done": True,
                   "prompt_eval_count": 17, "eval_count": 63}


def test_chat_completion_sent_for_generate_becomes_a_generate_answer() -> None:
    out = json.loads(openai_completion_to_ollama_generate(CHAT, "llama3.2"))
    assert out["response"] == "Hello! How are you today?" and "message" not in out
    assert (out["prompt_eval_count"], out["eval_count"]) == (26, 7)


def test_multiple_choices_keep_the_first() -> None:
    data = body({"choices": [{"index": 1, "text": "second"}, {"index": 0, "text": "first"}]})
    assert json.loads(openai_completion_to_ollama_generate(data, "m"))["response"] == "first"


EMBEDDINGS = body({
    "object": "list", "model": "nomic-embed-text",
    "data": [{"object": "embedding", "index": 1, "embedding": [0.25, -0.5]},
             {"object": "embedding", "index": 0, "embedding": [0.010071029, -0.0017594862]}],
    "usage": {"prompt_tokens": 8, "total_tokens": 8},
})


def test_embeddings_become_an_embed_answer_in_input_order() -> None:
    out = json.loads(openai_embeddings_to_ollama_embed(EMBEDDINGS, "nomic-embed-text:latest"))
    assert out == {"model": "nomic-embed-text:latest", "embeddings": [[0.010071029, -0.0017594862], [0.25, -0.5]],
                   "prompt_eval_count": 8}
    assert ollama_usage(openai_embeddings_to_ollama_embed(EMBEDDINGS, "m")) == (8, 0, 0)


def test_legacy_embeddings_answer_is_the_first_vector() -> None:
    assert json.loads(openai_embeddings_to_ollama_embeddings(EMBEDDINGS)) == {
        "embedding": [0.010071029, -0.0017594862]}
    assert json.loads(openai_embeddings_to_ollama_embeddings(body({"data": []}))) == {"embedding": []}


def test_base64_vectors_from_the_upstream_are_decoded_to_floats() -> None:
    encoded = base64.b64encode(array.array("f", [0.5, -0.25, 1.0]).tobytes()).decode()
    data = body({"data": [{"index": 0, "embedding": encoded}], "usage": {"prompt_tokens": 2, "total_tokens": 2}})
    assert json.loads(openai_embeddings_to_ollama_embed(data, "m"))["embeddings"] == [[0.5, -0.25, 1.0]]


@pytest.mark.parametrize("data", [b"<html>bad gateway</html>", b'{"choices": "nope"}'])
def test_unreadable_answers_raise_translation_errors(data: bytes) -> None:
    with pytest.raises(TranslationError):
        openai_chat_to_ollama(data, "m")


def test_ollama_counts_come_from_whole_answers_and_are_absent_otherwise() -> None:
    native = body({"model": "llama3.2", "created_at": "2023-08-04T19:22:45.499127Z", "response": "The sky",
                   "done": True, "context": [1, 2, 3], "total_duration": 5043500667, "prompt_eval_count": 26,
                   "eval_count": 290})
    assert ollama_usage(native) == (26, 290, 0)
    assert ollama_usage(body({"model": "all-minilm", "embeddings": [[0.1]], "prompt_eval_count": 8})) == (8, 0, 0)
    assert ollama_usage(body({"embedding": [0.5]})) is None
    assert ollama_usage(b"not json") is None


def test_openai_usage_is_read_from_completions_and_embeddings() -> None:
    assert openai_usage(CHAT) == (26, 7, 0)
    assert openai_usage(EMBEDDINGS) == (8, 0, 0)
    assert openai_usage(body({"choices": []})) is None and openai_usage(b"<html>") is None


def test_errors_are_ollama_shaped() -> None:
    assert json.loads(ollama_error("model 'x' not found")) == {"error": "model 'x' not found"}
    line = ollama_error_line("stream cut")
    assert line.endswith(b"\n") and json.loads(line) == {"error": "stream cut"}
    upstream = body({"error": {"message": "This model's maximum context length is 8192 tokens.",
                               "type": "invalid_request_error", "param": "messages", "code": None}})
    assert json.loads(openai_error_to_ollama(upstream)) == {
        "error": "This model's maximum context length is 8192 tokens."}
    assert json.loads(openai_error_to_ollama(body({"message": "overloaded"}))) == {"error": "overloaded"}
    assert json.loads(openai_error_to_ollama(b"Internal Server Error")) == {"error": "Internal Server Error"}


CACHED_CHAT = body({
    **json.loads(CHAT),
    "usage": {"prompt_tokens": 97, "completion_tokens": 7, "total_tokens": 104,
              "prompt_tokens_details": {"cached_tokens": 96}},
})


def test_cached_prompt_tokens_are_read_and_carried_into_the_ollama_answer() -> None:
    assert openai_usage(CACHED_CHAT) == (97, 7, 96)
    out = json.loads(openai_chat_to_ollama(CACHED_CHAT, "llama3.2"))
    assert (out["prompt_eval_count"], out["prompt_eval_cached_count"], out["eval_count"]) == (97, 96, 7)
    generated = json.loads(openai_completion_to_ollama_generate(CACHED_CHAT, "llama3.2"))
    assert generated["prompt_eval_cached_count"] == 96
    assert "prompt_eval_cached_count" not in json.loads(openai_chat_to_ollama(CHAT, "llama3.2"))


def test_ollama_cached_count_is_read_from_native_answers() -> None:
    native = body({"model": "llama3.2", "response": "x", "done": True, "prompt_eval_count": 40,
                   "prompt_eval_cached_count": 32, "eval_count": 5})
    assert ollama_usage(native) == (40, 5, 32)


def test_openai_door_keeps_an_openai_error_and_wraps_any_other() -> None:
    own = body({"error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}})
    assert openai_error_body(own) == own
    for other, message in ((body({"error": "model not loaded"}), "model not loaded"),
                           (body({"detail": "Not Found"}), "Not Found"), (b"<html>oops</html>", "<html>oops</html>"),
                           (b"", "upstream error")):
        wrapped = json.loads(openai_error_body(other))
        assert wrapped == {"error": {"message": message, "type": "upstream_error", "param": None,
                                     "code": "upstream_error"}}
