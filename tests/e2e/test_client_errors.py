"""End to end: the clients people already use, pointed at the gateway unchanged — official `openai` and `ollama`
SDKs, `langchain-openai` and `langchain-ollama` — including every refusal, which each SDK must turn into its own
exception class with the status, type and code OpenAI's (or Ollama's) error shape carries.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import httpx
import ollama
import openai
import pytest
from langchain_ollama import ChatOllama
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

from tests.conftest import DemoStack
from tests.e2e.test_demo import exactly_one_usage_row
from tests.e2e.test_ollama_front_door import Upstream, registered_upstream
from tests.e2e.test_quota_e2e import new_tenant, set_limits, settled

HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
async def upstream(demo: DemoStack) -> AsyncIterator[Upstream]:
    async with registered_upstream(demo, "sdk") as registered:
        yield registered


def sdk(demo: DemoStack, key: str, base: str = "/v1") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{demo.url}{base}", api_key=key, max_retries=0, timeout=30)


def test_openai_sdk_gets_authentication_error_with_its_code(demo: DemoStack) -> None:
    with pytest.raises(openai.AuthenticationError) as refused:
        sdk(demo, "sy_not_a_key").models.list()
    assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"
    assert refused.value.type == "invalid_request_error" and refused.value.message.endswith("Invalid or expired token")
    with pytest.raises(openai.AuthenticationError):
        sdk(demo, "sy_not_a_key").chat.completions.create(model="llama3.2", messages=HI)


def test_openai_sdk_gets_not_found_for_a_model_or_a_route(demo: DemoStack) -> None:
    client = sdk(demo, demo.demo_key)
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("no-such-model")
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="no-such-model", messages=HI)
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as route:
        client.get("/no/such/route", cast_to=object)
    assert route.value.code == "unknown_url" and route.value.type == "invalid_request_error"
    assert route.value.response.headers["x-request-id"]


def test_openai_sdk_gets_status_errors_for_405_413_and_400(demo: DemoStack) -> None:
    client = sdk(demo, demo.demo_key)
    with pytest.raises(openai.APIStatusError) as not_allowed:
        client.delete("/models", cast_to=object)
    assert not_allowed.value.status_code == 405 and not_allowed.value.code == "method_not_allowed"
    with pytest.raises(openai.APIStatusError) as too_large:
        client.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "x" * 5_000_000}])
    assert too_large.value.status_code == 413 and too_large.value.code == "payload_too_large"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="", messages=HI)
    assert bad.value.code == "missing_field" and bad.value.param == "model"


def test_openai_sdk_gets_permission_denied_for_another_tenant_and_an_admin_route(demo: DemoStack) -> None:
    client = sdk(demo, demo.demo_key)
    with pytest.raises(openai.PermissionDeniedError) as other_tenant:
        client.chat.completions.create(model="llama3.2", messages=HI, extra_headers={"X-Tenant-ID": "someone-else"})
    assert other_tenant.value.code == "insufficient_permissions" and other_tenant.value.status_code == 403
    with pytest.raises(openai.PermissionDeniedError) as denied:
        sdk(demo, demo.demo_key, base="/api/admin").get("/tenants", cast_to=object)
    assert denied.value.status_code == 403 and denied.value.body == {"code": "FORBIDDEN",     # the admin API's shape
                                                                     "message": "Admin role required"}


async def test_openai_sdk_gets_insufficient_quota_with_the_quota_details(demo: DemoStack, urls) -> None:
    tenant, key = new_tenant(demo)
    assert set_limits(demo, tenant, daily_tokens=1).status_code == 200
    client = openai.AsyncOpenAI(base_url=f"{demo.url}/v1", api_key=key, max_retries=0, timeout=30)
    with pytest.raises(openai.APIStatusError) as over:
        await client.chat.completions.create(model="llama3.2", messages=HI)
    error = over.value
    assert error.status_code == 402 and error.type == "insufficient_quota" and error.code == "insufficient_quota"
    assert {"quota_type", "limit", "used", "reset_time", "suggested_models"} <= set(error.body)  # type: ignore[arg-type]
    assert error.body["quota_type"] == "daily" and error.body["limit"] == 1  # type: ignore[index]
    assert error.response.headers["x-request-id"]
    # lifted, the tenant's next call is counted (so its counters are a replay's, as every tenant's must be)
    assert set_limits(demo, tenant, daily_tokens=None).status_code == 200
    await client.chat.completions.create(model="llama3.2", messages=HI)
    await settled(demo, urls, tenant, 1)


async def test_openai_sdk_gets_rate_limit_error_with_retry_after(demo: DemoStack, urls) -> None:
    tenant, key = new_tenant(demo)
    assert set_limits(demo, tenant, rpm=1).status_code == 200
    client = openai.AsyncOpenAI(base_url=f"{demo.url}/v1", api_key=key, max_retries=0, timeout=30)
    await client.chat.completions.create(model="llama3.2", messages=HI)
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(model="llama3.2", messages=HI)
    await settled(demo, urls, tenant, 1)       # the answered call is counted before the next test looks
    assert limited.value.code == "rate_limit_exceeded" and limited.value.type == "requests"
    assert limited.value.body["limit_type"] == "rpm"  # type: ignore[index]
    assert int(limited.value.response.headers["retry-after"]) >= 1
    assert limited.value.response.headers["x-request-id"]


async def test_a_stream_cut_midway_ends_with_an_openai_error_event(demo: DemoStack, upstream: Upstream) -> None:
    """The OpenAI SDK raises APIError from the error event, which has every field of OpenAI's error object."""
    upstream.sim.configure(failure_kind="cut", failure_rate=1.0, token_interval_ms=5, tokens=40,
                           failure_paths=("/v1/chat/completions",))
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            raw = await http.post(f"{demo.url}/v1/chat/completions", headers={"Authorization": f"Bearer {upstream.key}"},
                                  json={"model": upstream.model("translated"), "messages": HI, "stream": True})
        last = [line[6:] for line in raw.text.splitlines() if line.startswith("data: ")][-1]
        error = json.loads(last)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == "stream_cut"
        client = openai.AsyncOpenAI(base_url=f"{demo.url}/v1", api_key=upstream.key, max_retries=0)
        with pytest.raises(openai.APIError) as cut:
            async for _ in await client.chat.completions.create(model=upstream.model("translated"), messages=HI,
                                                                stream=True):
                pass
        assert "cut" in cut.value.message
    finally:
        upstream.sim.configure(failure_rate=0.0, failure_paths=(), tokens=16, token_interval_ms=0.0)


