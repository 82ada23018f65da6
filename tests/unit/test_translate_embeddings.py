"""The OpenAI door's embedding options hold whatever the upstream did: base64 vectors and `dimensions`."""

from __future__ import annotations

import array
import base64
import json
import math

import pytest

from switchyard_gateway.services.gateway.translate.plans import TranslationError, conform_embeddings, embedding_options, \
    embeddings_to_base64


def body(obj) -> bytes:
    return json.dumps(obj).encode()


def floats_of(encoded: str) -> list[float]:
    return array.array("f", base64.b64decode(encoded)).tolist()


FLOATS = body({
    "object": "list", "model": "nomic-embed-text",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.6, 0.8, 0.0, 0.0]},
             {"object": "embedding", "index": 1, "embedding": [0.5, 0.5, 0.5, 0.5]}],
    "usage": {"prompt_tokens": 4, "total_tokens": 4},
})


def test_float_vectors_become_little_endian_float32_base64() -> None:
    out = json.loads(embeddings_to_base64(FLOATS))
    first = base64.b64decode(out["data"][0]["embedding"])
    assert first == array.array("f", [0.6, 0.8, 0.0, 0.0]).tobytes() and len(first) == 16
    assert first[:4] == bytes.fromhex("9a99193f")          # 0.6 as float32, little-endian
    assert floats_of(out["data"][1]["embedding"]) == [0.5, 0.5, 0.5, 0.5]
    assert out["usage"] == {"prompt_tokens": 4, "total_tokens": 4} and out["model"] == "nomic-embed-text"


def test_answers_already_in_the_asked_form_are_returned_untouched() -> None:
    encoded = embeddings_to_base64(FLOATS)
    assert embeddings_to_base64(encoded) is encoded
    assert conform_embeddings(FLOATS, encoding_format="float", dimensions=None) is FLOATS
    assert conform_embeddings(FLOATS, encoding_format=None, dimensions=None) is FLOATS


def test_base64_from_the_upstream_becomes_floats_when_floats_were_asked() -> None:
    encoded = embeddings_to_base64(FLOATS)
    out = json.loads(conform_embeddings(encoded, encoding_format="float", dimensions=None))
    assert out["data"][1]["embedding"] == [0.5, 0.5, 0.5, 0.5]


def test_dimensions_cut_longer_vectors_and_scale_them_back_to_unit_length() -> None:
    out = json.loads(conform_embeddings(FLOATS, encoding_format=None, dimensions=2))
    first, second = (item["embedding"] for item in out["data"])
    assert first == [0.6, 0.8]
    assert second == [1 / math.sqrt(2), 1 / math.sqrt(2)]
    as_base64 = json.loads(conform_embeddings(FLOATS, encoding_format="base64", dimensions=2))
    assert [round(x, 6) for x in floats_of(as_base64["data"][1]["embedding"])] == [0.707107, 0.707107]


def test_vectors_as_long_as_dimensions_keep_their_values() -> None:
    out = json.loads(conform_embeddings(FLOATS, encoding_format="float", dimensions=4))
    assert out["data"][0]["embedding"] == [0.6, 0.8, 0.0, 0.0]


def test_a_vector_shorter_than_dimensions_is_the_upstreams_failure() -> None:
    """It was answered as it was, 4 values for 8 asked: no cut makes a vector longer, so that upstream cannot
    answer the call (the relay fails the attempt: 502, or the next endpoint)."""
    for encoding in ("float", "base64"):
        with pytest.raises(TranslationError, match="4 dimensions where 8 were asked"):
            conform_embeddings(FLOATS, encoding_format=encoding, dimensions=8)


def test_unreadable_answers_are_returned_as_they_are() -> None:
    for data in (b"oops", body({"error": {"message": "bad"}}), body([1, 2])):
        assert conform_embeddings(data, encoding_format="base64", dimensions=3) is data


def test_request_options_are_read_from_the_body() -> None:
    assert embedding_options(body({"model": "m", "input": "x", "encoding_format": "base64", "dimensions": 64})) \
        == ("base64", 64)
    assert embedding_options(body({"model": "m", "input": "x"})) == (None, None)
    assert embedding_options(b"{") == (None, None)
