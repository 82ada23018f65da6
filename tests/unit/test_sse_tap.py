"""The stream tap: whole events out, usage found, the usage chunk dropped unless asked for."""

from __future__ import annotations

import json

from switchyard_gateway.services.gateway.translate.sse import SseTap


def sse(obj) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj, separators=(",", ":")).encode()) + b"\n\n"


STREAM = b"".join([
    sse({"choices": [{"delta": {"role": "assistant"}}]}),
    sse({"choices": [{"delta": {"content": "Hel"}}]}),
    sse({"choices": [{"delta": {"content": "lo"}}]}),
    sse({"choices": [{"delta": {}, "finish_reason": "stop"}]}),
    sse({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}}),
    sse(b"[DONE]"),
])


def relay(tap: SseTap, data: bytes, size: int) -> bytes:
    out = b"".join(tap.feed(data[i:i + size]) for i in range(0, len(data), size))
    return out + tap.finish()


def test_usage_chunk_is_dropped_when_the_client_did_not_ask_for_it() -> None:
    for size in (1, 7, 64, len(STREAM)):
        tap = SseTap(keep_usage=False)
        out = relay(tap, STREAM, size)
        assert b'"usage"' not in out and out.endswith(b"data: [DONE]\n\n")
        assert tap.usage == (4, 2, 0)
        assert tap.done and tap.content_events == 2


def test_usage_chunk_is_kept_when_asked_for() -> None:
    tap = SseTap(keep_usage=True)
    assert relay(tap, STREAM, 13) == STREAM


def test_only_whole_events_are_forwarded() -> None:
    tap = SseTap(keep_usage=True)
    assert tap.feed(STREAM[:10]) == b""
    out = tap.feed(STREAM[10:80])
    assert out.endswith(b"\n\n") and out.count(b"data: ") >= 1


def test_cut_stream_is_not_done() -> None:
    tap = SseTap(keep_usage=False)
    relay(tap, STREAM[: len(STREAM) // 2], 16)
    assert not tap.done and tap.usage is None and tap.content_events >= 1


NULL_USAGE_STREAM = b"".join([
    sse({"id": "c1", "choices": [{"delta": {"content": "Hi"}}], "usage": None}),
    sse({"usage": None, "id": "c1", "choices": [{"delta": {}, "finish_reason": "stop"}]}),
    sse({"id": "c1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}),
    sse(b"[DONE]"),
])


def test_null_usage_fields_are_dropped_unless_the_client_asked_for_usage() -> None:
    for size in (5, 64, len(NULL_USAGE_STREAM)):
        tap = SseTap(keep_usage=False)
        out = relay(tap, NULL_USAGE_STREAM, size)
        assert b'"usage"' not in out and tap.usage == (3, 1, 0)
        events = [json.loads(e[6:]) for e in out.split(b"\n\n") if e and e != b"data: [DONE]"]
        assert [e["choices"] for e in events] == [[{"delta": {"content": "Hi"}}],
                                                  [{"delta": {}, "finish_reason": "stop"}]]
    assert relay(SseTap(keep_usage=True), NULL_USAGE_STREAM, 9) == NULL_USAGE_STREAM


def test_cached_prompt_tokens_are_read_from_the_usage_chunk() -> None:
    stream = STREAM.replace(b'"total_tokens":6}', b'"total_tokens":6,"prompt_tokens_details":{"cached_tokens":3}}')
    for size in (3, len(stream)):
        tap = SseTap(keep_usage=True)
        assert relay(tap, stream, size) == stream
        assert tap.usage == (4, 2, 3)


def test_odd_prompt_tokens_details_count_no_cached_tokens() -> None:
    for details in (b"null", b"[]", b'{"cached_tokens":"9"}', b'{"cached_tokens":-2}', b'{"cached_tokens":true}'):
        stream = STREAM.replace(b'"total_tokens":6}', b'"total_tokens":6,"prompt_tokens_details":' + details + b"}")
        tap = SseTap(keep_usage=False)
        relay(tap, stream, 64)
        assert tap.usage == (4, 2, 0), details


def test_other_spellings_the_format_allows_are_read_as_the_usual_one() -> None:
    """CRLF line ends and `data:` without its space are both server-sent events (some servers write them); the
    tap split only at LF LF (a CRLF stream: no event, a 502) and knew `[DONE]` only as `data: [DONE]` (so it
    forwarded the usage chunk nobody asked for and called a finished stream cut). Comments, `event:` and `id:`
    lines, and data over two lines too."""
    spellings = {
        "crlf": STREAM.replace(b"\n", b"\r\n"),
        "no space": STREAM.replace(b"data: ", b"data:"),
        "both": STREAM.replace(b"data: ", b"data:").replace(b"\n", b"\r\n"),
        "fields": STREAM.replace(b"data: ", b": keep-alive\nevent: message\nid: 7\ndata: "),
        "two lines": STREAM.replace(b'data: {"choices":[],"usage"', b'data: {"choices":[],\ndata: "usage"'),
    }
    for name, stream in spellings.items():
        for size in (1, 5, 64, len(stream)):
            tap = SseTap(keep_usage=False)
            out = relay(tap, stream, size)
            assert tap.done and tap.usage == (4, 2, 0), (name, size)
            assert b'"usage"' not in out and b"\r" not in out and out.count(b"\n\n") == 5, (name, size, out)
            assert tap.content_events == 2, (name, size)
        kept = relay(SseTap(keep_usage=True), stream, 11)
        assert kept == stream.replace(b"\r\n", b"\n"), name