async def test_ollama_sdk_gets_response_errors_with_their_status(demo: DemoStack, upstream: Upstream) -> None:
    wrong = ollama.AsyncClient(host=demo.url, headers={"Authorization": "Bearer sy_not_a_key"})
    with pytest.raises(ollama.ResponseError) as refused:
        await wrong.list()
    assert refused.value.status_code == 401 and refused.value.error == "Invalid or expired token"
    client = ollama.AsyncClient(host=demo.url, headers={"Authorization": f"Bearer {upstream.key}"})
    with pytest.raises(ollama.ResponseError) as missing:
        await client.chat(model="no-such-model", messages=HI)
    assert missing.value.status_code == 404 and "no-such-model" in missing.value.error
    answer = await client.chat(model=upstream.model("translated"), messages=HI)
    assert answer.message.content and answer.eval_count == 16
    calls = upstream.sim.stats.total
    with pytest.raises(ollama.ResponseError) as robot:      # a role Ollama does not have was sent on as it was
        await client.chat(model=upstream.model("translated"), messages=[{"role": "robot", "content": "hi"}])
    assert robot.value.status_code == 400 and "role" in robot.value.error and upstream.sim.stats.total == calls


def test_langchain_openai_chats_streams_and_embeds_through_the_gateway(demo: DemoStack) -> None:
    chat = ChatOpenAI(model="llama3.2", base_url=f"{demo.url}/v1", api_key=demo.demo_key, max_retries=0)
    answer = chat.invoke("Hi")
    assert isinstance(answer.content, str) and answer.content
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] > 0
    chunks = list(chat.stream("Hi"))
    assert "".join(str(c.content) for c in chunks)
    embeddings = OpenAIEmbeddings(model="nomic-embed-text", base_url=f"{demo.url}/v1", api_key=demo.demo_key,
                                  check_embedding_ctx_length=False)
    assert len(embeddings.embed_query("hello")) > 0
    with pytest.raises(openai.AuthenticationError):
        ChatOpenAI(model="llama3.2", base_url=f"{demo.url}/v1", api_key="sy_not_a_key", max_retries=0).invoke("Hi")


