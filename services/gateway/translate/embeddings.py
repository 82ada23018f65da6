"""The OpenAI front door's embedding options, kept even when the upstream ignores them: base64 vectors and `dimensions`.

A base64 vector is the little-endian float32 bytes of the vector, base64-encoded (what
OpenAI sends and its client decodes). `dimensions` shortens a longer vector to its first
`dimensions` values and scales it back to unit length, as OpenAI and Ollama do for models
trained for it. Vectors already in the asked form are left alone, and so is a body with
nothing to change (a byte-level check, no decoding).
"""

from __future__ import annotations

import array
import base64
import math
import sys
from typing import Any

import msgspec

from switchyard_gateway.services.gateway.translate.wire import TranslationError, decode_any, encode


class _Options(msgspec.Struct):
    encoding_format: str | None = None
    dimensions: int | None = None


_decode_options = msgspec.json.Decoder(_Options).decode


def embedding_options(body: bytes) -> tuple[str | None, int | None]:
    """(`encoding_format`, `dimensions`) of a /v1/embeddings request body; (None, None) when unreadable."""
    try:
        options = _decode_options(body)
    except (msgspec.MsgspecError, RecursionError):
        return None, None
    return options.encoding_format, options.dimensions


def embeddings_to_base64(data: bytes) -> bytes:
    """A /v1/embeddings answer with every float-list vector turned into base64 (float32, little-endian)."""
    return conform_embeddings(data, encoding_format="base64", dimensions=None)


def conform_embeddings(data: bytes, *, encoding_format: str | None, dimensions: int | None) -> bytes:
    """A /v1/embeddings answer in the form the client asked for: vectors cut to `dimensions` (and renormalised),
    base64 when `encoding_format` is "base64", float lists otherwise. Unreadable bodies are returned as they are
    (the relay judges them); a vector that cannot be converted (base64 that is not, a list of other than numbers),
    or one shorter than `dimensions` (it was answered as it was), is a TranslationError: the upstream's failure,
    and the call moves on."""
    want_base64 = encoding_format == "base64"
    has_lists = b'"embedding":[' in data or b'"embedding": [' in data
    has_strings = b'"embedding":"' in data or b'"embedding": "' in data
    if dimensions is None and (has_lists if want_base64 else has_strings) is False:
        return data
    try:
        body = decode_any(data)
    except (msgspec.DecodeError, RecursionError):
        return data
    items = body.get("data") if isinstance(body, dict) else None
    if not isinstance(items, list):
        return data
    for item in items:
        if isinstance(item, dict) and "embedding" in item:
            try:
                vector = _floats(item["embedding"])
                if vector is None:
                    continue
                if dimensions is not None and 0 < dimensions < len(vector):
                    vector = _shorten(vector, dimensions)
                item["embedding"] = _base64(vector) if want_base64 else vector
            except (ValueError, TypeError) as exc:     # binascii.Error, a length not whole float32s, not numbers
                raise TranslationError(f"The upstream answer holds an embedding that is not a vector: {exc}") \
                    from None
            if dimensions is not None and len(vector) < dimensions:     # no cut makes a vector longer
                raise TranslationError(f"The upstream answered a vector of {len(vector)} dimensions where "
                                       f"{dimensions} were asked")
    return encode(body)


def _floats(value: Any) -> list[float] | None:
    """A vector as floats: a list as it is, base64 (strictly: no other characters) decoded; None for neither."""
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        floats = array.array("f", base64.b64decode(value, validate=True))
        if sys.byteorder == "big":
            floats.byteswap()
        return floats.tolist()
    return None


def _shorten(vector: list[float], dimensions: int) -> list[float]:
    cut = vector[:dimensions]
    norm = math.sqrt(math.fsum(x * x for x in cut))
    return [x / norm for x in cut] if norm > 0 else cut


def _base64(vector: list[float]) -> str:
    floats = array.array("f", vector)
    if sys.byteorder == "big":
        floats.byteswap()
    return base64.b64encode(floats.tobytes()).decode("ascii")
