"""What one attempt makes of an upstream's answer (`relay.attempt`), against a stand-in pool: which statuses and
which 200 bodies are the endpoint's failure (the call moves on), which reach the client, and what of an upstream's
Retry-After is passed on."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import msgspec
import pytest

from switchyard_gateway import http1
from switchyard_gateway.contracts.events import EndpointRegistered
from switchyard_gateway.services.gateway.pipeline import relay
from switchyard_gateway.services.gateway.pipeline.call import Call, InferenceRequest, Outcome
from switchyard_gateway.services.gateway.translate.doors import Door

CHAT = msgspec.json.encode({"id": "c1", "object": "chat.completion", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})
OLLAMA_CHAT = msgspec.json.encode({"model": "m", "created_at": "2024-01-01T00:00:00Z", "done": True,
                                   "message": {"role": "assistant", "content": "hello"},
                                   "prompt_eval_count": 5, "eval_count": 2})
ENDPOINT = EndpointRegistered(endpoint_id="ep-odd", provider_id="p", base_url="http://127.0.0.1:9", models=("m",),
                              timeout_s=5)


class Answer:
    """A response as the pool hands it over: status, headers, a body read whole."""

    def __init__(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.status, self.body = status, body
        self.headers = {name.replace("_", "-"): value for name, value in headers.items()}
        self.released = False

    async def read(self, limit: int | None = None, within_s: float | None = None) -> bytes:
        return self.body

    def release(self) -> None:
        self.released = True


class Pool:
    """Answers every request with `answer`, or raises it."""

    def __init__(self, answer: Answer | Exception) -> None:
        self.answer = answer

    async def request(self, *_args: Any) -> Answer:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class Client:
    """The client's side of a whole answer (what `proto.response_bytes` was given)."""

    def __init__(self) -> None:
        self.sent: tuple[int, dict[str, str], bytes] | None = None

    def response_bytes(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        self.sent = (status, dict(headers), data)


async def attempt(answer: Answer | Exception, path: str = "/v1/chat/completions", kind: str = "openai-compatible",
                  stream: bool = False, reports: list[tuple[str, int]] | None = None,
                  ) -> tuple[Client, list[tuple[str, int]], Outcome]:
    """One attempt through the door at `path` to an endpoint of `kind`; raises relay.Failed as the relay does.
    What the breaker was told goes to `reports`."""
    fields: dict[str, Any] = {"model": "m", "stream": stream}
    fields |= {"messages": [{"role": "user", "content": "hi"}]}
    body = msgspec.json.encode(fields)
    request = msgspec.json.decode(body, type=InferenceRequest)
    door = Door(path, request, body)
    call = Call(door, "acme", "sy-key1", request, "req-1", body, time.perf_counter())
    plan = door.plan(kind)
    upstream_path, payload = plan.request(body, "m")
    reports = [] if reports is None else reports
    to = relay.Attempt(ENDPOINT, plan, upstream_path, payload, lambda result, status, _t0: reports.append(
        (result, status)), first_byte_s=5)
    client, outcome = Client(), Outcome("m")
    try:
        await relay.attempt(Pool(answer), call, outcome, to, client, asyncio.get_running_loop())  # type: ignore[arg-type]
    finally:
        if isinstance(answer, Answer):
            assert answer.released
    return client, reports, outcome


# --- statuses -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 501, 502, 505, 507, 520, 599])
async def test_every_5xx_is_the_endpoints_refusal_and_may_be_retried(status: int) -> None:
    with pytest.raises(relay.Failed) as failed:
        await attempt(Answer(status, b"<html>Insufficient Storage</html>", content_type="text/html"))
    assert failed.value.outcome == "http_5xx" and failed.value.error.status == 502
    assert f"Endpoint 'ep-odd' answered {status}" in str(failed.value.error)


@pytest.mark.parametrize(("status", "headers"), [
    (302, {}), (307, {}), (301, {"location": "https://127.0.0.1:9/v1/chat/completions"}), (201, {}), (202, {}),
    (204, {}), (304, {}), (101, {}), (600, {}), (999, {})])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
async def test_a_redirect_or_another_2xx_is_no_answer_and_the_endpoints_failure(
        status: int, headers: dict[str, str], path: str) -> None:
    """A misconfigured endpoint (an http:// URL its server redirects to https://) must trip its breaker and the call
    move on: it was relayed as it was, a 302 with `upstream error`, an empty 204."""
    with pytest.raises(relay.Failed) as failed:
        await attempt(Answer(status, CHAT, **headers), path, "ollama" if path == "/api/chat" else "openai-compatible")
    assert failed.value.outcome == "error" and failed.value.error.status == 502
    assert "'ep-odd'" in str(failed.value.error) and f"HTTP {status}" in str(failed.value.error)


@pytest.mark.parametrize(("answer", "heard"), [
    (Answer(507), ("http_5xx", 507)), (Answer(302), ("error", 302)), (Answer(429), ("http_429", 429)),
    (Answer(200, b"[]"), ("error", 200)), (Answer(200, CHAT, content_encoding="gzip"), ("error", 200))])
async def test_the_breaker_hears_each_failure_as_what_it_was(answer: Answer, heard: tuple[str, int]) -> None:
    """Seven 507s left a breaker closed with no failed call: it heard `ok`."""
    reports: list[tuple[str, int]] = []
    with pytest.raises(relay.Failed):
        await attempt(answer, reports=reports)
    assert reports == [heard]


@pytest.mark.parametrize("status", [400, 404, 413, 422])
async def test_the_clients_own_error_still_reaches_it(status: int) -> None:
    error = {"message": "no such thing", "type": "invalid_request_error"}
    client, reports, outcome = await attempt(Answer(status, msgspec.json.encode({"error": error}),
                                                    content_type="application/json"))
    assert client.sent is not None and client.sent[0] == status       # completed to OpenAI's shape, its words kept
    assert msgspec.json.decode(client.sent[2]) == {"error": {**error, "param": None, "code": None}}
    assert reports == [("http_4xx", status)] and outcome.result == "error"


@pytest.mark.parametrize(("body", "headers"), [
    (b"<html><body>404 page not found</body></html>", {"content_type": "text/html"}),
    (b"404 page not found", {"content_type": "text/plain"}),
    (b"", {}),
    (b'{"detail": "Not Found"}', {"content_type": "application/json"}),
])
async def test_an_error_body_on_the_native_ollama_door_is_in_its_shape(body: bytes, headers: dict[str, str]) -> None:
    client, _, _ = await attempt(Answer(404, body, **headers), "/api/chat", "ollama")
    assert client.sent is not None
    status, sent_headers, data = client.sent
    assert status == 404 and sent_headers["content-type"] == "application/json"
    message = msgspec.json.decode(data)["error"]
    assert isinstance(message, str) and message
    if body:
        assert ("404 page not found" in message or "Not Found" in message), message


async def test_an_ollama_error_is_passed_on_as_ollama_wrote_it() -> None:
    body = b'{"error":"model \\"m\\" not found, try pulling it first"}'
    client, _, _ = await attempt(Answer(404, body, content_type="application/json"), "/api/chat", "ollama")
    assert client.sent is not None and msgspec.json.decode(client.sent[2]) == msgspec.json.decode(body)


# --- 200 whole answers ----------------------------------------------------------------------------------------

UNREADABLE = {
    "gzip": (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03", {"content_encoding": "gzip"}),
    "transfer-gzip": (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03", {"transfer_encoding": "gzip, chunked"}),
    "truncated": (CHAT[:40], {}),
    "array": (b"[1, 2, 3]", {}),
    "string": (b'"hello"', {}),
    "html": (b"<html><body>It works!</body></html>", {"content_type": "text/html"}),
    "empty": (b"", {}),
    "error only": (b'{"error": {"message": "CUDA out of memory", "type": "server_error"}}', {}),
    "ollama error": (b'{"error": "CUDA out of memory"}', {}),
}


@pytest.mark.parametrize("case", list(UNREADABLE))
@pytest.mark.parametrize(("path", "kind"), [("/v1/chat/completions", "openai-compatible"), ("/api/chat", "ollama"),
                                            ("/v1/embeddings", "openai-compatible"), ("/api/chat", "openai")])
async def test_a_200_that_is_no_answer_is_the_endpoints_failure(case: str, path: str, kind: str) -> None:
    body, headers = UNREADABLE[case]
    with pytest.raises(relay.Failed) as failed:
        await attempt(Answer(200, body, **headers), path, kind)
    assert failed.value.outcome == "error" and failed.value.error.status == 502
    message = str(failed.value.error)
    assert message.startswith("Endpoint 'ep-odd' ")
    if "error" in case:
        assert "CUDA out of memory" in message
    elif "gzip" in case:
        assert "gzip" in message


@pytest.mark.parametrize("stream", [True, False])
async def test_a_coded_stream_is_refused_before_anything_is_relayed(stream: bool) -> None:
    with pytest.raises(relay.Failed) as failed:
        await attempt(Answer(200, b"\x1f\x8b", content_encoding="br", content_type="text/event-stream"),
                      stream=stream)
    assert failed.value.outcome == "error" and "Content-Encoding: br" in str(failed.value.error)


@pytest.mark.parametrize(("path", "kind", "body"), [
    ("/v1/chat/completions", "openai-compatible", CHAT),
    ("/v1/chat/completions", "openai-compatible", b'{"choices": [{"index": 0, "message": {"content": "x"}}]}'),
    ("/v1/chat/completions", "openai-compatible", b'{"error": null, "choices": []}'),
    ("/v1/embeddings", "openai-compatible", b'{"object": "list", "data": [{"index": 0, "embedding": [0.1]}]}'),
    ("/api/chat", "ollama", OLLAMA_CHAT),
    ("/api/chat", "ollama", b'{"model": "m", "message": {"role": "assistant", "content": "x"}, "done": true}'),
    ("/api/embeddings", "ollama", b'{"embedding": [0.1, 0.2]}'),
    ("/api/chat", "openai", CHAT),
])
async def test_a_200_answer_reaches_the_client(path: str, kind: str, body: bytes) -> None:
    client, reports, outcome = await attempt(
        Answer(200, body, content_type="application/json", content_encoding="identity"), path, kind)
    assert client.sent is not None and client.sent[0] == 200 and reports == [("ok", 200)]
    assert outcome.result == "ok"
    if kind != "openai":
        assert client.sent[2] == body


# --- connections closed, Retry-After ----------------------------------------------------------------------------


async def test_a_connection_closed_without_an_answer_says_so() -> None:
    with pytest.raises(relay.Failed) as failed:
        await attempt(http1.NoResponse("the connection closed before any byte of the response"))
    assert failed.value.outcome == "cut"
    assert str(failed.value.error) == "Endpoint 'ep-odd' closed the connection without answering"


def http_date(ahead_s: float) -> str:
    return format_datetime(datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=ahead_s), usegmt=True)


@pytest.mark.parametrize(("value", "passed_on"), [
    ("1", "1"), ("0", "0"), (" 7 ", "7"), ("1.2", "2"), ("3600", "3600"),
    ("3601", None), ("1e400", None), ("-1", None), ("inf", None), ("NaN", None), ("1_0", None), ("soon", None),
    ("\u0661\u0662", None), pytest.param("9" * 400, None, id="400 digits"), ("", None),
])
async def test_retry_after_reaches_the_client_only_as_sane_whole_seconds(value: str, passed_on: str | None) -> None:
    with pytest.raises(relay.Failed) as failed:
        await attempt(Answer(429, b'{"error": "slow down"}', retry_after=value))
    assert failed.value.error.status == 429
    assert (failed.value.error.headers or {}).get("retry-after") == passed_on


def test_retry_after_as_an_http_date_is_passed_on_as_one_and_waited_for() -> None:
    soon = http_date(30)
    wait_s, passed_on = relay._seconds(soon)
    assert passed_on == soon and wait_s is not None and 25 < wait_s <= 30
    wait_s, passed_on = relay._seconds("Sun, 06 Nov 1994 08:49:37 GMT")   # past: at once
    assert (wait_s, passed_on) == (0.0, "Sun, 06 Nov 1994 08:49:37 GMT")
    wait_s, passed_on = relay._seconds(http_date(7200))
    assert passed_on is None and wait_s is not None and wait_s > 3600     # too far to pass on or wait for


def test_a_wait_longer_than_any_is_still_one_the_failover_will_not_sit_out() -> None:
    assert relay._seconds("7200") == (7200.0, None)
    assert relay._seconds("9" * 400)[0] == float("inf")
    assert relay._seconds("1e400") == (None, None)
