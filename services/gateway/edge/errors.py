"""Errors the gateway shows to clients: each carries its numbers, and each front door renders them in its own shape.

    GatewayError              status, message, OpenAI `type`, `code`, `param`, detail fields, headers
    ├── AuthError             401 Invalid or expired token
    ├── ForbiddenError        403 Admin role required
    │   └── TenantMismatch    403 X-Tenant-ID names another tenant than the key's
    ├── RouteNotFound         404 no such route
    ├── MethodNotAllowed      405
    ├── ApiError              any status, for what the hot path refuses
    │   ├── BadRequest        400 (malformed JSON, missing or invalid fields)
    │   ├── PayloadTooLarge   413
    │   ├── UnsupportedEncoding  415 a body sent with a content coding (gzip, br): none is decoded
    │   ├── ModelNotFound     404
    │   │   └── ModelNotConfigured  404, code MODEL_NOT_CONFIGURED: the model exists, not for this tenant
    │   └── UpstreamError     502 / 503 / 504 when no endpoint could answer
    └── (pipeline/reserve.py) QuotaExceeded 402, RateLimited 429

Which shape a path gets is one table, `DOORS` (first matching prefix wins; Ollama's routes by name):

    openai      /v1/*          {"error": {"message", "type", "param", "code", ...detail}}
    anthropic   /v1/messages   {"type": "error", "error": {"type", "message"}, "request_id"}
    ollama      Ollama routes  {"error": "<message>", ...detail}   (in Ollama's words where they differ)
    admin       /api/auth/*    {"error": {"code", "message", ...detail}}   (`admin_code`; the admin guard's too)
    plain       the rest       {"error": "<message>", ...detail}   (the seed's shape: monitoring routes, the
                                                                   framework's own refusals of admin routes)

A service's refusal (`ServiceError`) on an `admin` or `plain` path is `{"error": {"code", "message", "field"}}`, the
admin API's shape (NESTED_SHAPES): sign-in's routes answer every error in it, and so does the admin guard on every
route it guards (api/common.py), so that one API never answers one mistake in two shapes.

`/v1/models` is both OpenAI's and Anthropic's: a client that sends `anthropic-version` (Anthropic's clients
always do) gets Anthropic's shapes there, its errors included (`shape_for_client`, SHARED_PATHS).

A door whose clients read another status for one of the gateway's says so in DOOR_STATUS: Anthropic's answers
529 where the gateway says 503. Anthropic's `request_id` and its statuses are written as the answer leaves the
edge (edge/headers.py, `AnthropicAnswers`): where an error is rendered, its request's id is not always known.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import msgspec

_encode = msgspec.json.Encoder().encode

# OpenAI's `type` for a status when the error names none
_OPENAI_TYPES = {402: "insufficient_quota", 429: "rate_limit_exceeded"}
# Anthropic's error types by status
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                   403: "permission_error", 404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                   500: "api_error", 502: "api_error", 503: "overloaded_error", 504: "timeout_error",
                   529: "overloaded_error"}
# the status a door's clients read for one of the gateway's: Anthropic's API answers 529 when it is overloaded (its
# SDK's `OverloadedError`, which it retries), where the gateway, its metrics and usage events and the other doors
# say 503 (no endpoint could serve the call, or the quota store could not be asked)
DOOR_STATUS: dict[str, dict[int, int]] = {"anthropic": {503: 529}}


class GatewayError(Exception):
    """An error with what every door needs to render it; subclasses fix the status and the OpenAI type and code."""

    status = 500
    kind = "server_error"           # OpenAI's `type`
    code: str | None = None
    param: str | None = None
    member_message: str | None = None   # an endpoint's failure as a tenant's caller is told it (`for_member`)
    ollama_message: str | None = None   # the message in Ollama's own words, where its clients look for them

    def __init__(self, message: str, *, status: int | None = None, kind: str | None = None,
                 code: str | None = None, param: str | None = None, details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        if kind is not None:
            self.kind = kind
        if code is not None:
            self.code = code
        if param is not None:
            self.param = param
        self.details: dict[str, Any] = details or {}     # the seed's fields beside the message (quota, limits)
        self.headers: dict[str, str] = headers or {}

    @property
    def message(self) -> str:
        return str(self)

    def for_member(self) -> GatewayError:
        """The error as a tenant's caller sees it: an endpoint's failure without what the server said
        (`member_message`, set where the error is made); operators see it whole."""
        if self.member_message is None:
            return self
        error = copy.copy(self)
        error.args = (self.member_message,)
        return error

    def body(self, shape: str = "plain") -> dict[str, Any]:
        """The error as the given door's clients read it."""
        return SHAPES[shape](self)

    def render(self, shape: str = "plain") -> bytes:
        return _encode(SHAPES[shape](self))