async def test_langchain_ollama_chats_with_token_counts_and_durations(demo: DemoStack, upstream: Upstream) -> None:
    chat = ChatOllama(model=upstream.model("translated"), base_url=demo.url,
                      client_kwargs={"headers": {"Authorization": f"Bearer {upstream.key}"}})
    answer = await chat.ainvoke("Hi")
    assert answer.content
    meta = answer.response_metadata
    assert meta["eval_count"] == 16 and meta["total_duration"] > 0 and meta["eval_duration"] > 0
    assert "".join([str(c.content) async for c in chat.astream("Hi")])


@pytest.mark.parametrize("door,model", [("/v1/chat/completions", "translated"), ("/v1/chat/completions", "native"),
                                        ("/api/chat", "native"), ("/api/chat", "translated"),
                                        ("/v1/messages", "translated"), ("/v1/messages", "native")])
async def test_a_client_that_hangs_up_after_the_last_event_has_its_call_recorded_answered(
        demo: DemoStack, upstream: Upstream, door: str, model: str) -> None:
    """The official OpenAI SDK closes its connection as soon as it reads `data: [DONE]` (and an Ollama or Anthropic
    client may, at `"done": true` or `message_stop`); an upstream that ends its body a while after its last event must not turn that
    answered call into a cancelled one."""
    upstream.sim.configure(tokens=3, token_interval_ms=20, end_delay_ms=1500)
    request_id = f"hangup-{door.replace('/', '-')}-{model}-{uuid.uuid4().hex[:8]}"
    last = {"/v1/chat/completions": lambda line: line == "data: [DONE]",
            "/api/chat": lambda line: '"done":true' in line.replace(" ", ""),
            "/v1/messages": lambda line: '"type":"message_stop"' in line.replace(" ", "")}[door]
    try:
        async with httpx.AsyncClient(timeout=30) as http, http.stream(
                "POST", f"{demo.url}{door}", headers={"Authorization": f"Bearer {upstream.key}",
                                                       "X-Request-Id": request_id},
                json={"model": upstream.model(model), "messages": HI, "stream": True, "max_tokens": 50}) as reply:
            assert reply.status_code == 200
            lines = []
            async for line in reply.aiter_lines():
                lines.append(line)
                if last(line):
                    break                       # and hang up: the body's end has not come yet
        assert any(last(line) for line in lines), lines
        event = await exactly_one_usage_row(demo, request_id)
    finally:
        upstream.sim.configure(tokens=16, token_interval_ms=0.0, end_delay_ms=0.0)
    assert (event["outcome"], event["status"]) == ("ok", 200), event
    assert event["output_tokens"] == 3 and not event["estimated"], event


@pytest.mark.parametrize("door,model", [("/v1/chat/completions", "translated"), ("/v1/chat/completions", "native"),
                                        ("/api/chat", "native"), ("/api/chat", "translated"),
                                        ("/v1/messages", "translated"), ("/v1/messages", "native")])
async def test_an_upstream_that_drops_its_connection_after_the_last_event_gave_a_whole_answer(
        demo: DemoStack, upstream: Upstream, door: str, model: str) -> None:
    """Every event came, then the connection dropped before the body's end: the client gets the whole stream with
    its last event and no error after it, and the call is answered (`ok`, tokens counted), not cut."""
    upstream.sim.configure(tokens=3, failure_kind="cut_end", failure_rate=1.0,
                           failure_paths=("/v1/chat/completions", "/api/chat"))
    request_id = f"cutend-{door.replace('/', '-')}-{model}-{uuid.uuid4().hex[:8]}"
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            reply = await http.post(f"{demo.url}{door}", json={
                "model": upstream.model(model), "messages": HI, "stream": True, "max_tokens": 50},
                headers={"Authorization": f"Bearer {upstream.key}", "X-Request-Id": request_id})
        event = await exactly_one_usage_row(demo, request_id)
    finally:
        upstream.sim.configure(failure_rate=0.0, failure_paths=(), tokens=16)
    assert reply.status_code == 200
    lines = [line for line in reply.text.splitlines() if line.strip()]
    last = {"/v1/chat/completions": lambda line: line == "data: [DONE]",
            "/api/chat": lambda line: '"done":true' in line.replace(" ", ""),
            "/v1/messages": lambda line: '"type":"message_stop"' in line.replace(" ", "")}[door]
    assert last(lines[-1]), lines[-3:]                  # ends with its own last event, nothing after it
    assert not any("stream_cut" in line or '"error"' in line for line in lines), lines[-3:]
    assert (event["outcome"], event["status"], event["output_tokens"]) == ("ok", 200, 3), event
