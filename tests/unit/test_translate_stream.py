"""Streams on the Ollama door: OpenAI SSE chunks become NDJSON lines; native NDJSON is relayed whole and counted."""

from __future__ import annotations

import itertools
import json
import time
from datetime import UTC, datetime

import pytest

from switchyard_gateway.http1 import AnswerTooLarge
from switchyard_gateway.services.gateway.translate.anthropic_stream import OllamaStreamToAnthropic, \
    OpenAIStreamToAnthropic
from switchyard_gateway.services.gateway.translate.plans import OllamaStreamTap, OpenAIStreamToOllama
from switchyard_gateway.services.gateway.translate.wire import believable
from switchyard_gateway.services.gateway.translate.sse import MAX_EVENT_BYTES, SseTap
from switchyard_gateway.services.gateway.translate.wire import Times, TokenCounts

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_718_000_000, "model": "llama3.2"}


def sse(obj) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


def chunk(delta=None, finish=None, **extra) -> bytes:
    choice = {"index": 0, "delta": delta if delta is not None else {}, "logprobs": None, "finish_reason": finish}
    return sse({**HEAD, "choices": [choice], **extra})


CHAT_STREAM = b"".join([
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo 🌍"}),
    chunk({}, "stop"),
    sse({**HEAD, "choices": [], "usage": {"prompt_tokens": 26, "completion_tokens": 2, "total_tokens": 28}}),
    sse(b"[DONE]"),
])


def ticking_clock(step_ns: int = 1_000):
    counter = itertools.count(0, step_ns)
    return lambda: next(counter)


def translate(stream: OpenAIStreamToOllama, data: bytes, size: int) -> list[dict]:
    out = b"".join(stream.feed(data[i:i + size]) for i in range(0, len(data), size)) + stream.finish()
    assert out.endswith(b"\n")
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.parametrize("size", [1, 5, 64, len(CHAT_STREAM)])
def test_chat_stream_becomes_content_lines_and_a_final_line_with_usage(size: int) -> None:
    stream = OpenAIStreamToOllama("llama3.2", "chat", clock=ticking_clock())
    lines = translate(stream, CHAT_STREAM, size)
    assert [line["message"]["content"] for line in lines] == ["Hel", "lo 🌍", ""]
    assert [line["done"] for line in lines] == [False, False, True]
    assert all(line["model"] == "llama3.2" and line["created_at"] > "2026" for line in lines), "now, not `created`"
    final = lines[-1]
    assert final["done_reason"] == "stop"
    assert (final["prompt_eval_count"], final["eval_count"]) == (26, 2)
    assert final["total_duration"] > 0 and final["prompt_eval_duration"] > 0 and final["eval_duration"] > 0
    assert final["total_duration"] >= final["prompt_eval_duration"] + final["eval_duration"]
    # the estimate had none come: "Hel" and "lo 🌍" as JSON wrote them (18 bytes, the emoji escaped), a token per 4
    assert stream.usage == (26, 2, 0) and stream.done and stream.content_events == 5 and stream.error is None


def test_each_line_is_stamped_when_it_was_written_as_ollama_stamps_its_lines() -> None:
    """Every line carried the upstream's one `created`, to the second."""
    def moment(line: bytes) -> datetime:
        return datetime.fromisoformat(json.loads(line)["created_at"].replace("Z", "+00:00"))

    stream = OpenAIStreamToOllama("m", "chat")
    first = moment(stream.feed(chunk({"content": "a"})))
    deadline = time.monotonic() + 5
    while datetime.now(UTC) <= first:          # the clock moves on past the first line
        assert time.monotonic() < deadline
    second = moment(stream.feed(chunk({"content": "b"}, "stop")))
    last = moment(stream.finish())
    assert first < second <= last <= datetime.now(UTC), (first, second, last)