class AuthError(GatewayError):
    status, kind, code = 401, "invalid_request_error", "invalid_api_key"

    def __init__(self) -> None:
        super().__init__("Invalid or expired token")


class ForbiddenError(GatewayError):
    status, kind, code = 403, "invalid_request_error", "insufficient_permissions"

    def __init__(self, message: str = "Admin role required") -> None:
        super().__init__(message)


class RouteNotFound(GatewayError):
    status, kind, code = 404, "invalid_request_error", "unknown_url"

    def __init__(self, method: str, path: str) -> None:
        super().__init__(f"Invalid URL ({method} {path})")


class MethodNotAllowed(GatewayError):
    status, kind, code = 405, "invalid_request_error", "method_not_allowed"

    def __init__(self, method: str, path: str) -> None:
        super().__init__(f"Method {method} is not allowed for {path}")


class TenantMismatch(ForbiddenError):
    def __init__(self) -> None:
        super().__init__("X-Tenant-ID names another tenant than the key's")


class ApiError(GatewayError):
    """An error of the hot path; by default a client's mistake."""

    kind = "invalid_request_error"


class BadRequest(ApiError):
    status = 400
    code = "invalid_request"


class BodyNotReceived(ApiError):
    status = 408
    code = "request_timeout"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class UnsupportedEncoding(ApiError):
    status = 415
    code = "unsupported_content_encoding"


class ModelNotFound(ApiError):
    status = 404
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"None of the configured endpoints advertise the model '{model}'", param="model")
        self.ollama_message = ollama_not_found(model, str(self))


class ModelNotConfigured(ModelNotFound):
    """The model exists, but the tenant has no use of it (not assigned, disabled, or no default set)."""

    code = "MODEL_NOT_CONFIGURED"

    def __init__(self, model: str, tenant_id: str) -> None:
        message = f"No default model is configured for tenant '{tenant_id}'" if model == "default" \
            else f"Model '{model}' is not configured for tenant '{tenant_id}'"
        # the code on every door: beside Ollama's `error`, in Anthropic's error object, OpenAI's own `code`
        ApiError.__init__(self, message, param="model", details={"code": self.code})
        self.ollama_message = ollama_not_found(model, message)


def ollama_not_found(model: str, reason: str) -> str:
    """Ollama's words for a model it does not have, which the Ollama CLI looks for (then offers to pull it), with
    the gateway's reason after them (NOMYO Router's users know "None of the configured endpoints advertise")."""
    return f"model '{model}' not found ({reason})"


class UpstreamError(ApiError):
    status = 502
    kind = "upstream_error"
    code = "upstream_unavailable"


def from_status(status: int, message: str, headers: dict[str, str] | None = None) -> GatewayError:
    """A GatewayError for an HTTP status someone else decided (the web framework, a service's reply)."""
    kind = "server_error" if status >= 500 else _OPENAI_TYPES.get(status, "invalid_request_error")
    return GatewayError(message, status=status, kind=kind, headers=headers)


# --- shapes -------------------------------------------------------------------------------------------


def openai_body(error: GatewayError) -> dict[str, Any]:
    return {"error": {"message": error.message, "type": error.kind, "param": error.param, "code": error.code,
                      **error.details}}


def flat_body(error: GatewayError) -> dict[str, Any]:
    return {"error": error.message, **error.details}


