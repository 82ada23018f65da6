"""What the edge adds to answers: the request id every answer carries, and CORS for the browsers it allows.

Anthropic's door's answers leave as its clients read them (`AnthropicAnswers`): with a `request-id` header, the
same id as the error body's `request_id`, and 529 for overloaded.

CORS is off unless `SWITCHYARD_CORS_ORIGINS` names origins (comma-separated, or `*` for any). Then a
preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) on any path is answered at the
edge, before routing, with 204 and what the browser asked for; answers to an allowed origin carry
`Access-Control-Allow-Origin` and expose the gateway's own headers. Keys travel in headers, never in
cookies, so credentials are never allowed.
"""

from __future__ import annotations

import re
from typing import Any

from switchyard_gateway.contracts.events import random_hex
from switchyard_gateway.services.gateway.edge.errors import DOOR_STATUS, with_request_id

REQUEST_ID = "x-request-id"
ANTHROPIC_REQUEST_ID = "request-id"       # the header Anthropic's clients read the id from (the SDK's `_request_id`)
MAX_REQUEST_ID = 128
METHODS = "GET, HEAD, POST, PUT, DELETE, OPTIONS"
EXPOSED = ("x-request-id, request-id, x-switchyard-model, x-switchyard-cache, retry-after, x-ratelimit-limit, "
           "x-ratelimit-remaining, x-ratelimit-reset, x-ratelimit-limit-requests, x-ratelimit-limit-tokens, "
           "x-ratelimit-remaining-requests, x-ratelimit-remaining-tokens, x-ratelimit-reset-requests, "
           "x-ratelimit-reset-tokens, x-has-more, x-next-after, x-total-count, link")     # the last: admin lists' pages
PREFLIGHT_MAX_AGE_S = 600
_HEADER_LIST = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*\Z")


def request_id_of(headers: Any) -> str:
    """The client's `x-request-id` when it sent a usable one (printable ASCII: a header's other bytes arrive as
    Latin-1 and would be echoed and recorded re-encoded), else a new id."""
    given = headers.get(REQUEST_ID)
    if given and len(given) <= MAX_REQUEST_ID and given.isascii() and given.isprintable():
        return given
    return random_hex(16)


def request_id_headers(shape: str, request_id: str) -> list[tuple[str, str]]:
    """The request's id as every answer carries it (`x-request-id`), and as Anthropic's clients read it too
    (`request-id`: the SDK's `_request_id`) on that door."""
    if shape == "anthropic":
        return [(REQUEST_ID, request_id), (ANTHROPIC_REQUEST_ID, request_id)]
    return [(REQUEST_ID, request_id)]


class Cors:
    """Which browser origins may call the gateway, and the headers that tell them so."""

    __slots__ = ("any", "origins")

    def __init__(self, setting: str) -> None:
        names = [o.strip().rstrip("/") for o in setting.split(",") if o.strip()]
        self.any = "*" in names
        self.origins = frozenset(n.lower() for n in names if n != "*")

    @property
    def enabled(self) -> bool:
        return self.any or bool(self.origins)

    def allows(self, origin: str | None) -> bool:
        return bool(origin) and (self.any or origin.lower() in self.origins)  # type: ignore[union-attr]

    def answer_headers(self, origin: str) -> list[tuple[str, str]]:
        """Headers for an answer to an allowed origin."""
        if self.any:
            return [("access-control-allow-origin", "*"), ("access-control-expose-headers", EXPOSED)]
        return [("access-control-allow-origin", origin), ("vary", "Origin"),
                ("access-control-expose-headers", EXPOSED)]

    def preflight_headers(self, origin: str, requested: str | None) -> list[tuple[str, str]]:
        """Headers of the 204 that answers an allowed origin's preflight: every method, the headers it asked
        for (a well-formed list), a cache of PREFLIGHT_MAX_AGE_S."""
        headers = [("access-control-allow-origin", "*" if self.any else origin),
                   ("access-control-allow-methods", METHODS), ("access-control-max-age", str(PREFLIGHT_MAX_AGE_S))]
        if requested and _HEADER_LIST.match(requested.strip()):
            headers.append(("access-control-allow-headers", requested.strip()))
        if not self.any:
            headers.append(("vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"))
        return headers


def is_preflight(scope: Any) -> bool:
    return scope.method == "OPTIONS" and "origin" in scope.headers \
        and "access-control-request-method" in scope.headers


class WithHeaders:
    """An RSGI protocol object that adds headers to whatever answer goes through it."""

    __slots__ = ("_proto", "_extra")

    def __init__(self, proto: Any, extra: list[tuple[str, str]]) -> None:
        self._proto, self._extra = proto, extra

    def __call__(self) -> Any:
        return self._proto()

    def __aiter__(self) -> Any:
        return self._proto.__aiter__()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._proto, name)

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self._proto.response_bytes(status, [*headers, *self._extra], body)

    def response_str(self, status: int, headers: list[tuple[str, str]], body: str) -> None:
        self._proto.response_str(status, [*headers, *self._extra], body)

    def response_empty(self, status: int, headers: list[tuple[str, str]]) -> None:
        self._proto.response_empty(status, [*headers, *self._extra])

    def response_stream(self, status: int, headers: list[tuple[str, str]]) -> Any:
        return self._proto.response_stream(status, [*headers, *self._extra])


class AnthropicAnswers(WithHeaders):
    """The answers of Anthropic's door as its clients read them, whoever wrote them (the proxy, the edge's refusals,
    Litestar's routes): each with a `request-id` header, each error body with the same id as `request_id` beside
    `error`, and a 503 as 529 (DOOR_STATUS). Only the head of an answer is looked at, and an error's body."""

    __slots__ = ()

    _STATUS = DOOR_STATUS["anthropic"]

    def __init__(self, proto: Any) -> None:
        super().__init__(proto, [])

    def _head(self, status: int, headers: list[tuple[str, str]]) -> tuple[int, list[tuple[str, str]], str | None]:
        """The status to write, the headers with `request-id` (the `x-request-id` every answer has), and the id."""
        given = None
        for name, value in headers:
            name = name.lower()
            if name == ANTHROPIC_REQUEST_ID:
                return self._STATUS.get(status, status), headers, value
            if name == REQUEST_ID:
                given = value
        if given is not None:
            headers = [*headers, (ANTHROPIC_REQUEST_ID, given)]
        return self._STATUS.get(status, status), headers, given

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        written, headers, request_id = self._head(status, headers)
        self._proto.response_bytes(written, headers, with_request_id(body, request_id) if status >= 400 else body)

    def response_str(self, status: int, headers: list[tuple[str, str]], body: str) -> None:
        self.response_bytes(status, headers, body.encode())

    def response_empty(self, status: int, headers: list[tuple[str, str]]) -> None:
        written, headers, _ = self._head(status, headers)
        self._proto.response_empty(written, headers)

    def response_stream(self, status: int, headers: list[tuple[str, str]]) -> Any:
        written, headers, _ = self._head(status, headers)
        return self._proto.response_stream(written, headers)
