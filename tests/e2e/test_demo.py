"""End to end: the official openai client against `switchyard up --demo`, and the event log behind it."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import httpx
import openai
import pytest

from tests.conftest import DUPLICATE_GRACE_S, DemoStack, wait_for


def client(demo: DemoStack, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{demo.url}/v1", api_key=key or demo.demo_key, max_retries=0)


async def usage_rows(demo: DemoStack, request_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(demo.database_url)
    try:
        return await conn.fetch(
            "SELECT position, payload::text AS payload FROM events"
            " WHERE type = 'usage.recorded.v2' AND payload->>'request_id' = $1", request_id)
    finally:
        await conn.close()


async def exactly_one_usage_row(demo: DemoStack, request_id: str) -> dict:
    import json

    rows = await wait_for(lambda: usage_rows(demo, request_id), timeout_s=15, what=f"usage row for {request_id}")
    # Give a duplicate every chance to show up (DUPLICATE_GRACE_S). Looked at ten times a second (each look is a new
    # PostgreSQL connection: back to back, they kept a core busy all the while).
    deadline = time.monotonic() + DUPLICATE_GRACE_S
    while time.monotonic() < deadline:
        rows = await usage_rows(demo, request_id)
        assert len(rows) == 1, rows
        await asyncio.sleep(0.1)
    rows = await usage_rows(demo, request_id)
    assert len(rows) == 1, rows
    return json.loads(rows[0]["payload"])


def token_counts(demo: DemoStack) -> dict:
    response = httpx.get(f"{demo.url}/api/token_counts", headers={"Authorization": f"Bearer {demo.admin_key}"})
    assert response.status_code == 200
    return response.json()


def model_total(counts: dict, model: str) -> int:
    return sum(row["total_tokens"] for row in counts["breakdown"] if row["model"] == model)


async def settled_total(demo: DemoStack, model: str) -> int:
    """The model's token counts once no earlier call still moves them: the same figure twice, a second apart. The
    demo stack is shared, and an earlier test's last call may reach the log after this test began (a streamed call
    through compose's front, run just before, did: 38 tokens more than this call's)."""
    deadline = time.monotonic() + 20
    last = model_total(token_counts(demo), model)
    while True:
        await asyncio.sleep(1.0)
        now = model_total(token_counts(demo), model)
        if now == last:
            return now
        assert time.monotonic() < deadline, f"{model}'s token counts still moving after 20 s"
        last = now


async def test_chat_completion_is_answered_and_metered_once(demo: DemoStack) -> None:
    before = await settled_total(demo, "llama3.2")
    request_id = uuid.uuid4().hex
    reply = client(demo).chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "Say hello to the switchyard"}],
        extra_headers={"X-Request-Id": request_id},
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    event = await exactly_one_usage_row(demo, request_id)
    assert event["outcome"] == "ok" and event["tenant_id"] == "demo" and event["api"] == "openai.chat"
    assert event["input_tokens"] == reply.usage.prompt_tokens
    assert event["output_tokens"] == reply.usage.completion_tokens
    assert event["endpoint_id"] in ("ollama-1", "vllm-1")
    expected = before + reply.usage.prompt_tokens + reply.usage.completion_tokens
    await wait_for(lambda: model_total(token_counts(demo), "llama3.2") >= expected, what="token_counts")
    assert model_total(token_counts(demo), "llama3.2") == expected


async def test_streamed_chat_relays_chunks_as_they_arrive_and_records_usage(demo: DemoStack) -> None:
    sim = demo.endpoint_url("ollama-1")
    httpx.post(f"{sim}/_sim/config", json={"token_interval_ms": 60, "tokens": 6}).raise_for_status()
    try:
        request_id = uuid.uuid4().hex
        arrivals, text = [], []
        stream = client(demo).chat.completions.create(
            model="llama3.2", messages=[{"role": "user", "content": "stream please"}], stream=True,
            extra_headers={"X-Request-Id": request_id},
        )
        started = time.perf_counter()
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.perf_counter() - started)
                text.append(chunk.choices[0].delta.content)
            assert chunk.usage is None, "the client did not ask for usage, so it must not get the usage chunk"
    finally:
        httpx.post(f"{sim}/_sim/config", json={"token_interval_ms": 0, "tokens": 16}).raise_for_status()
    assert len(text) == 6
    # Relayed as the upstream sent them: the first token came long before the last one.
    assert arrivals[-1] - arrivals[0] > 0.2, arrivals
    event = await exactly_one_usage_row(demo, request_id)
    assert event["stream"] is True and event["outcome"] == "ok"
    assert event["output_tokens"] == 6 and event["estimated"] is False
    assert event["ttfb_ms"] is not None and event["ttfb_ms"] < event["duration_ms"]


async def test_streamed_chat_with_include_usage_passes_the_usage_chunk(demo: DemoStack) -> None:
    stream = client(demo).chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "count me"}], stream=True,
        stream_options={"include_usage": True},
    )
    usage = [chunk.usage for chunk in stream if chunk.usage is not None]
    assert len(usage) == 1 and usage[0].completion_tokens > 0


async def test_embedding_is_answered_and_metered_once(demo: DemoStack) -> None:
    request_id = uuid.uuid4().hex
    reply = client(demo).embeddings.create(model="nomic-embed-text", input=["one sentence", "and another"],
                                           extra_headers={"X-Request-Id": request_id})
    assert len(reply.data) == 2 and len(reply.data[0].embedding) > 0
    event = await exactly_one_usage_row(demo, request_id)
    assert event["api"] == "openai.embeddings" and event["input_tokens"] == reply.usage.prompt_tokens


async def test_models_lists_what_the_tenant_may_use(demo: DemoStack) -> None:
    ids = {m.id for m in client(demo).models.list()}
    assert {"llama3.2", "nomic-embed-text"} <= ids


@pytest.mark.parametrize(
    ("headers", "body", "status", "needle"),
    [
        ({"Authorization": "Bearer sy_nope_wrongwrongwrong"}, b'{"model": "llama3.2"}', 401, "Invalid or expired token"),
        ({}, b'{"model": "llama3.2"}', 401, "Invalid or expired token"),
        (None, b'{"messages": []}', 400, "Missing required field 'model'"),
        (None, b'{"model": "no-such-model", "messages": []}', 404, "None of the configured endpoints advertise"),
        (None, b'{"model": "llama3.2", "messages": [', 400, "Malformed JSON"),
        (None, b'{"model": "llama3.2", "pad": "' + b"x" * (5 * 1024 * 1024) + b'"}', 413, "larger than"),
    ],
    ids=["bad-key", "no-key", "missing-model", "unknown-model", "malformed-json", "oversized"],
)
async def test_bad_requests_get_clear_json_errors_and_no_usage(demo: DemoStack, headers, body, status, needle) -> None:
    request_id = uuid.uuid4().hex
    headers = {"Authorization": f"Bearer {demo.demo_key}"} if headers is None else headers
    response = httpx.post(f"{demo.url}/v1/chat/completions", content=body,
                          headers={**headers, "Content-Type": "application/json", "X-Request-Id": request_id})
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    assert needle in response.text
    assert "error" in response.json()
    assert await usage_rows(demo, request_id) == []


async def test_admin_api_needs_the_admin_role(demo: DemoStack) -> None:
    member = httpx.get(f"{demo.url}/api/admin/tenants", headers={"Authorization": f"Bearer {demo.demo_key}"})
    assert member.status_code == 403
    assert member.json() == {"error": {"code": "FORBIDDEN", "message": "Admin role required"}}
    admin = httpx.get(f"{demo.url}/api/admin/tenants", headers={"X-API-Key": demo.admin_key})
    assert admin.status_code == 200
    assert {t["tenant_id"] for t in admin.json()} >= {"demo", "admin"}


async def test_keys_never_appear_in_admin_responses_events_or_logs(demo: DemoStack) -> None:
    keys = httpx.get(f"{demo.url}/api/admin/tenants/demo/keys", headers={"X-API-Key": demo.admin_key})
    assert keys.status_code == 200 and keys.json()
    assert demo.demo_key not in keys.text and "sha256" not in keys.text
    conn = await asyncpg.connect(demo.database_url)
    try:
        dump = "".join(r["payload"] for r in await conn.fetch("SELECT payload::text AS payload FROM events"))
    finally:
        await conn.close()
    assert demo.demo_key not in dump and demo.admin_key not in dump
    for log in (demo.data_dir / "logs").glob("*.log"):
        text = log.read_text(errors="replace")
        assert demo.demo_key not in text and demo.admin_key not in text, log.name