# the admin API's codes for the gateway's own errors where they differ from OpenAI's in capitals: one code, and the
# same words, for one mistake wherever the admin shape is answered (sign-in says INVALID_TOKEN, as here)
ADMIN_CODES = {"invalid_api_key": "INVALID_TOKEN", "insufficient_permissions": "FORBIDDEN", "unknown_url": "NOT_FOUND",
               "internal_error": "INTERNAL"}


def admin_code(error: GatewayError) -> str:
    """An error's `code` in the admin API's shape (`INVALID_TOKEN`, `FORBIDDEN`, `NOT_FOUND`, ...)."""
    if error.code:
        return ADMIN_CODES.get(error.code, error.code.upper())
    return "INTERNAL" if error.status >= 500 else "INVALID_REQUEST"


def admin_body(error: GatewayError) -> dict[str, Any]:
    return {"error": {"code": admin_code(error), "message": error.message, **error.details}}


def ollama_body(error: GatewayError) -> dict[str, Any]:
    """Ollama's `{"error": "..."}`, in Ollama's words where they differ (`model 'x' not found`)."""
    return {"error": error.ollama_message or error.message, **error.details}


def anthropic_type(status: int) -> str:
    return ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def anthropic_body(error: GatewayError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": anthropic_type(error.status), "message": error.message,
                                       **error.details}}


_ANTHROPIC_ERROR = b'{"type":"error",'


def with_request_id(body: bytes, request_id: str | None) -> bytes:
    """An error body in Anthropic's shape (as this module and the door write it) with the request's id beside
    `error`, as Anthropic's carry it; any other body as it is."""
    if request_id is None or not body.startswith(_ANTHROPIC_ERROR) or not body.endswith(b"}"):
        return body
    return body[:-1] + b',"request_id":' + _encode(request_id) + b"}"


SHAPES: dict[str, Callable[[GatewayError], dict[str, Any]]] = {
    "openai": openai_body, "anthropic": anthropic_body, "ollama": ollama_body, "admin": admin_body, "plain": flat_body,
}
NESTED_SHAPES = frozenset({"admin", "plain"})      # where a service's refusal is {"error": {"code", "message", ...}}

OLLAMA_PATHS = frozenset({
    "/", "/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/tags", "/api/ps", "/api/show",
    "/api/version", "/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete",
})
# (path prefix, shape), first match wins; Ollama's routes are named in OLLAMA_PATHS
DOORS: tuple[tuple[str, str], ...] = (
    ("/v1/messages", "anthropic"),
    ("/v1/", "openai"),
    ("/api/auth/", "admin"),
)


def shape_for(path: str) -> str:
    """The error shape of the door a path belongs to."""
    for prefix, shape in DOORS:
        if path.startswith(prefix):
            return shape
    if path == "/v1":                           # the OpenAI base URL itself, as clients are configured with it
        return "openai"
    if path in OLLAMA_PATHS or path.startswith("/api/blobs/"):
        return "ollama"
    return "plain"


# paths both OpenAI's and Anthropic's clients call: Anthropic's shape when the client sends `anthropic-version`
SHARED_PATHS: tuple[str, ...] = ("/v1/models",)
_UNDER_SHARED_PATHS = tuple(f"{shared}/" for shared in SHARED_PATHS)


def shape_for_client(path: str, headers: Any) -> str:
    """The error shape for this client at this path: `shape_for`, except that on a path both doors share an
    Anthropic client (it sends `anthropic-version`) gets Anthropic's. `headers`: a lower-case lookup."""
    if (path in SHARED_PATHS or path.startswith(_UNDER_SHARED_PATHS)) and headers.get("anthropic-version") is not None:
        return "anthropic"
    return shape_for(path)


def render_for(path: str, error: GatewayError) -> bytes:
    return error.render(shape_for(path))


def stream_error(shape: str, error: GatewayError) -> bytes:
    """What ends a started stream with an error, in the door's stream format (SSE or NDJSON)."""
    if shape == "ollama":
        return _encode({"error": error.message}) + b"\n"
    if shape == "anthropic":
        return b"event: error\ndata: " + error.render(shape) + b"\n\n"
    return b"data: " + error.render(shape) + b"\n\n"
