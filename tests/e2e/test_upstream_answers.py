"""Upstreams that answer what no model server should, through a one-worker gateway beside the demo's.

Each test adds to the hostile lab (tests/e2e/test_hostile.py: endpoints `a` and `b` of the lab's model) an endpoint
played by a raw upstream (`Odd`), tried first (priority 50), whose every call gets the reply the test sets. A reply
that is the endpoint's failure must move the call on to `a` and count against the endpoint's breaker; the breaker is
reset after each case (once the router has heard every attempt), so that it never opens mid-test.
"""

from __future__ import annotations

import asyncio
import gzip
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
import pytest

from tests.conftest import DemoStack, wait_for
from tests.e2e import test_hostile
from tests.e2e.test_hostile import Lab, exactly_one_usage_row
from tests.e2e.test_quota_e2e import Gateway, start_gateway, stop_gateway
from tests.raw_upstream import RawUpstream

lab = test_hostile.lab        # the hostile lab, as its tests have it
CHAT_ANSWER = msgspec.json.encode({"id": "odd", "object": "chat.completion", "created": 1, "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "from the odd one"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}})


def raw(status: int, body: bytes = b"", *headers: bytes, framed: bool = True) -> bytes:
    """A response with these header lines; framed by Content-Length unless `framed` is False (then the headers
    must frame it)."""
    lines = [b"HTTP/1.1 %d Odd" % status, *headers]
    if framed:
        lines.append(b"content-length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


class Odd(RawUpstream):
    """An upstream listing `models` as an OpenAI-style server (or an Ollama, `ollama=True`) does, and answering each
    inference call with `reply`, as written; `calls` counts them. With `drip` pieces, a reply's head and start is
    followed by each piece as an HTTP chunk, `pause` seconds apart, then the chunked body's end; `dripped` counts
    the pieces written (one the reader went away before is not)."""

    def __init__(self, models: list[str], ollama: bool = False) -> None:
        super().__init__()
        self.models, self.ollama = models, ollama
        self.reply, self.calls, self.listed = b"", 0, 0
        self.drip: list[bytes] = []
        self.pause, self.dripped = 0.02, 0

    async def answer(self, head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        path = head.split(b" ", 2)[1]
        if head.startswith(b"GET") or path == b"/api/show":     # the router's probes, and an Ollama's model facts
            self.listed += 1
            if path == b"/api/show":
                listing: Any = {"capabilities": ["completion"], "model_info": {"general.architecture": "llama"}}
            elif not self.ollama:
                listing = {"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]}
            elif path == b"/api/version":
                listing = {"version": "0.6.0"}
            elif path == b"/api/ps":
                listing = {"models": []}
            else:
                listing = {"models": [{"name": m, "model": m, "digest": "0" * 12} for m in self.models]}
            data = msgspec.json.encode(listing)
            writer.write(raw(200, data, b"content-type: application/json"))
        else:
            self.calls += 1
            writer.write(self.reply)
            for piece in self.drip:
                await writer.drain()
                await asyncio.sleep(self.pause)
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.dripped += 1
            if self.drip:
                writer.write(b"0\r\n\r\n")
        await writer.drain()


@pytest.fixture(scope="module")
def gateway(demo: DemoStack, urls) -> Iterator[Gateway]:
    """One worker: once it lists an endpoint, it routes to it."""
    started = start_gateway(demo, urls, workers="1")
    yield started
    stop_gateway(started)


class Rig:
    """The lab, the gateway and one odd endpoint."""

    def __init__(self, lab: Lab, gateway: Gateway, odd: Odd, endpoint_id: str, lone: str) -> None:
        self.lab, self.gateway, self.odd, self.endpoint_id, self.lone = lab, gateway, odd, endpoint_id, lone
        self.request_ids: list[str] = []

    async def call(self, path: str = "/v1/chat/completions", model: str | None = None) -> httpx.Response:
        request_id = f"odd-{uuid.uuid4().hex}"
        self.request_ids.append(request_id)
        async with httpx.AsyncClient(timeout=30) as client:
            return await client.post(f"{self.gateway.url}{path}", headers=self.lab.headers(request_id=request_id),
                                     json={**self.lab.body(path), "model": model or self.lab.model})

    async def failed_calls(self) -> int:
        return (await self.lab.admin("GET", f"/circuits/{self.endpoint_id}")).json().get("failed_calls", 0)

    async def heard(self, failures: int) -> None:
        """The router heard `failures` failed attempts of the odd endpoint; its breaker is then reset."""
        await wait_for(lambda: self._failed_at_least(failures), 10, what=f"{failures} failed calls heard")
        assert await self.failed_calls() == failures
        assert (await self.lab.admin("POST", f"/circuits/{self.endpoint_id}/reset")).status_code == 200

    async def _failed_at_least(self, failures: int) -> bool:
        return await self.failed_calls() >= failures


@asynccontextmanager
async def odd_endpoint(lab: Lab, gateway: Gateway, ollama: bool = False, timeout_s: float = 10) -> AsyncIterator[Rig]:
    """An odd endpoint of the lab's model and of a model only it serves, tried before `a` and `b`."""
    tag = uuid.uuid4().hex[:6]
    endpoint_id, lone = f"odd-{lab.tag}-{tag}", f"{lab.model}-lone-{tag}"
    provider = lab.ids["provider"]
    if ollama:
        provider = f"hpo-{lab.tag}-{tag}"
        assert (await lab.admin("POST", "/providers", {"provider_id": provider, "kind": "ollama"})).status_code == 201
    assert (await lab.admin("POST", "/models", {"model_id": lone})).status_code == 201
    async with Odd([lab.model, lone], ollama) as odd:
        registered = await lab.admin("POST", "/endpoints", {
            "endpoint_id": endpoint_id, "provider_id": provider, "base_url": odd.url, "models": [lab.model, lone],
            "priority": 50, "timeout_s": timeout_s, "first_byte_timeout_s": 5})
        assert registered.status_code == 201, registered.text
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                async def known() -> bool:
                    config = await client.get(f"{gateway.url}/api/config",
                                              headers={"Authorization": f"Bearer {lab.demo.admin_key}"})
                    listed = await client.get(f"{gateway.url}/v1/models", headers=lab.headers())
                    return (any(e["id"] == endpoint_id for e in config.json()["endpoints"])
                            and lone in {m["id"] for m in listed.json()["data"]})
                await wait_for(known, 15, what="the gateway to know the odd endpoint")
            await wait_for(lambda: odd.listed, 15, what="the router's first probe of the odd endpoint")
            yield Rig(lab, gateway, odd, endpoint_id, lone)
        finally:
            await lab.admin("DELETE", f"/endpoints/{endpoint_id}")


async def served_by_a(rig: Rig, attempts: int) -> None:
    """Every call of the rig was answered by `a`, after `attempts` attempts in all, and recorded once."""
    rows = await asyncio.gather(*(exactly_one_usage_row(rig.lab.demo, r) for r in rig.request_ids))
    for row in rows:
        assert (row["endpoint_id"], row["attempts"], row["status"], row["outcome"]) == \
            (rig.lab.ids["a"], attempts, 200, "ok"), row


# --- statuses ---------------------------------------------------------------------------------------------------


async def test_every_5xx_is_retried_then_moves_the_call_on_and_counts_against_the_endpoint(
        lab: Lab, gateway: Gateway) -> None:
    """501, 505, 507, 520 and 599 were relayed to the client (one attempt, though `a` was healthy) and the breaker
    heard `ok`: seven 507s left it closed with no failed call."""
    async with odd_endpoint(lab, gateway) as rig:
        for status in (501, 505, 507, 520, 599):
            rig.odd.reply = raw(status, b"<html><h1>Insufficient Storage</h1></html>", b"content-type: text/html")
            before = rig.odd.calls
            reply = await rig.call()
            assert reply.status_code == 200, (status, reply.text[:300])
            assert reply.json()["choices"][0]["message"]["content"], status
            assert rig.odd.calls - before == 2, f"{status}: one try and one retry on the odd endpoint"
            await rig.heard(2)
        await served_by_a(rig, attempts=3)


async def test_a_redirect_or_a_2xx_other_than_200_is_the_endpoints_failure(lab: Lab, gateway: Gateway) -> None:
    """An endpoint redirecting its http:// URL to https:// (or answering 201, 204, 304) had its answer relayed as
    the call's: a 302 with `upstream error`, a 201 for a 200, an empty 204. It is no answer: the call moves on at once
    and the endpoint's breaker hears a failure."""
    async with odd_endpoint(lab, gateway) as rig:
        for reply_to_send in (raw(302, b""), raw(307, b"moved"),
                              raw(301, b"", b"location: https://127.0.0.1:1/v1/chat/completions"),
                              raw(201, CHAT_ANSWER, b"content-type: application/json"),
                              raw(204, framed=False), raw(304, framed=False)):
            rig.odd.reply = reply_to_send
            before = rig.odd.calls
            reply = await rig.call()
            assert reply.status_code == 200, (reply_to_send[:20], reply.text[:300])
            assert reply.json()["choices"][0]["message"]["content"] != "from the odd one"
            assert rig.odd.calls - before == 1, reply_to_send[:20]
            await rig.heard(1)
        await served_by_a(rig, attempts=2)


async def test_with_no_endpoint_left_a_redirect_is_a_502_naming_the_endpoint_and_its_status(
        lab: Lab, gateway: Gateway) -> None:
    async with odd_endpoint(lab, gateway) as rig:
        rig.odd.reply = raw(307, b"", b"location: https://example.invalid/")
        reply = await rig.call(model=rig.lone)
        assert reply.status_code == 502, reply.text
        message = reply.json()["error"]["message"]
        assert rig.endpoint_id in message and "307" in message, message
        reply = await rig.call("/api/chat", model=rig.lone)
        assert reply.status_code == 502 and reply.headers["content-type"].startswith("application/json")
        message = reply.json()["error"]
        assert isinstance(message, str) and rig.endpoint_id in message and "307" in message, message
        await rig.heard(2)


async def test_what_a_failing_endpoint_said_is_told_to_operators_not_to_members(lab: Lab, gateway: Gateway) -> None:
    """A hosted API's 429 names the operator's organisation, a server's 500 its hosts: a member was shown the
    upstream's words whole; it is now told which endpoint failed and how, the operator what it said too."""
    said = b'{"error": {"message": "Rate limit reached for org-Operator42 via http://10.1.2.3:8000/internal"}}'
    async with odd_endpoint(lab, gateway) as rig:
        for status in (500, 429):
            rig.odd.reply = raw(status, said, b"content-type: application/json")
            member = await rig.call(model=rig.lone)
            assert member.status_code == (429 if status == 429 else 502), member.text
            message = member.json()["error"]["message"]
            assert message == f"Endpoint '{rig.endpoint_id}' answered {status}", message
            assert "Operator42" not in member.text and "10.1.2.3" not in member.text
            async with httpx.AsyncClient(timeout=30) as client:
                operator = await client.post(f"{gateway.url}/api/chat", headers=lab.headers(lab.demo.admin_key),
                                             json={**lab.body("/api/chat"), "model": rig.lone})
            assert operator.status_code == member.status_code
            assert rig.endpoint_id in operator.json()["error"] and "org-Operator42" in operator.json()["error"]
            await rig.heard(4)                  # two calls, each tried twice (a retry of the one endpoint)


async def test_an_error_page_on_the_native_ollama_door_reaches_the_client_in_the_doors_shape(
        lab: Lab, gateway: Gateway) -> None:
    """A 404 the upstream wrote as HTML (a proxy's page) is still the client's error, passed on as Ollama's
    `{"error": "..."}` (it was relayed as text/html)."""
    async with odd_endpoint(lab, gateway, ollama=True) as rig:
        rig.odd.reply = raw(404, b"<html><body>404 page not found</body></html>", b"content-type: text/html")
        reply = await rig.call("/api/chat")
        assert reply.status_code == 404 and reply.headers["content-type"].startswith("application/json")
        assert "404 page not found" in reply.json()["error"]
        assert rig.odd.calls == 1
        row = await exactly_one_usage_row(lab.demo, rig.request_ids[-1])
        assert (row["endpoint_id"], row["attempts"], row["status"]) == (rig.endpoint_id, 1, 404)


# --- 200 answers that are none ------------------------------------------------------------------------------------

NO_ANSWERS = {
    "gzip": raw(200, gzip.compress(CHAT_ANSWER), b"content-type: application/json", b"content-encoding: gzip"),
    "gzip transfer coding": raw(200, chunked(gzip.compress(CHAT_ANSWER)), b"content-type: application/json",
                                b"transfer-encoding: gzip, chunked", framed=False),
    "truncated": raw(200, CHAT_ANSWER[:50], b"content-type: application/json"),
    "array": raw(200, b"[]", b"content-type: application/json"),
    "string": raw(200, b'"ok"', b"content-type: application/json"),
    "html": raw(200, b"<html><body>It works!</body></html>", b"content-type: text/html"),
    "empty": raw(200, b"", b"content-type: application/json"),
    "an error": raw(200, b'{"error": {"message": "CUDA out of memory"}}', b"content-type: application/json"),
}


@pytest.mark.parametrize(("path", "ollama"), [("/v1/chat/completions", False), ("/api/chat", True)])
async def test_a_200_that_is_no_answer_is_the_endpoints_failure(lab: Lab, gateway: Gateway, path: str,
                                                                 ollama: bool) -> None:
    """On the OpenAI door and the native Ollama door a whole 200 answer was relayed unchecked (ok, tokens
    estimated): gzip bytes without their Content-Encoding, a cut body, HTML, an out-of-memory error."""
    async with odd_endpoint(lab, gateway, ollama=ollama) as rig:
        for case, reply_to_send in NO_ANSWERS.items():
            rig.odd.reply = reply_to_send
            before = rig.odd.calls
            reply = await rig.call(path)
            assert reply.status_code == 200, (case, reply.text[:300])
            assert reply.headers["content-type"].startswith("application/json"), case
            content = reply.json()["choices"][0]["message"] if not ollama else reply.json()["message"]
            assert content["content"] and content["content"] != "from the odd one", case
            assert rig.odd.calls - before == 1, case
            await rig.heard(1)
        await served_by_a(rig, attempts=2)


@pytest.mark.parametrize(("path", "ollama"), [("/v1/chat/completions", False), ("/api/chat", True)])
async def test_a_200_to_a_streamed_call_that_is_no_stream_is_the_endpoints_failure(
        lab: Lab, gateway: Gateway, path: str, ollama: bool) -> None:
    """Asked for a stream, a page of HTML (or a whole JSON answer) was relayed as it came, with a cut event after
    it, and the call ended there; it is refused before a byte reaches the client now, and the call moves on."""
    async with odd_endpoint(lab, gateway, ollama=ollama) as rig:
        for case in ("html", "array"):
            rig.odd.reply = NO_ANSWERS[case]
            before = rig.odd.calls
            async with httpx.AsyncClient(timeout=30) as client:
                reply = await client.post(f"{gateway.url}{path}", headers=lab.headers(),
                                          json={**lab.body(path), "model": lab.model, "stream": True})
            assert reply.status_code == 200, (case, reply.text[:300])
            assert "<html>" not in reply.text and "stream_cut" not in reply.text and "error" not in reply.text, case
            assert reply.text.rstrip().endswith("data: [DONE]" if not ollama else "}"), (case, reply.text[-200:])
            assert rig.odd.calls - before == 1, case
            await rig.heard(1)


async def test_an_old_servers_head_with_bare_lf_line_ends_is_an_answer(lab: Lab, gateway: Gateway) -> None:
    """Its head was never found: the call waited out the first-byte timeout and moved on, the endpoint blamed."""
    async with odd_endpoint(lab, gateway) as rig:
        head, _, body = raw(200, CHAT_ANSWER, b"content-type: application/json").partition(b"\r\n\r\n")
        rig.odd.reply = head.replace(b"\r\n", b"\n") + b"\n\n" + body
        reply = await rig.call()
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == "from the odd one"
        row = await exactly_one_usage_row(lab.demo, rig.request_ids[-1])
        assert (row["endpoint_id"], row["attempts"], row["input_tokens"]) == (rig.endpoint_id, 1, 9)
        assert row["duration_ms"] < 4000


# --- Retry-After --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "retry_after", "passed_on"), [
    (429, b"1e400", None), (429, b"0.4", "1"), (503, b"-5", None), (503, b"Fri, 31 Dec 9999 23:59:59 GMT", None)])
async def test_an_upstreams_retry_after_reaches_the_client_only_when_sane(
        lab: Lab, gateway: Gateway, status: int, retry_after: bytes, passed_on: str | None) -> None:
    """`retry-after: 1e400` reached the client as it was."""
    async with odd_endpoint(lab, gateway) as rig:
        rig.odd.reply = raw(status, b'{"error": "busy"}', b"content-type: application/json",
                            b"retry-after: " + retry_after)
        reply = await rig.call(model=rig.lone)
        assert reply.status_code == (429 if status == 429 else 502), reply.text
        assert reply.headers.get("retry-after") == passed_on
        attempts = 1 if retry_after.startswith(b"Fri") else 2     # a wait that long is not sat out: no retry
        assert rig.odd.calls == attempts
        await rig.heard(attempts)
