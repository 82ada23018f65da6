"""The WebSocket embeddings protocol's messages, as pure functions on bytes: requests in, answers out.

A request is one text message: the `/v1/embeddings` body plus the client's `id` (a string of at most
128 characters, or a number) and, optionally, `"binary": true` for vectors in a binary frame. The
answer carries the same `id` and the gateway's `request_id`: the `/v1/embeddings` answer (or its error
body) with `id`, `request_id` and `status` added, or a binary frame:

    offset  size  field (little-endian)
    0       4     magic b"SYEB"
    4       1     version (1)
    5       1     flags (bit 0: the id was a number)
    6       2     id length L in bytes (UTF-8)
    8       4     vector count N
    12      4     dimensions D
    16      4     prompt tokens
    20      L     id, then zero bytes up to a multiple of 4 (P = L rounded up)
    20+P    4*N*D vectors, float32, one after the other in `index` order

Vectors are the bytes a base64 embedding decodes to (OpenAI's `encoding_format: "base64"`), so a
client reads them with `numpy.frombuffer(frame, "<f4", N * D, 20 + P).reshape(N, D)`.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import msgspec

MAGIC = b"SYEB"
VERSION = 1
HEADER = struct.Struct("<4sBBHIII")
ID_MAX = 128
FLAG_NUMERIC_ID = 1

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode
_fields = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode       # top-level keys, values left as bytes

ClientId = str | int | float | None


class BadMessage(Exception):
    """A message the gateway cannot read as a request; answered with a 400 carrying whatever id it had."""

    def __init__(self, message: str, client_id: ClientId = None, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.client_id, self.code = client_id, code


class Ping(msgspec.Struct, frozen=True):
    """A keep-alive message (`{"type": "ping"}`), answered `{"type": "pong"}` with its id."""

    client_id: ClientId = None

    def pong(self) -> bytes:
        return _encode({"type": "pong", "id": self.client_id})


class Request(msgspec.Struct, frozen=True):
    """One request of a socket: the client's id, the body for the embeddings pipeline, and the answer's form."""

    client_id: ClientId
    body: bytes
    binary: bool = False


def parse(text: str) -> Request | Ping:
    """A request or a keep-alive; BadMessage for anything else."""
    try:
        envelope = _decode(text)
    except msgspec.DecodeError as exc:
        raise BadMessage(f"Malformed JSON in message: {exc}", code="invalid_json") from None
    except RecursionError:
        raise BadMessage("The message is nested too deeply to read", code="json_too_deep") from None
    if not isinstance(envelope, dict):
        raise BadMessage("A message must be a JSON object")
    client_id = envelope.pop("id", None)
    if client_id is not None and not (isinstance(client_id, str) and len(client_id) <= ID_MAX
                                      or isinstance(client_id, int | float) and not isinstance(client_id, bool)):
        raise BadMessage(f"'id' must be a string of at most {ID_MAX} characters or a number")
    kind = envelope.pop("type", None)
    if kind == "ping":
        return Ping(client_id)
    if kind not in (None, "embeddings"):
        raise BadMessage(f"Unknown message type {str(kind)[:40]!r}: send an embeddings request or a ping", client_id)
    binary = envelope.pop("binary", False)
    if not isinstance(binary, bool):
        raise BadMessage("'binary' must be true or false", client_id)
    if binary:
        if envelope.get("encoding_format") not in (None, "float", "base64"):
            raise BadMessage("'binary' answers are float32 vectors: leave 'encoding_format' out", client_id)
        envelope["encoding_format"] = "base64"      # the pipeline returns base64 vectors; the frame carries their bytes
    return Request(client_id, _encode(envelope), binary)


def text_answer(client_id: ClientId, request_id: str, status: int, body: bytes,
                extra: dict[str, str] | None = None) -> bytes:
    """The answer as a text message: the pipeline's JSON object with `id`, `request_id`, `status` (and `extra`)
    put first, the rest of its bytes untouched (the vectors are not decoded again)."""
    head = {"id": client_id, "request_id": request_id, "status": status, **(extra or {})}
    prefix = _encode(head)[:-1]
    stripped = body.strip()
    if stripped[:1] == b"{" and stripped[-1:] == b"}":
        if any(b'"%s"' % name.encode() in stripped for name in head):
            stripped = _without(stripped, head)
        rest = stripped[1:].lstrip()
        return prefix + (b"}" if rest == b"}" else b"," + rest)
    return prefix + b',"body":' + _encode(body.decode("utf-8", "replace")) + b"}"


def _without(body: bytes, names: dict[str, object]) -> bytes:
    """A JSON object without the top-level keys the gateway's answer puts first: an upstream's own `id` (vLLM's
    embeddings answer has one) came after the client's and, the last of two keys winning, replaced it."""
    try:
        fields = _fields(body)
    except msgspec.DecodeError:
        return body
    if not names.keys() & fields.keys():
        return body
    return _encode({key: value for key, value in fields.items() if key not in names})


def error_answer(client_id: ClientId, request_id: str | None, status: int, message: str, code: str) -> bytes:
    return _encode({"id": client_id, "request_id": request_id, "status": status,
                    "error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}})


def binary_answer(client_id: ClientId, body: bytes) -> bytes | None:
    """The answer's vectors in a binary frame (module docstring); None if the answer has none to pack."""
    try:
        answer: Any = _decode(body)
        items = sorted(answer["data"], key=lambda item: item.get("index", 0))
        vectors = [base64.b64decode(item["embedding"]) for item in items]
        tokens = int((answer.get("usage") or {}).get("prompt_tokens") or 0)
    except (msgspec.DecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None
    if not vectors or len({len(v) for v in vectors}) != 1 or len(vectors[0]) % 4:
        return None
    ident = str(client_id).encode() if client_id is not None else b""
    flags = FLAG_NUMERIC_ID if isinstance(client_id, int | float) else 0
    padded = ident + b"\0" * (-len(ident) % 4)
    header = HEADER.pack(MAGIC, VERSION, flags, len(ident), len(vectors), len(vectors[0]) // 4, tokens)
    return b"".join((header, padded, *vectors))


def read_binary(frame: bytes) -> tuple[str, list[tuple[float, ...]], int]:
    """(id, vectors, prompt tokens) of a binary answer: what a client does, for tests and tools."""
    magic, version, _, id_len, count, dims, tokens = HEADER.unpack_from(frame)
    if magic != MAGIC or version != VERSION:
        raise ValueError("not a Switchyard embeddings frame")
    start = HEADER.size + id_len + (-id_len % 4)
    values = struct.unpack_from(f"<{count * dims}f", frame, start)
    return (frame[HEADER.size:HEADER.size + id_len].decode(), [values[i * dims:(i + 1) * dims] for i in range(count)],
            tokens)
