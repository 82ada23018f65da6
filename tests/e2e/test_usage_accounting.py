"""Usage is always counted, through the gateway of `switchyard up --demo`: every accepted call becomes exactly
one usage event, with its outcome, even when the upstream reports no usage, the client leaves mid-stream,
the upstream cuts the stream, or the call fails.

Each test runs against a private account: its own tenant, model (with prices) and endpoints on upstreams
the test controls, so the shared demo is left as it was.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from switchyard_gateway.quotas.tokens import TokenEstimator
from switchyard_gateway.simulator import SimConfig, Simulator
from tests.conftest import DemoStack, wait_for
from tests.e2e.test_demo import exactly_one_usage_row, usage_rows
from tests.raw_upstream import RawUpstream

LEGACY_CHUNKS = ("Legacy", " servers", " ignore", " stream", " options")


async def admin(demo: DemoStack, method: str, path: str, body: dict | None = None) -> dict:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.request(method, f"{demo.url}/api/admin{path}", json=body,
                                         headers={"X-API-Key": demo.admin_key})
    assert response.status_code in (200, 201), response.text
    return response.json()


class LegacyUpstream(RawUpstream):
    """An OpenAI-style server of the kind that ignores `stream_options` and never reports usage (older
    Ollama and vLLM builds did): five content chunks, then [DONE]. Not ours, so played here over real HTTP."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict] = []

    async def answer(self, head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        request = json.loads(body) if body else {}
        self.requests.append(request)
        writer.write(self._answer(head.split(b" ", 2)[1], request))
        await writer.drain()

    @staticmethod
    def _answer(path: bytes, body: dict) -> bytes:
        if path != b"/v1/chat/completions":
            data = json.dumps({"object": "list", "data": [{"id": body.get("model", "legacy"), "object": "model"}]})
            return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
                len(data), data.encode())
        head = {"id": "legacy-1", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
        events = [{**head, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
                  for text in LEGACY_CHUNKS]
        events.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        payload = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
        chunk = b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
        return b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" + chunk


@dataclass
class Account:
    demo: DemoStack
    sim: Simulator
    legacy: LegacyUpstream
    tenant: str
    key: str
    model: str
    legacy_model: str

    def headers(self, request_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", "X-Request-Id": request_id}

    def chat_body(self, stream: bool, model: str | None = None) -> dict:
        return {"model": model or self.model, "stream": stream,
                "messages": [{"role": "user", "content": "count every token of this call"}]}


@pytest.fixture
async def account(demo: DemoStack) -> AsyncIterator[Account]:
    tag = uuid.uuid4().hex[:8]
    model, legacy_model, tenant = f"acct-{tag}", f"legacy-{tag}", f"acct-{tag}"
    async with Simulator(SimConfig(models=(model,), tokens=12)) as sim, LegacyUpstream() as legacy:
        await admin(demo, "POST", "/providers", {"provider_id": f"acct-{tag}", "kind": "openai-compatible"})
        for model_id in (model, legacy_model):
            await admin(demo, "POST", "/models", {"model_id": model_id, "input_price_per_1m": 1.0,
                                                  "output_price_per_1m": 2.0})
        endpoints = {f"acct-{tag}": (sim.url, model), f"legacy-{tag}": (legacy.url, legacy_model)}
        for endpoint_id, (url, served) in endpoints.items():
            await admin(demo, "POST", "/endpoints", {"endpoint_id": endpoint_id, "provider_id": f"acct-{tag}",
                                                     "base_url": url, "models": [served], "timeout_s": 5.0})
        await admin(demo, "POST", "/tenants", {"tenant_id": tenant})
        issued = await admin(demo, "POST", f"/tenants/{tenant}/keys", {"name": "accounting"})
        try:
            yield Account(demo, sim, legacy, tenant, issued["key"], model, legacy_model)
        finally:
            for endpoint_id in endpoints:
                await admin(demo, "DELETE", f"/endpoints/{endpoint_id}")


async def stats(account: Account, model: str) -> dict:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{account.demo.url}/api/stats", json={"model": model},
                                     headers={"Authorization": f"Bearer {account.key}"})
    assert response.status_code == 200, response.text
    return response.json()


async def test_stream_whose_upstream_reports_no_usage_is_counted_from_the_stream(account: Account) -> None:
    request_id = uuid.uuid4().hex
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{account.demo.url}/v1/chat/completions", headers=account.headers(request_id),
                                     json=account.chat_body(stream=True, model=account.legacy_model))
    assert response.status_code == 200
    assert "".join(LEGACY_CHUNKS) in "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content", "")
        for line in response.text.splitlines() if line.startswith("data: {"))
    assert account.legacy.requests[-1]["stream_options"] == {"include_usage": True}   # the gateway asked
    event = await exactly_one_usage_row(account.demo, request_id)
    # a token per 4 bytes the model wrote, as a whole answer's estimate (a token per chunk left tool calls unbilled)
    written = len("".join(LEGACY_CHUNKS))
    assert (event["outcome"], event["estimated"], event["output_tokens"]) == ("ok", True, -(-written // 4))
    # the prompt counted with the reservation's tokenizer (chat formatting included), never bytes / 4
    assert event["input_tokens"] == 3 + 3 + TokenEstimator().count(account.chat_body(True)["messages"][0]["content"])
    figures = await wait_for(lambda: _with_calls(stats(account, account.legacy_model), 1), what="stats of the call")
    assert figures["estimated_calls"] == 1
    assert figures["total_tokens"] == event["input_tokens"] + event["output_tokens"]


async def _with_calls(pending, calls: int) -> dict | None:
    figures = await pending
    return figures if figures["calls"] >= calls else None


async def test_client_leaving_mid_stream_records_a_cancelled_call_with_its_partial_tokens(account: Account) -> None:
    account.sim.configure(tokens=40, token_interval_ms=40)
    request_id = uuid.uuid4().hex
    seen = 0
    async with httpx.AsyncClient(timeout=10) as client, client.stream(
            "POST", f"{account.demo.url}/v1/chat/completions", headers=account.headers(request_id),
            json=account.chat_body(stream=True)) as response:
        assert response.status_code == 200
        async for chunk in response.aiter_raw():
            seen += chunk.count(b'"content":')
            if seen >= 5:
                break                                   # leave: the connection closes with the stream unread
    event = await exactly_one_usage_row(account.demo, request_id)
    assert event["outcome"] == "cancelled"
    assert 5 <= event["output_tokens"] < 40             # what was relayed, not the whole answer
    assert event["input_tokens"] > 0


async def test_upstream_cutting_the_stream_records_an_error_with_its_partial_tokens(account: Account) -> None:
    account.sim.configure(tokens=20, failure_kind="cut", failure_rate=1.0)
    request_id = uuid.uuid4().hex
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{account.demo.url}/v1/chat/completions", headers=account.headers(request_id),
                                     json=account.chat_body(stream=True))
    assert response.status_code == 200                  # the stream had begun; it ends with an error event
    assert "error" in response.text
    event = await exactly_one_usage_row(account.demo, request_id)
    assert event["outcome"] == "error"
    streamed = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                       for line in response.text.splitlines() if line.startswith('data: {"id"'))
    assert streamed and '"finish_reason":"stop"' not in response.text        # about half of the answer came
    assert event["output_tokens"] == -(-len(streamed) // 4) and event["estimated"] is True   # what was written


async def test_upstream_cutting_a_whole_answer_records_an_error_with_its_prompt_estimated(account: Account) -> None:
    """An upstream that cut its answer mid-body had read the prompt (and bills it): the call was recorded with 0
    tokens, where a cut stream records its prompt estimated. Both now do."""
    account.sim.configure(tokens=20, failure_kind="cut", failure_rate=1.0)
    request_id = uuid.uuid4().hex
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{account.demo.url}/v1/chat/completions", headers=account.headers(request_id),
                                     json=account.chat_body(stream=False))
    assert response.status_code == 502 and "cut" in response.text
    event = await exactly_one_usage_row(account.demo, request_id)
    assert (event["outcome"], event["estimated"]) == ("error", True)
    assert event["input_tokens"] > 0 and event["output_tokens"] == 0


