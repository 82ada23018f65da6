"""The WebSocket embeddings messages as pure functions: requests in, text and binary answers out."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from switchyard_gateway.services.gateway.edge import ws_frames as frames


def test_a_request_keeps_the_embeddings_body_without_the_envelope() -> None:
    request = frames.parse('{"id": "q1", "model": "m", "input": ["a", "b"], "dimensions": 3}')
    assert isinstance(request, frames.Request) and request.client_id == "q1" and not request.binary
    assert json.loads(request.body) == {"model": "m", "input": ["a", "b"], "dimensions": 3}
    binary = frames.parse('{"id": 7, "model": "m", "input": "a", "binary": true}')
    assert binary.binary and json.loads(binary.body)["encoding_format"] == "base64"
    assert frames.parse('{"type": "ping", "id": "p"}') == frames.Ping("p")


@pytest.mark.parametrize(("text", "code"), [
    ("{oops", "invalid_json"), ("[1, 2]", "invalid_request"), ('{"id": ["x"], "model": "m"}', "invalid_request"),
    ('{"id": "' + "x" * 129 + '"}', "invalid_request"), ('{"id": true}', "invalid_request"),
    ('{"id": "a", "binary": "yes"}', "invalid_request"), ('{"id": "a", "type": "chat"}', "invalid_request"),
    ('{"id": "a", "binary": true, "encoding_format": "int8"}', "invalid_request"),
])
def test_what_is_not_a_request_is_refused_with_a_reason(text: str, code: str) -> None:
    with pytest.raises(frames.BadMessage) as refused:
        frames.parse(text)
    assert refused.value.code == code and str(refused.value)


def test_a_text_answer_puts_the_id_first_and_leaves_the_rest_of_the_body_as_it_was() -> None:
    body = b'\n{"object":"list","data":[{"embedding":[0.5]}],"model":"m"}\n'
    answer = json.loads(frames.text_answer("q", "c.1", 200, body, {"cache": "miss"}))
    assert list(answer)[:4] == ["id", "request_id", "status", "cache"] and answer["data"][0]["embedding"] == [0.5]
    assert json.loads(frames.text_answer(None, "c.2", 502, b"upstream said no")) == \
        {"id": None, "request_id": "c.2", "status": 502, "body": "upstream said no"}
    assert json.loads(frames.text_answer(1, "c.3", 200, b"{}")) == {"id": 1, "request_id": "c.3", "status": 200}


def test_an_upstreams_own_id_request_id_status_or_cache_do_not_replace_the_gateways() -> None:
    """vLLM's embeddings answer carries an `id` of its own; it came after the client's, and a JSON reader keeps the
    last of two keys: no answer could be matched to its request."""
    body = b'{"id": "embd-1", "object": "list", "request_id": "up", "status": 999, "cache": "x",' \
           b' "data": [{"embedding": [0.5, 0.25], "id": "inner"}], "model": "m"}'
    raw = frames.text_answer("mine-1", "c.1", 200, body, {"cache": "miss"})
    answer = json.loads(raw)
    assert (answer["id"], answer["request_id"], answer["status"], answer["cache"]) == ("mine-1", "c.1", 200, "miss")
    assert raw.count(b'"id"') == 2 and raw.count(b'"status"') == 1            # the data's own `id` stays
    assert answer["data"] == [{"embedding": [0.5, 0.25], "id": "inner"}] and answer["model"] == "m"
    untouched = b'{"object":"list","data":[{"embedding":[0.5]}],"model":"m"}'
    assert frames.text_answer("q", "c.2", 200, untouched).endswith(untouched[1:])      # as it was, undecoded


def test_a_binary_answer_carries_the_id_and_float32_vectors_in_index_order() -> None:
    def b64(*values: float) -> str:
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()

    body = json.dumps({"data": [{"index": 1, "embedding": b64(4, 5, 6)}, {"index": 0, "embedding": b64(1, 2, 3)}],
                       "usage": {"prompt_tokens": 9}}).encode()
    frame = frames.binary_answer("hello", body)
    assert frame is not None and frame[:4] == b"SYEB" and (20 + 8) % 4 == 0
    assert frames.read_binary(frame) == ("hello", [(1.0, 2.0, 3.0), (4.0, 5.0, 6.0)], 9)
    assert frames.read_binary(frames.binary_answer(12, body))[0] == "12"
    uneven = json.dumps({"data": [{"embedding": b64(1)}, {"embedding": b64(1, 2)}]}).encode()
    assert frames.binary_answer("x", uneven) is None and frames.binary_answer("x", b"not json") is None
