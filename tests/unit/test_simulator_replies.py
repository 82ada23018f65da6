"""Reply building: per-token encoding and each API's error shape."""

import json

from switchyard_gateway.simulator.replies import error_for, per_token


def test_per_token_matches_encoding_each_payload():
    tokens = ["Hello", ' "quoted"', " back\\slash", " \u00e9t\u00e9"]
    framed = per_token(
        lambda t: {"model": "m", "delta": {"content": t}}, tokens, b"data: ", b"\n\n"
    )
    assert [json.loads(f[len(b"data: ") : -2]) for f in framed] == [
        {"model": "m", "delta": {"content": t}} for t in tokens
    ]
    assert all(f.startswith(b"data: ") and f.endswith(b"\n\n") for f in framed)


def test_per_token_falls_back_when_the_marker_appears_elsewhere():
    framed = per_token(lambda t: {"a": t, "b": t}, ["x", "y"])
    assert [json.loads(f) for f in framed] == [{"a": "x", "b": "x"}, {"a": "y", "b": "y"}]


def test_errors_take_the_shape_of_the_api_that_owns_the_path():
    openai_style = json.loads(error_for("/v1/embeddings", 500, "boom").body)
    assert openai_style["error"]["message"] == "boom"
    assert openai_style["error"]["type"] == "server_error"
    assert json.loads(error_for("/api/embed", 500, "boom").body) == {"error": "boom"}
