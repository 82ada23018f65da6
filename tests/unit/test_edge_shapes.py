"""The edge: which door a path belongs to and the error shape it gets, request ids, and CORS decisions."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from switchyard_gateway.services.gateway.edge import errors
from switchyard_gateway.services.gateway.edge.headers import AnthropicAnswers, Cors, request_id_of
from switchyard_gateway.services.gateway.pipeline.reserve import QuotaExceeded, RateLimited

RESET = datetime(2030, 1, 2, tzinfo=UTC)


@pytest.mark.parametrize(("path", "shape"), [
    ("/v1/chat/completions", "openai"), ("/v1/models/a/b.gguf", "openai"), ("/v1", "openai"), ("/v1x", "plain"), ("/v1/messages", "anthropic"),
    ("/v1/messages/count_tokens", "anthropic"), ("/api/chat", "ollama"), ("/api/tags", "ollama"), ("/", "ollama"),
    ("/api/pull", "ollama"), ("/api/token_counts", "plain"), ("/api/admin/tenants", "plain"), ("/health", "plain"),
    ("/api/auth/login", "admin"), ("/api/auth/me", "admin"),
])
def test_each_path_belongs_to_one_door(path: str, shape: str) -> None:
    assert errors.shape_for(path) == shape


def test_a_quota_refusal_keeps_its_figures_in_every_shape() -> None:
    refusal = QuotaExceeded("daily", 1000, 1012, RESET, ["small"])
    figures = {"quota_type": "daily", "limit": 1000, "used": 1012, "reset_time": "2030-01-02T00:00:00Z",
               "suggested_models": ["small"]}
    assert json.loads(refusal.render("openai")) == {"error": {
        "message": "Quota exceeded", "type": "insufficient_quota", "param": None, "code": "insufficient_quota",
        **figures}}
    assert json.loads(refusal.render("ollama")) == {"error": "Quota exceeded", **figures}
    assert json.loads(refusal.render("anthropic")) == {"type": "error", "error": {
        "type": "billing_error", "message": "Quota exceeded", **figures}}


def test_a_rate_limit_says_which_budget_ran_out() -> None:
    assert json.loads(RateLimited("tpm", 10, 10, RESET, now=RESET.timestamp() - 5).render("openai"))["error"][
        "type"] == "tokens"
    requests = RateLimited("key_rpm", 3, 3, RESET, now=RESET.timestamp() - 5)
    assert requests.kind == "requests" and requests.headers["retry-after"] == "5"


def test_a_stream_error_is_written_in_the_doors_stream_format() -> None:
    cut = errors.UpstreamError("gone", code="stream_cut")
    sse = errors.stream_error("openai", cut)
    assert sse.startswith(b"data: {") and sse.endswith(b"\n\n")
    assert json.loads(sse[6:])["error"] == {"message": "gone", "type": "upstream_error", "param": None,
                                            "code": "stream_cut"}
    assert json.loads(errors.stream_error("ollama", cut)) == {"error": "gone"}
    assert errors.stream_error("anthropic", cut).startswith(b"event: error\ndata: ")


def test_the_admin_shape_says_the_same_mistake_in_the_same_words_as_sign_in() -> None:
    """`/api/auth/me` and the admin guard answered `{"error": "<message>"}` beside sign-in's nested errors."""
    assert json.loads(errors.AuthError().render("admin")) == {"error": {"code": "INVALID_TOKEN",
                                                                        "message": "Invalid or expired token"}}
    assert errors.admin_code(errors.ForbiddenError()) == errors.admin_code(errors.TenantMismatch()) == "FORBIDDEN"
    assert errors.admin_code(errors.MethodNotAllowed("GET", "/api/auth/login")) == "METHOD_NOT_ALLOWED"
    assert errors.admin_code(errors.from_status(500, "x")) == "INTERNAL"


