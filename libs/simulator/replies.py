"""What a route returns: a whole reply or a stream of chunks, and each API's error bodies."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgspec

JSON = b"application/json"
SSE = b"text/event-stream"
NDJSON = b"application/x-ndjson"
TEXT = b"text/plain; charset=utf-8"

encode = msgspec.json.Encoder().encode


class Reply:
    """A complete response: status, content type, body and any extra headers."""

    __slots__ = ("status", "content_type", "body", "headers")

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: bytes = JSON,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers


class StreamReply:
    """A streamed 200 response: each chunk goes out as it is due, one per token."""

    __slots__ = ("content_type", "chunks")

    def __init__(self, content_type: bytes, chunks: list[bytes]) -> None:
        self.content_type = content_type
        self.chunks = chunks


class Rejected(Exception):
    """A request the route refuses; carries the error reply to send."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


def json_reply(payload: Any, status: int = 200) -> Reply:
    return Reply(status, encode(payload))


def sse_event(payload: Any) -> bytes:
    """One server-sent event carrying a JSON payload."""
    return b"data: " + encode(payload) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def ndjson_line(payload: Any) -> bytes:
    return encode(payload) + b"\n"


_MARK = "\x00token\x00"
_MARK_JSON = encode(_MARK)


def per_token(
    make: Callable[[str], Any], tokens: Iterable[str], prefix: bytes = b"", suffix: bytes = b""
) -> list[bytes]:
    """`prefix + encode(make(token)) + suffix` for each token, encoding the payload only once.

    The payload is encoded around a marker and each token's JSON string spliced in, which is
    several times faster than encoding one payload per token.
    """
    before, found, after = encode(make(_MARK)).partition(_MARK_JSON)
    if not found or _MARK_JSON in after:  # the marker is in the payload elsewhere too
        return [prefix + encode(make(t)) + suffix for t in tokens]
    before, after = prefix + before, after + suffix
    return [before + encode(t) + after for t in tokens]


def openai_error(
    status: int,
    message: str,
    kind: str = "invalid_request_error",
    code: str | None = None,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> Reply:
    """An error in the OpenAI shape: {"error": {"message", "type", "param", "code"}}."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return Reply(status, encode(body), JSON, headers)


def ollama_error(status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> Reply:
    """An error in the Ollama shape: {"error": "..."}."""
    return Reply(status, encode({"error": message}), JSON, headers)


def is_openai_path(path: str) -> bool:
    return path.startswith("/v1/")


def error_for(
    path: str, status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> Reply:
    """An error in the shape the API that owns `path` uses."""
    if is_openai_path(path):
        kind, code = _OPENAI_KINDS.get(status, ("invalid_request_error", None))
        return openai_error(status, message, kind, code, headers)
    return ollama_error(status, message, headers)


_OPENAI_KINDS = {
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", "internal_error"),
}


def decode_request(path: str, body: bytes, decoder: msgspec.json.Decoder) -> Any:
    """Decode a request body, turning malformed or mistyped JSON into a 400."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: catch it first
        raise Rejected(error_for(path, 400, f"invalid request: {exc}")) from None
    except msgspec.DecodeError as exc:
        raise Rejected(error_for(path, 400, f"malformed JSON body: {exc}")) from None