async def test_failed_call_records_one_error_event(account: Account) -> None:
    account.sim.configure(failure_kind="http_500", failure_rate=1.0)
    request_id = uuid.uuid4().hex
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{account.demo.url}/v1/chat/completions", headers=account.headers(request_id),
                                     json=account.chat_body(stream=False))
    assert response.status_code >= 500
    event = await exactly_one_usage_row(account.demo, request_id)
    assert (event["outcome"], event["status"]) == ("error", response.status_code)
    assert event["attempts"] >= 1 and event["output_tokens"] == 0


async def test_every_call_of_a_mixed_burst_is_recorded_exactly_once(account: Account) -> None:
    ids = [uuid.uuid4().hex for _ in range(40)]
    async with httpx.AsyncClient(timeout=10) as client:
        replies = await asyncio.gather(*(
            client.post(f"{account.demo.url}/v1/chat/completions", headers=account.headers(rid),
                        json=account.chat_body(stream=i % 2 == 0))
            for i, rid in enumerate(ids)))
    assert [r.status_code for r in replies] == [200] * len(ids)
    await wait_for(lambda: _all_recorded(account.demo, ids), timeout_s=15, what="40 usage rows")
    counts = [len(await usage_rows(account.demo, rid)) for rid in ids]
    assert counts == [1] * len(ids)
    figures = await wait_for(lambda: _with_calls(stats(account, account.model), len(ids)), what="stats of 40 calls")
    assert figures["calls"] == len(ids) and figures["errors"] == 0
    assert figures["cost_usd"] == pytest.approx(
        (figures["input_tokens"] * 1.0 + figures["output_tokens"] * 2.0) / 1e6)