def test_stream_without_usage_chunk_estimates_what_was_written_and_omits_prompt_count() -> None:
    data = chunk({"role": "assistant"}) + chunk({"content": "ab"}) + chunk({"content": "cde"}) \
        + chunk({"content": "f"}, "length") + sse(b"[DONE]")
    stream = OpenAIStreamToOllama("m", "chat")
    final = translate(stream, data, 7)[-1]
    assert stream.usage is None and stream.content_events == 2          # 6 bytes written, a token per 4
    assert final["eval_count"] == 2 and "prompt_eval_count" not in final and final["done_reason"] == "length"


def test_usage_on_the_last_content_chunk_is_taken() -> None:
    data = chunk({"content": "x"}, "stop", usage={"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}) \
        + sse(b"[DONE]")
    stream = OpenAIStreamToOllama("m", "chat")
    assert translate(stream, data, 3)[-1]["eval_count"] == 1 and stream.usage == (4, 1, 0)


def test_completion_stream_becomes_generate_lines() -> None:
    head = {"id": "cmpl-1", "object": "text_completion", "created": 1_700_000_000, "model": "m"}
    data = b"".join([
        sse({**head, "choices": [{"index": 0, "text": "The", "finish_reason": None}]}),
        sse({**head, "choices": [{"index": 0, "text": " sky", "finish_reason": None}]}),
        sse({**head, "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}),
        sse({**head, "choices": [], "usage": {"prompt_tokens": 6, "completion_tokens": 2, "total_tokens": 8}}),
        sse(b"[DONE]"),
    ])
    lines = translate(OpenAIStreamToOllama("m", "generate"), data, 11)
    assert [line["response"] for line in lines] == ["The", " sky", ""]
    assert "message" not in lines[0] and lines[-1]["done"] is True
    assert (lines[-1]["prompt_eval_count"], lines[-1]["eval_count"]) == (6, 2)


def test_chat_chunks_also_feed_a_generate_stream() -> None:
    lines = translate(OpenAIStreamToOllama("m", "generate"), CHAT_STREAM, 9)
    assert [line["response"] for line in lines] == ["Hel", "lo 🌍", ""]


def test_streamed_tool_call_fragments_are_joined_into_one_tool_call_line_with_its_id() -> None:
    data = b"".join([
        chunk({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                    "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"location\": "}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
        chunk({}, "tool_calls"),
        sse(b"[DONE]"),
    ])
    lines = translate(OpenAIStreamToOllama("m", "chat", Times(0, 0), clock=ticking_clock()), data, 13)
    assert len(lines) == 2
    assert lines[0]["message"]["tool_calls"] == [
        {"id": "call_1", "function": {"name": "get_weather", "arguments": {"location": "Paris"}}}]
    assert lines[0]["done"] is False and lines[1]["done"] is True and lines[1]["done_reason"] == "stop"
    assert lines[1]["eval_duration"] > 1, "the calls are output: their time is evaluation, not the prompt's"


def test_calls_keep_the_order_they_began_and_a_new_id_under_a_used_index_is_a_call_of_its_own() -> None:
    """A server may number the calls after a text run from 0 again (the second call's arguments were appended to
    the first's, which then held no JSON object); parallel calls whose pieces interleave each keep theirs."""
    data = b"".join([
        chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                               "function": {"name": "second_begun_first", "arguments": '{"n": '}}]}),
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                               "function": {"name": "get_weather", "arguments": '{"city": "A"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": "1}"}}]}),
        chunk({"content": "And the next."}),
        chunk({"tool_calls": [{"index": 0, "id": "call_c", "type": "function",
                               "function": {"name": "get_time", "arguments": "{}"}}]}),
        chunk({}, "tool_calls"),
        sse(b"[DONE]"),
    ])
    lines = translate(OpenAIStreamToOllama("m", "chat", Times(0, 0), clock=ticking_clock()), data, 7)
    calls = [call for line in lines for call in line["message"].get("tool_calls", [])]
    assert calls == [
        {"id": "call_b", "function": {"name": "second_begun_first", "arguments": {"n": 1}}},
        {"id": "call_a", "function": {"name": "get_weather", "arguments": {"city": "A"}}},
        {"id": "call_c", "function": {"name": "get_time", "arguments": {}}}]


def test_reasoning_deltas_become_thinking() -> None:
    data = chunk({"reasoning_content": "hmm"}) + chunk({"content": "ok"}) + sse(b"[DONE]")
    lines = translate(OpenAIStreamToOllama("m", "chat"), data, 100)
    assert lines[0]["message"] == {"role": "assistant", "content": "", "thinking": "hmm"}
    assert lines[1]["message"] == {"role": "assistant", "content": "ok"}


def test_crlf_comments_and_events_without_data_are_understood() -> None:
    data = (b": keep-alive\r\n\r\n" + chunk({"content": "hi"}) + b"event: ping\n\n" + sse(b"[DONE]")) \
        .replace(b"\n\n", b"\r\n\r\n")
    stream = OpenAIStreamToOllama("m", "chat")
    lines = translate(stream, data, 4)
    assert [line["message"]["content"] for line in lines] == ["hi", ""] and stream.done


def test_an_error_event_becomes_an_ollama_error_line() -> None:
    data = chunk({"content": "par"}) + sse({"error": {"message": "model overloaded", "type": "server_error"}})
    stream = OpenAIStreamToOllama("m", "chat")
    out = stream.feed(data)
    assert json.loads(out.splitlines()[-1]) == {"error": "model overloaded"}
    assert stream.error == "model overloaded" and not stream.done


def test_a_cut_stream_is_not_done_and_keeps_what_it_translated() -> None:
    stream = OpenAIStreamToOllama("m", "chat")
    cut_at = CHAT_STREAM.index(b'"finish_reason": "stop"')     # inside the chunk after the second text
    out = stream.feed(CHAT_STREAM[:cut_at])
    assert not stream.done and stream.usage is None
    assert [json.loads(line)["message"]["content"] for line in out.splitlines()] == ["Hel", "lo 🌍"]


def test_last_event_without_its_blank_line_is_still_read_at_finish() -> None:
    stream = OpenAIStreamToOllama("m", "chat")
    unterminated = b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}'
    stream.feed(chunk({"content": "a"}) + unterminated)
    final = json.loads(stream.finish().splitlines()[-1])
    assert stream.usage == (3, 1, 0) and final["prompt_eval_count"] == 3


NATIVE = b"".join(json.dumps(line).encode() + b"\n" for line in [
    {"model": "llama3.2", "created_at": "2023-08-04T08:52:19.385406455-07:00",
     "message": {"role": "assistant", "content": "The"}, "done": False},
    {"model": "llama3.2", "created_at": "2023-08-04T08:52:19.385406455-07:00",
     "message": {"role": "assistant", "content": " sky \"done\":true"}, "done": False},
    {"model": "llama3.2", "created_at": "2023-08-04T19:22:45.499127Z", "message": {"role": "assistant", "content": ""},
     "done_reason": "stop", "done": True, "total_duration": 4883583458, "load_duration": 1334875,
     "prompt_eval_count": 26, "prompt_eval_duration": 342546000, "eval_count": 282, "eval_duration": 4535599000},
])


@pytest.mark.parametrize("size", [1, 10, 100, len(NATIVE)])
def test_native_stream_is_relayed_in_whole_lines_and_its_counts_read(size: int) -> None:
    tap = OllamaStreamTap()
    pieces = [tap.feed(NATIVE[i:i + size]) for i in range(0, len(NATIVE), size)]
    assert all(piece == b"" or piece.endswith(b"\n") for piece in pieces)
    assert b"".join(pieces) + tap.close() == NATIVE
    assert tap.done and tap.usage == (26, 282, 0) and tap.content_events == 2 and tap.error is None


def test_native_stream_cut_before_the_last_line_is_not_done() -> None:
    tap = OllamaStreamTap()
    cut = NATIVE[: NATIVE.rindex(b'{"model"')] + b'{"model": "llama3.2", "done"'
    out = tap.feed(cut) + tap.finish()
    assert out == cut and not tap.done and tap.usage is None and tap.content_events == 2


def test_native_error_line_is_relayed_and_noted() -> None:
    tap = OllamaStreamTap()
    line = b'{"error":"an error was encountered while running the model"}\n'
    assert tap.feed(line) == line
    assert tap.error == "an error was encountered while running the model" and not tap.done


def test_cached_prompt_tokens_of_a_stream_reach_the_final_ollama_line() -> None:
    cached = CHAT_STREAM.replace(b'"total_tokens": 28}',
                                 b'"total_tokens": 28, "prompt_tokens_details": {"cached_tokens": 25}}')
    stream = OpenAIStreamToOllama("llama3.2", "generate", clock=ticking_clock())
    final = translate(stream, cached, 7)[-1]
    assert (final["prompt_eval_count"], final["prompt_eval_cached_count"], final["eval_count"]) == (26, 25, 2)
    assert stream.usage == (26, 2, 25)
    plain = translate(OpenAIStreamToOllama("llama3.2", "chat", clock=ticking_clock()), CHAT_STREAM, 64)[-1]
    assert "prompt_eval_cached_count" not in plain


def test_native_stream_cached_count_is_read() -> None:
    tap = OllamaStreamTap()
    tap.feed(NATIVE.replace(b'"eval_count": 282', b'"eval_count": 282, "prompt_eval_cached_count": 20'))
    assert tap.usage == (26, 282, 20)


def test_stream_durations_run_from_the_calls_arrival_through_its_first_token() -> None:
    """Arrived 4 µs before it was sent upstream, 1 µs before the clock starts; then the clock ticks: load is the wait before the upstream was asked,
    prompt evaluation runs to the first token, and the four durations add up to the total."""
    clock = ticking_clock(step_ns=1_000)
    stream = OpenAIStreamToOllama("llama3.2", "chat", Times(-5_000, -1_000), clock=clock)
    final = translate(stream, CHAT_STREAM, 64)[-1]
    assert final["load_duration"] == 4_000
    assert final["prompt_eval_duration"] > 0 and final["eval_duration"] > 0
    assert final["total_duration"] == final["load_duration"] + final["prompt_eval_duration"] + final["eval_duration"]


@pytest.mark.parametrize("make", [
    lambda: SseTap(keep_usage=True),
    lambda: OllamaStreamTap(),
    lambda: OpenAIStreamToOllama("m", "chat"),
    lambda: OpenAIStreamToAnthropic("m"),
    lambda: OllamaStreamToAnthropic("m"),
], ids=["openai", "ollama", "openai-to-ollama", "openai-to-anthropic", "ollama-to-anthropic"])
def test_an_event_that_never_ends_is_a_cut_stream_once_past_the_bound(make) -> None:
    """An upstream that sends one event (or line) for ever would otherwise be kept whole in the worker's memory."""
    tap = make()
    piece = b"x" * 65536
    opening = b'data: {"choices": [{"delta": {"content": "'
    assert tap.feed(opening + piece) == b""
    held = len(opening) + len(piece)
    with pytest.raises(AnswerTooLarge, match="without its end"):
        while held <= MAX_EVENT_BYTES + len(piece):
            held += len(piece)
            tap.feed(piece)
    assert held > MAX_EVENT_BYTES                     # not refused before its bound


AFTER_COUNT = 987654321  # long enough that no random id in a translated stream holds it by chance
AFTER_DONE_SSE = chunk({"content": "AFTERDONE"}) + sse({**HEAD, "choices": [], "usage": {
    "prompt_tokens": AFTER_COUNT, "completion_tokens": AFTER_COUNT, "total_tokens": 2 * AFTER_COUNT}})
AFTER_DONE_NDJSON = json.dumps({"model": "llama3.2", "message": {"role": "assistant", "content": "AFTERDONE"},
                                "done": True, "prompt_eval_count": AFTER_COUNT,
                                "eval_count": AFTER_COUNT}).encode() + b"\n"
TAPS = {  # name: (make, its upstream's stream, what comes after its end, the counts it reports)
    "openai": (lambda: SseTap(keep_usage=True), CHAT_STREAM, AFTER_DONE_SSE, (26, 2, 0)),
    "ollama": (OllamaStreamTap, NATIVE, AFTER_DONE_NDJSON, (26, 282, 0)),
    "openai-to-ollama": (lambda: OpenAIStreamToOllama("m", "chat"), CHAT_STREAM, AFTER_DONE_SSE, (26, 2, 0)),
    "openai-to-anthropic": (lambda: OpenAIStreamToAnthropic("m"), CHAT_STREAM, AFTER_DONE_SSE, (26, 2, 0)),
    "ollama-to-anthropic": (lambda: OllamaStreamToAnthropic("m"), NATIVE, AFTER_DONE_NDJSON, (26, 282, 0)),
}


@pytest.mark.parametrize("name", TAPS)
def test_a_last_event_or_line_without_its_terminator_ends_the_stream_when_the_body_ends(name: str) -> None:
    """`data: [DONE]` with no blank line after it, or Ollama's last line with no newline, ended a stream the relay
    then called cut (an error event after the answer, the outcome `error`, the tokens estimated)."""
    make, stream, _, counts = TAPS[name]
    for tail in (b"", b"\n"):                        # SSE: no blank line, or only its first newline
        tap = make()
        data = stream.rstrip(b"\n") + tail
        for i in range(0, len(data), 7):
            tap.feed(data[i:i + 7])
        assert not tap.done or (tail and name in ("ollama", "ollama-to-anthropic")), (name, tail)
        tap.ended()
        assert tap.done and tap.usage == counts, (name, tail)
        assert tap.ended() == b""                       # once


@pytest.mark.parametrize("name", TAPS)
def test_nothing_after_the_end_of_a_stream_is_relayed_or_counted(name: str) -> None:
    """Data after `[DONE]` (or after Ollama's done line) reached the client, and a usage chunk there replaced the
    stream's own counts (its counts billed for 26/2)."""
    make, stream, after, counts = TAPS[name]
    for size in (3, len(stream) + len(after)):
        tap = make()
        data = stream + after
        out = b"".join(tap.feed(data[i:i + size]) for i in range(0, len(data), size)) + tap.ended() + tap.finish()
        assert tap.done and tap.usage == counts, (name, size)
        assert b"AFTERDONE" not in out and str(AFTER_COUNT).encode() not in out, (name, size)


@pytest.mark.parametrize("name", ["openai", "openai-to-ollama", "openai-to-anthropic"])
def test_a_finished_answer_whose_body_ends_without_done_is_whole_and_one_cut_before_its_finish_is_not(
        name: str) -> None:
    """A server that ends its body cleanly after the finish_reason and the usage chunk, without `[DONE]`, has
    answered: the stream was called cut (an error after the answer, the outcome `error`)."""
    make, stream, _, counts = TAPS[name]
    without_done = stream.replace(sse(b"[DONE]"), b"")
    tap = make()
    out = tap.feed(without_done)
    assert not tap.done
    out += tap.ended()
    assert tap.done and tap.usage == counts
    if name == "openai":
        assert out.endswith(b"data: [DONE]\n\n") and out.count(b"[DONE]") == 1   # the client gets its end
    unfinished = make()
    unfinished.feed(stream[:stream.index(b'"finish_reason": "stop"') - 60].rsplit(b"\n\n", 1)[0] + b"\n\n")
    unfinished.ended()
    assert not unfinished.done


WITHOUT_USAGE = CHAT_STREAM.replace(
    sse({**HEAD, "choices": [], "usage": {"prompt_tokens": 26, "completion_tokens": 2, "total_tokens": 28}}), b"")


def test_a_client_that_asked_for_usage_gets_the_gateways_counts_when_the_upstream_sends_none() -> None:
    """`stream_options.include_usage` promises a last chunk with usage; an upstream that ignores it left the client
    with none, while the gateway recorded its own estimate. The client now gets that estimate, before [DONE]."""
    tap = SseTap(keep_usage=True)
    out = b"".join(tap.feed(WITHOUT_USAGE[i:i + 9]) for i in range(0, len(WITHOUT_USAGE), 9)) + tap.ended()
    assert tap.done and tap.usage is None and b"[DONE]" not in out            # held for the usage chunk
    tap.estimate = TokenCounts(31, tap.content_events)
    out += tap.finish()
    events = [json.loads(e[6:]) for e in out.split(b"\n\n") if e.startswith(b"data: {")]
    assert out.endswith(b"data: [DONE]\n\n") and out.count(b"[DONE]") == 1
    assert events[-1] == {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_718_000_000,
                          "model": "llama3.2", "choices": [],
                          "usage": {"prompt_tokens": 31, "completion_tokens": tap.content_events,
                                    "total_tokens": 31 + tap.content_events}}
    plain = SseTap(keep_usage=False)                                           # not asked: nothing added
    relayed = plain.feed(WITHOUT_USAGE) + plain.ended()
    plain.estimate = TokenCounts(31, 2)
    assert (relayed + plain.finish()).endswith(b"data: [DONE]\n\n") and b'"usage"' not in relayed + plain.finish()


def test_translated_streams_show_the_gateways_counts_when_the_upstream_sends_none() -> None:
    ollama = OpenAIStreamToOllama("m", "chat")
    ollama.feed(WITHOUT_USAGE)
    ollama.estimate = TokenCounts(31, 2)
    assert json.loads(ollama.finish().splitlines()[-1])["prompt_eval_count"] == 31
    anthropic = OpenAIStreamToAnthropic("m")
    anthropic.feed(WITHOUT_USAGE)
    anthropic.estimate = TokenCounts(31, 2)
    delta = next(json.loads(block.split("\ndata: ")[1]) for block in anthropic.finish().decode().split("\n\n")
                 if block.startswith("event: message_delta"))
    assert delta["usage"]["input_tokens"] == 31 and delta["usage"]["output_tokens"] == 2


@pytest.mark.parametrize(("make", "answer"), [
    (lambda: SseTap(keep_usage=False), b"<html><body>oops</body></html>\n\n"),
    (lambda: SseTap(keep_usage=True), b'{"id": "x", "choices": [{"message": {"content": "whole"}}]}'),
    (OllamaStreamTap, b"<html><body>oops</body></html>\n"),
])
def test_an_answer_that_is_no_stream_is_refused_before_a_byte_is_relayed(make, answer: bytes) -> None:
    """A 200 that is a page of HTML, or a whole JSON answer from a server that does not stream, was relayed as it
    came with a cut event after it; refused now (ResponseCut), before anything reached the client, it is the
    endpoint's failure and the call moves on."""
    from switchyard_gateway.http1 import ResponseCut
    tap = make()
    with pytest.raises(ResponseCut, match="not"):
        tap.feed(answer)
        tap.ended()
    ok = make()
    ok.feed(b"\n")                                  # a newline before the first event or line is no verdict
    ok.feed(CHAT_STREAM if isinstance(ok, SseTap) else NATIVE)
    assert ok.done


@pytest.mark.parametrize("make", [OllamaStreamTap, lambda: OllamaStreamToAnthropic("m")])
def test_an_ollama_last_line_whose_counts_are_not_numbers_still_ends_the_stream(make) -> None:
    """`"prompt_eval_count": "7"` on the done line: the line did not read, so the stream was never done and the
    relay called it cut; it is done now, its counts left to the gateway's estimate."""
    tap = make()
    lines = NATIVE.replace(b'"prompt_eval_count": 26', b'"prompt_eval_count": "26"')
    tap.feed(lines)
    assert tap.done and believable(tap.usage) is None      # not believed: the relay estimates them