def test_refusals_by_the_framework_get_a_status_type() -> None:
    assert errors.from_status(422, "x").kind == "invalid_request_error"
    assert errors.from_status(503, "x").kind == "server_error"
    assert json.loads(errors.RouteNotFound("GET", "/v1/x").render("openai"))["error"]["code"] == "unknown_url"


def test_a_request_id_is_the_clients_when_usable_else_new() -> None:
    assert request_id_of({"x-request-id": "abc-1"}) == "abc-1"
    for unusable in ("x" * 129, "tab\there", "", "caf\xc3\xa9"):          # UTF-8 bytes, read as Latin-1
        made = request_id_of({"x-request-id": unusable})
        assert made != unusable and len(made) == 32
    assert request_id_of({}) != request_id_of({})


def test_cors_allows_only_the_origins_it_names() -> None:
    assert not Cors("").enabled
    cors = Cors(" http://a.example/ , https://B.example")
    assert cors.allows("http://a.example") and cors.allows("https://b.example") and not cors.allows("http://c")
    assert not cors.allows(None) and not cors.allows("")
    headers = dict(cors.preflight_headers("http://a.example", "authorization, x-stainless-os"))
    assert headers["access-control-allow-origin"] == "http://a.example"
    assert headers["access-control-allow-headers"] == "authorization, x-stainless-os"
    assert "Origin" in headers["vary"]
    assert "access-control-allow-headers" not in dict(cors.preflight_headers("http://a.example", "bad\nheader"))
    anyone = Cors("*")
    assert anyone.allows("http://whatever") and dict(anyone.answer_headers("http://x"))[
        "access-control-allow-origin"] == "*"


class Answered:
    """An RSGI protocol object that keeps what was answered."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, str], bytes | None]] = []

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.answers.append((status, dict(headers), body))

    def response_stream(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.answers.append((status, dict(headers), None))


def test_anthropics_door_answers_overloaded_with_529_and_each_answer_with_its_request_id() -> None:
    """Anthropic's clients read 529 as overloaded (`anthropic.OverloadedError`), the id from `request-id`, and
    Anthropic's error bodies carry it as `request_id`: the door answered 503, and a 405 had no `request-id`."""
    proto = Answered()
    door = AnthropicAnswers(proto)
    overloaded = errors.UpstreamError("Every endpoint for this model is at its concurrency limit", status=503,
                                      code="capacity", headers={"retry-after": "5"})
    door.response_bytes(overloaded.status, [("content-type", "application/json"), *overloaded.headers.items(),
                                            ("x-request-id", "r-1"), ("request-id", "r-1")],
                        overloaded.render("anthropic"))
    refused = errors.MethodNotAllowed("GET", "/v1/messages")
    door.response_bytes(405, [("content-type", "application/json"), ("x-request-id", 'r"2'), ("allow", "POST")],
                        refused.render("anthropic"))
    door.response_bytes(200, [("x-request-id", "r-3")], b'{"type":"message"}')
    door.response_stream(200, [("x-request-id", "r-4")])
    (status, headers, body), (status_405, headers_405, body_405), answered, streamed = proto.answers
    assert (status, headers["retry-after"], headers["request-id"]) == (529, "5", "r-1")
    assert json.loads(body or b"") == {"type": "error", "error": {
        "type": "overloaded_error", "message": overloaded.message}, "request_id": "r-1"}
    assert (status_405, headers_405["request-id"], headers_405["allow"]) == (405, 'r"2', "POST")
    assert json.loads(body_405 or b"")["request_id"] == 'r"2'
    assert answered == (200, {"x-request-id": "r-3", "request-id": "r-3"}, b'{"type":"message"}')
    assert streamed == (200, {"x-request-id": "r-4", "request-id": "r-4"}, None)


def test_only_an_error_body_in_anthropics_shape_takes_a_request_id() -> None:
    assert errors.with_request_id(b'{"error":"x"}', "r-1") == b'{"error":"x"}'
    assert errors.with_request_id(b'{"type":"error","error":{}}', None) == b'{"type":"error","error":{}}'