async def _all_recorded(demo: DemoStack, ids: list[str]) -> bool:
    import asyncpg

    conn = await asyncpg.connect(demo.database_url)
    try:
        found = await conn.fetchval(
            "SELECT count(DISTINCT payload->>'request_id') FROM events"
            " WHERE type = 'usage.recorded.v2' AND payload->>'request_id' = ANY($1)", ids)
    finally:
        await conn.close()
    return found == len(ids)


async def test_cached_prompt_tokens_are_recorded_shown_and_priced_at_the_cached_price(account: Account) -> None:
    account.sim.configure(cached_tokens=3)
    await admin(account.demo, "PUT", f"/models/{account.model}", {"cached_input_price_per_1m": 0.25})
    calls = [("/v1/chat/completions", account.chat_body(stream=False)),
             ("/v1/chat/completions", account.chat_body(stream=True)),
             ("/api/chat", {**account.chat_body(stream=False), "options": {"num_predict": 4}}),
             ("/api/chat", {**account.chat_body(stream=True), "options": {"num_predict": 4}})]
    events = []
    async with httpx.AsyncClient(timeout=10) as client:
        for path, body in calls:
            request_id = uuid.uuid4().hex
            response = await client.post(f"{account.demo.url}{path}", headers=account.headers(request_id), json=body)
            assert response.status_code == 200, response.text
            if path == "/api/chat":                 # translated for this OpenAI-compatible endpoint
                assert json.loads(response.text.splitlines()[-1])["prompt_eval_cached_count"] == 3
            else:
                assert '"prompt_tokens_details"' in response.text or body["stream"]
            events.append(await exactly_one_usage_row(account.demo, request_id))
    assert [e["cached_tokens"] for e in events] == [3, 3, 3, 3]
    assert all(e["estimated"] is False and e["input_tokens"] > 3 for e in events)
    figures = await wait_for(lambda: _with_calls(stats(account, account.model), len(calls)), what="stats of 4 calls")
    assert figures["cached_tokens"] == 12
    assert figures["cost_usd"] == pytest.approx(
        ((figures["input_tokens"] - 12) * 1.0 + 12 * 0.25 + figures["output_tokens"] * 2.0) / 1e6)
    async with httpx.AsyncClient(timeout=10) as client:
        counts = (await client.get(f"{account.demo.url}/api/token_counts",
                                   headers={"Authorization": f"Bearer {account.key}"})).json()
    assert [row["cached_tokens"] for row in counts["breakdown"] if row["model"] == account.model] == [12]
