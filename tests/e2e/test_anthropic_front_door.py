"""End to end: the official `anthropic` client against the gateway's Anthropic door (`/v1/messages`), served by an
Ollama endpoint (native `/api/chat`) and an OpenAI-compatible one (`/v1/chat/completions`).

One simulator (answering tool calls) stands behind two endpoints: `<prefix>-ollama` serves the `*-native` model and
`<prefix>-vllm` the `*-translated` one, so the simulator's per-path counters show which API each call used.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anthropic
import httpx
import pytest

from switchyard_gateway.quotas.tokens import TokenEstimator
from switchyard_gateway.services.gateway.translate.anthropic_door import COUNT_TOKENS, count_input_tokens, read_request
from switchyard_gateway.simulator.config import SimConfig
from switchyard_gateway.simulator.server import Simulator
from tests.conftest import DemoStack, wait_for
from tests.e2e.test_demo import exactly_one_usage_row
from tests.e2e.test_quota_e2e import set_limits
from tests.raw_upstream import RawUpstream

TOKENS = 16
PATHS = {"native": "/api/chat", "translated": "/v1/chat/completions"}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
WEATHER = {"name": "get_weather", "description": "The current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"},
                                                             "unit": {"type": "string", "enum": ["c", "f"]}},
                            "required": ["city"]}}


@dataclass
class Upstream:
    demo: DemoStack
    sim: Simulator
    prefix: str
    key: str

    def model(self, served: str) -> str:
        return f"{self.prefix}-{served}"

    def calls(self, path: str) -> int:
        return self.sim.stats.requests.get(path, 0)

    def client(self, key: str | None = None, **options: object) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(base_url=self.demo.url, api_key=key or self.key, max_retries=0, timeout=30,
                                        **options)  # type: ignore[arg-type]


async def _admin(client: httpx.AsyncClient, method: str, path: str, body: dict | None = None) -> dict:
    response = await client.request(method, f"/api/admin/{path}", json=body)
    assert response.status_code in (200, 201), (path, response.status_code, response.text)
    return response.json()


async def add_tenant(demo: DemoStack, tenant: str, models: list[str]) -> str:
    """A tenant that may use `models`, and a key of it."""
    async with httpx.AsyncClient(base_url=demo.url, headers={"X-API-Key": demo.admin_key}, timeout=30) as admin:
        await _admin(admin, "POST", "tenants", {"tenant_id": tenant, "all_models": False})
        for model in models:
            await _admin(admin, "POST", f"tenants/{tenant}/models", {"model_id": model})
        return (await _admin(admin, "POST", f"tenants/{tenant}/keys", {"name": "anthropic door tests"}))["key"]


@asynccontextmanager
async def registered_upstream(demo: DemoStack, prefix: str, **knobs: object) -> AsyncIterator[Upstream]:
    """A simulator behind an Ollama and an OpenAI-compatible endpoint, and a tenant with a key; removed afterwards."""
    names = [f"{prefix}-native", f"{prefix}-translated"]
    config = SimConfig(models=tuple(names), call_tools=True, tokens=TOKENS).with_changes(knobs)
    async with Simulator(config) as sim, \
            httpx.AsyncClient(base_url=demo.url, headers={"X-API-Key": demo.admin_key}, timeout=30) as admin:
        providers = {"ollama": f"{prefix}-ollama-kind", "openai-compatible": f"{prefix}-openai-kind"}
        for kind, provider in providers.items():
            await _admin(admin, "POST", "providers", {"provider_id": provider, "kind": kind})
        for name in names:
            await _admin(admin, "POST", "models", {"model_id": name, "kind": "chat", "context_length": 4096})
        await _admin(admin, "POST", "endpoints", {"endpoint_id": f"{prefix}-ollama", "provider_id": providers["ollama"],
                                                  "base_url": sim.url, "models": [names[0]], "timeout_s": 10.0})
        await _admin(admin, "POST", "endpoints", {"endpoint_id": f"{prefix}-vllm",
                                                  "provider_id": providers["openai-compatible"], "base_url": sim.url,
                                                  "models": [names[1]], "timeout_s": 10.0})
        key = await add_tenant(demo, prefix, names)
        try:
            yield Upstream(demo, sim, prefix, key)
        finally:
            for path in (f"tenants/{prefix}", f"endpoints/{prefix}-ollama", f"endpoints/{prefix}-vllm",
                         *(f"models/{n}" for n in names), *(f"providers/{p}" for p in providers.values())):
                await admin.delete(f"/api/admin/{path}")


@pytest.fixture(scope="module")
async def upstream(demo: DemoStack) -> AsyncIterator[Upstream]:
    async with registered_upstream(demo, f"anth-{uuid.uuid4().hex[:6]}") as registered:
        yield registered


def request_id() -> str:
    return uuid.uuid4().hex


# --- messages.create ------------------------------------------------------------------------------

@pytest.mark.parametrize("served", ["native", "translated"])
async def test_create_answers_a_message_and_records_its_usage(demo: DemoStack, upstream: Upstream,
                                                             served: str) -> None:
    before, rid = upstream.calls(PATHS[served]), request_id()
    message = await upstream.client().messages.create(
        model=upstream.model(served), max_tokens=5, system="Be brief.",
        messages=[{"role": "user", "content": "Grüße aus der Weichenhalle"}], extra_headers={"X-Request-Id": rid})
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message._request_id == rid                  # the SDK reads Anthropic's `request-id` header
    assert message.model == upstream.model(served)
    assert message.content[0].type == "text" and message.content[0].text
    assert (message.stop_reason, message.usage.output_tokens) == ("max_tokens", 5)
    assert upstream.calls(PATHS[served]) == before + 1
    event = await exactly_one_usage_row(demo, rid)
    assert (event["api"], event["outcome"], event["status"], event["stream"]) == ("anthropic.messages", "ok", 200, False)
    assert (event["input_tokens"], event["output_tokens"]) == (message.usage.input_tokens, 5)
    assert event["endpoint_id"] == f"{upstream.prefix}-{'ollama' if served == 'native' else 'vllm'}"


async def test_a_full_answer_ends_its_turn(upstream: Upstream) -> None:
    message = await upstream.client().messages.create(model=upstream.model("translated"), max_tokens=100,
                                                      messages=[{"role": "user", "content": "say it all"}])
    assert (message.stop_reason, message.usage.output_tokens) == ("end_turn", TOKENS)


async def test_a_stop_sequence_the_upstream_names_is_the_stop_reason(upstream: Upstream) -> None:
    client, model = upstream.client(), upstream.model("translated")
    prompt = [{"role": "user", "content": "where does it stop"}]
    whole = (await client.messages.create(model=model, max_tokens=100, messages=prompt)).content[0].text
    word = whole.split()[3]
    cut = await client.messages.create(model=model, max_tokens=100, messages=prompt, stop_sequences=[f" {word}"])
    assert (cut.stop_reason, cut.stop_sequence) == ("stop_sequence", f" {word}")
    assert whole.startswith(cut.content[0].text) and len(cut.content[0].text) < len(whole)


@pytest.mark.parametrize("served", ["native", "translated"])
async def test_images_are_accepted(upstream: Upstream, served: str) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    message = await upstream.client().messages.create(
        model=upstream.model(served), max_tokens=4,
        messages=[{"role": "user", "content": [image, {"type": "text", "text": "What is in this picture?"}]}])
    assert message.content[0].text


async def test_an_image_url_reaches_an_openai_server_and_is_refused_for_ollama(upstream: Upstream) -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/yard.png"}}
    messages = [{"role": "user", "content": [image, {"type": "text", "text": "Describe it."}]}]
    answered = await upstream.client().messages.create(model=upstream.model("translated"), max_tokens=4,
                                                       messages=messages)
    assert answered.content[0].text
    with pytest.raises(anthropic.BadRequestError) as refused:
        await upstream.client().messages.create(model=upstream.model("native"), max_tokens=4, messages=messages)
    assert refused.value.type == "invalid_request_error" and "base64" in (refused.value.api_message or "")


@pytest.mark.parametrize("served", ["native", "translated"])
async def test_a_plain_text_document_is_read_and_a_pdf_refused(upstream: Upstream, served: str) -> None:
    text = {"type": "document", "title": "Notes", "source": {"type": "text", "media_type": "text/plain",
                                                              "data": "The yard opens at six."}}
    ask = {"type": "text", "text": "When does it open?"}
    answered = await upstream.client().messages.create(model=upstream.model(served), max_tokens=4,
                                                       messages=[{"role": "user", "content": [text, ask]}])
    assert answered.content[0].text
    pdf = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}
    with pytest.raises(anthropic.BadRequestError) as refused:
        await upstream.client().messages.create(model=upstream.model(served), max_tokens=4,
                                                messages=[{"role": "user", "content": [pdf, ask]}])
    assert "messages.0.content.0.source: PDF documents are not served" in (refused.value.api_message or "")


# --- tools ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("served", ["native", "translated"])
async def test_a_tool_round_trip(upstream: Upstream, served: str) -> None:
    client, model = upstream.client(), upstream.model(served)
    question = {"role": "user", "content": "What is the weather in Oslo?"}
    first = await client.messages.create(model=model, max_tokens=50, tools=[WEATHER], messages=[question])
    assert first.stop_reason == "tool_use"
    [call] = [block for block in first.content if block.type == "tool_use"]
    assert call.name == "get_weather" and call.id and set(call.input) == {"city", "unit"}
    assert call.input["unit"] == "c"
    result = {"type": "tool_result", "tool_use_id": call.id, "content": "-3 degrees, snow"}
    second = await client.messages.create(model=model, max_tokens=50, tools=[WEATHER], messages=[
        question, {"role": "assistant", "content": first.content}, {"role": "user", "content": [result]}])
    assert second.stop_reason == "end_turn" and second.content[0].type == "text" and second.content[0].text


async def test_tool_choice_none_answers_in_text(upstream: Upstream) -> None:
    message = await upstream.client().messages.create(
        model=upstream.model("translated"), max_tokens=8, tools=[WEATHER], tool_choice={"type": "none"},
        messages=[{"role": "user", "content": "Weather?"}])
    assert [block.type for block in message.content] == ["text"]


# --- streaming ------------------------------------------------------------------------------------

@pytest.mark.parametrize("served", ["native", "translated"])
async def test_stream_text_and_final_message(demo: DemoStack, upstream: Upstream, served: str) -> None:
    rid = request_id()
    async with upstream.client().messages.stream(
            model=upstream.model(served), max_tokens=100, messages=[{"role": "user", "content": "stream it"}],
            extra_headers={"X-Request-Id": rid}) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text and final.content[0].text == text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == TOKENS and final.usage.input_tokens > 0
    event = await exactly_one_usage_row(demo, rid)
    assert (event["api"], event["stream"], event["outcome"]) == ("anthropic.messages", True, "ok")
    assert (event["input_tokens"], event["output_tokens"]) == (final.usage.input_tokens, TOKENS)
    assert event["estimated"] is False


async def test_the_raw_event_sequence_is_anthropics(upstream: Upstream) -> None:
    stream = await upstream.client().messages.create(model=upstream.model("translated"), max_tokens=3, stream=True,
                                                     messages=[{"role": "user", "content": "events please"}])
    kinds = [event.type async for event in stream]
    assert kinds == ["message_start", "content_block_start", "content_block_delta", "content_block_delta",
                     "content_block_delta", "content_block_stop", "message_delta", "message_stop"]


@pytest.mark.parametrize("served", ["native", "translated"])
async def test_a_streamed_tool_call_arrives_as_input_json(upstream: Upstream, served: str) -> None:
    async with upstream.client().messages.stream(
            model=upstream.model(served), max_tokens=50, tools=[WEATHER],
            messages=[{"role": "user", "content": "weather in Bergen, streamed"}]) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert "input_json" in kinds and final.stop_reason == "tool_use"
    [call] = final.content
    assert call.type == "tool_use" and call.name == "get_weather" and set(call.input) == {"city", "unit"}


# --- count_tokens ---------------------------------------------------------------------------------

async def test_count_tokens_counts_with_the_gateways_tokenizer(upstream: Upstream) -> None:
    body = {"model": upstream.model("translated"), "system": "Be brief.", "tools": [WEATHER],
            "messages": [{"role": "user", "content": "How many tokens is this question?"}]}
    counted = await upstream.client().messages.count_tokens(**body)   # type: ignore[arg-type]
    expected = count_input_tokens(read_request(COUNT_TOKENS, json.dumps(body).encode()), TokenEstimator().count)
    assert counted.input_tokens == expected > 20
    with pytest.raises(anthropic.NotFoundError):
        await upstream.client().messages.count_tokens(model="no-such-model", messages=body["messages"])


# --- errors ---------------------------------------------------------------------------------------

async def test_a_bad_key_is_an_authentication_error(upstream: Upstream) -> None:
    with pytest.raises(anthropic.AuthenticationError) as refused:
        await upstream.client("sk-not-a-key").messages.create(model=upstream.model("translated"), max_tokens=5,
                                                             messages=[{"role": "user", "content": "hi"}])
    assert refused.value.type == "authentication_error"


async def test_the_key_may_come_as_a_bearer_token(upstream: Upstream) -> None:
    client = anthropic.AsyncAnthropic(base_url=upstream.demo.url, auth_token=upstream.key, max_retries=0)
    message = await client.messages.create(model=upstream.model("translated"), max_tokens=2,
                                           messages=[{"role": "user", "content": "hi"}])
    assert message.usage.output_tokens == 2


async def test_the_models_list_is_anthropics_page_for_anthropics_client(upstream: Upstream) -> None:
    """Anthropic's client sends `anthropic-version`; it got OpenAI's list, so each model's `created_at` and
    `display_name` and the page's `has_more` and `last_id` read as None."""
    client = upstream.client()
    page = await client.models.list()
    names = sorted([upstream.model("native"), upstream.model("translated")])
    assert [m.id for m in page.data] == names and page.has_more is False
    assert page.first_id == names[0] and page.last_id == names[1]
    assert all(m.type == "model" and m.display_name == m.id and m.created_at.tzinfo is not None for m in page.data)
    assert all((m.lifecycle, m.max_input_tokens) == ("active", 4096) for m in page.data)
    assert [m.id async for m in await client.models.list(limit=1)] == names    # page by page, after_id
    one = await client.models.retrieve(names[1])
    assert (one.id, one.type) == (names[1], "model")
    with pytest.raises(anthropic.NotFoundError):
        await client.models.retrieve("claude-nowhere")
    with pytest.raises(anthropic.BadRequestError):
        await client.models.list(limit=0)
    for hostile in ({"limit": 1001}, {"after_id": "claude-nowhere"}, {"before_id": "../../etc"}):
        with pytest.raises(anthropic.BadRequestError):
            await client.models.list(**hostile)
    async with httpx.AsyncClient(base_url=upstream.demo.url, timeout=10) as http:   # OpenAI's clients: unchanged
        listed = (await http.get("/v1/models", headers={"Authorization": f"Bearer {upstream.key}"})).json()
    assert listed["object"] == "list" and sorted(m["id"] for m in listed["data"]) == names


async def test_an_unknown_model_is_not_found(upstream: Upstream) -> None:
    with pytest.raises(anthropic.NotFoundError) as refused:
        await upstream.client().messages.create(model="claude-nowhere", max_tokens=5,
                                                messages=[{"role": "user", "content": "hi"}])
    assert refused.value.type == "not_found_error" and "claude-nowhere" in (refused.value.api_message or "")


async def test_a_missing_max_tokens_is_an_invalid_request_in_anthropics_shape(upstream: Upstream) -> None:
    async with httpx.AsyncClient(base_url=upstream.demo.url, timeout=10) as http:
        response = await http.post("/v1/messages", headers={"x-api-key": upstream.key,
                                                            "anthropic-version": "2023-06-01"},
                                   json={"model": upstream.model("translated"),
                                         "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 400
    assert response.json() == {"type": "error", "error": {"type": "invalid_request_error",
                                                          "message": "max_tokens: Field required"},
                               "request_id": response.headers["request-id"]}


async def test_every_answer_of_the_door_carries_its_request_id(upstream: Upstream) -> None:
    """Anthropic's errors carry the request's id as `request_id` beside `error` (the `request-id` header's value),
    which the door's did not; and its 405 had no `request-id` header."""
    door = {"x-api-key": upstream.key, "anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient(base_url=upstream.demo.url, timeout=10) as http:
        answers = {
            "405": await http.get("/v1/messages", headers=door),
            "400": await http.post("/v1/messages", headers={**door, "x-request-id": "trace-anth-1"},
                                   json={"model": upstream.model("translated"), "max_tokens": 5,
                                         "messages": [{"role": "user", "content": " "}]}),
            "401": await http.post("/v1/messages/count_tokens", headers={**door, "x-api-key": "sk-not-a-key"},
                                   json={"model": upstream.model("translated"), "messages": []}),
            "404": await http.get("/v1/messages/batches", headers=door),
        }
    for status, answer in answers.items():
        assert answer.status_code == int(status), (status, answer.text)
        assert answer.headers["request-id"] == answer.headers["x-request-id"], status
        body = answer.json()
        assert body["type"] == "error" and body["request_id"] == answer.headers["request-id"], (status, body)
    assert answers["400"].json()["request_id"] == "trace-anth-1"
    with pytest.raises(anthropic.BadRequestError) as refused:
        await upstream.client().messages.create(model=upstream.model("translated"), max_tokens=5,
                                                messages=[{"role": "user", "content": "hi"},
                                                          {"role": "assistant", "content": "Well, "}])
    assert isinstance(refused.value.body, dict) and refused.value.body["request_id"] == refused.value.request_id
    assert "final assistant content cannot end with trailing whitespace" in (refused.value.api_message or "")


async def test_no_endpoint_left_is_anthropics_overloaded_error(demo: DemoStack) -> None:
    """With every endpoint of the model out, the door answered 503 `overloaded_error`, which Anthropic's clients
    take for another error (Anthropic says 529: `anthropic.OverloadedError`, which they retry); it is 529 now,
    with the Retry-After the 503 had. The OpenAI door still says 503."""
    async with registered_upstream(demo, f"anth-down-{uuid.uuid4().hex[:6]}", failure_kind="http_500",
                                   failure_rate=1.0, failure_paths=("/v1/chat/completions",)) as down:
        model, client = down.model("translated"), down.client()
        hi = [{"role": "user", "content": "hi"}]

        async def out() -> tuple[httpx.Response, anthropic.OverloadedError] | None:
            async with httpx.AsyncClient(base_url=demo.url, timeout=10) as http:
                openai = await http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {down.key}"},
                                         json={"model": model, "messages": hi})
            try:
                await client.messages.create(model=model, max_tokens=5, messages=hi)  # type: ignore[arg-type]
            except anthropic.OverloadedError as exc:
                return (openai, exc) if openai.status_code == 503 else None
            except anthropic.APIStatusError:          # not yet known, or the endpoint's failures not yet counted
                return None
            return None

        openai, overloaded = await wait_for(out, timeout_s=30, what="the model's only endpoint to be out")
    assert (overloaded.status_code, overloaded.type) == (529, "overloaded_error")
    assert overloaded.response.headers["retry-after"] == openai.headers["retry-after"]
    assert isinstance(overloaded.body, dict) and overloaded.body["request_id"] == overloaded.request_id
    assert openai.json()["error"]["code"] == "circuit_open"


async def first_refusal(upstream: Upstream, key: str, refusal: type[anthropic.APIStatusError], what: str,
                        max_tokens: int = 50) -> anthropic.APIStatusError:
    """Call until the tenant's new limit is applied and the call is refused with `refusal`."""
    client = upstream.client(key)

    async def refused() -> anthropic.APIStatusError | None:
        try:
            await client.messages.create(model=upstream.model("translated"), max_tokens=max_tokens,
                                         messages=[{"role": "user", "content": "hi"}])
        except refusal as exc:
            return exc
        return None

    return await wait_for(refused, timeout_s=15, what=what)


async def test_a_quota_refusal_is_a_payment_required_error(demo: DemoStack, upstream: Upstream) -> None:
    tenant = f"{upstream.prefix}-poor"
    key = await add_tenant(demo, tenant, [upstream.model("translated")])
    assert set_limits(demo, tenant, daily_tokens=20).status_code == 200
    # each call is held to the output that is left; once not even its prompt fits, it is refused
    error = await first_refusal(upstream, key, anthropic.PaymentRequiredError, "the daily quota to be used up",
                                max_tokens=4000)
    assert error.status_code == 402 and error.type == "billing_error"
    assert isinstance(error.body, dict) and error.body["error"]["quota_type"] == "daily"
    assert error.body["error"]["limit"] == 20


@pytest.mark.parametrize("served", ["native", "translated"])
async def test_max_tokens_is_held_to_what_the_quota_has_left(demo: DemoStack, served: str) -> None:
    async with registered_upstream(demo, f"anth-cap-{uuid.uuid4().hex[:6]}", tokens=1000) as upstream:
        tenant = f"{upstream.prefix}-capped"
        key = await add_tenant(demo, tenant, [upstream.model(served)])
        assert set_limits(demo, tenant, daily_tokens=300).status_code == 200
        client = upstream.client(key)

        async def capped() -> anthropic.types.Message | None:
            answer = await client.messages.create(model=upstream.model(served), max_tokens=4000,
                                                  messages=[{"role": "user", "content": "hi"}])
            return answer if answer.stop_reason == "max_tokens" else None

        answer = await wait_for(capped, timeout_s=15, what="the daily quota to be applied")
        assert 200 < answer.usage.output_tokens and answer.usage.input_tokens + answer.usage.output_tokens <= 300


async def test_a_rate_limit_is_a_rate_limit_error(demo: DemoStack, upstream: Upstream) -> None:
    tenant = f"{upstream.prefix}-busy"
    key = await add_tenant(demo, tenant, [upstream.model("translated")])
    assert set_limits(demo, tenant, rpm=1).status_code == 200
    error = await first_refusal(upstream, key, anthropic.RateLimitError, "the rpm limit to be applied")
    assert error.type == "rate_limit_error" and int(error.response.headers["retry-after"]) >= 1


# --- streams that end early -----------------------------------------------------------------------

async def test_a_client_leaving_mid_stream_records_one_cancelled_call(demo: DemoStack) -> None:
    async with registered_upstream(demo, f"anth-slow-{uuid.uuid4().hex[:6]}", tokens=40,
                                   token_interval_ms=40) as slow:
        rid = request_id()
        seen = 0
        async with slow.client().messages.stream(model=slow.model("translated"), max_tokens=100,
                                                 messages=[{"role": "user", "content": "a long one"}],
                                                 extra_headers={"X-Request-Id": rid}) as stream:
            async for event in stream:
                seen += event.type == "content_block_delta"
                if seen >= 5:
                    break                               # leave: the connection closes with the stream unread
        event = await exactly_one_usage_row(demo, rid)
        assert event["outcome"] == "cancelled" and event["api"] == "anthropic.messages"
        assert 5 <= event["output_tokens"] < 40 and event["input_tokens"] > 0


async def test_an_upstream_cut_ends_the_stream_with_an_error_event(demo: DemoStack) -> None:
    async with registered_upstream(demo, f"anth-cut-{uuid.uuid4().hex[:6]}", tokens=20, failure_kind="cut",
                                   failure_rate=1.0, failure_paths=("/v1/chat/completions",)) as cut:
        rid, said = request_id(), []
        with pytest.raises(anthropic.APIStatusError) as failed:
            async with cut.client().messages.stream(model=cut.model("translated"), max_tokens=100,
                                                    messages=[{"role": "user", "content": "cut me off"}],
                                                    extra_headers={"X-Request-Id": rid}) as stream:
                async with asyncio.timeout(20):
                    async for text in stream.text_stream:
                        said.append(text)
        assert failed.value.type == "api_error" and "cut" in (failed.value.api_message or "")
        event = await exactly_one_usage_row(demo, rid)
        assert said and (event["outcome"], event["estimated"]) == ("error", True)
        assert event["output_tokens"] == -(-len("".join(said).encode()) // 4)       # what was written, 4 bytes a token


async def test_dense_text_behind_a_cheap_opening_is_counted_whole_for_the_hold(demo: DemoStack,
                                                                                upstream: Upstream) -> None:
    """A run of one letter costs a token per few thousand characters: a hold scaled from the first 64 KiB held
    66,384 tokens for a prompt of 408,192 and a tenant with a 200,000-token day was served it. A body this large
    is now counted whole (in a thread) before anything is held, and `count_tokens` says the same."""
    tenant = f"{upstream.prefix}-dense"
    key = await add_tenant(demo, tenant, [upstream.model("translated")])
    assert set_limits(demo, tenant, daily_tokens=200_000).status_code == 200
    text = "a" * 65_536 + "😀" * 200_000
    exact = len(TokenEstimator().encoding.encode_ordinary(text))
    assert exact > 400_000
    messages = [{"role": "user", "content": text}]
    counted = await upstream.client(key).messages.count_tokens(model=upstream.model("translated"),
                                                               messages=messages)  # type: ignore[arg-type]
    assert exact <= counted.input_tokens <= exact + 10
    before = upstream.calls("/v1/chat/completions")
    with pytest.raises(anthropic.PaymentRequiredError):
        await upstream.client(key).messages.create(model=upstream.model("translated"), max_tokens=16,
                                                   messages=messages)  # type: ignore[arg-type]
    assert upstream.calls("/v1/chat/completions") == before, "nothing reached the upstream"


# --- a scripted upstream: answers no simulator gives -------------------------------------------------

def _chunk(delta: dict | None = None, finish: str | None = None, **fields: object) -> dict:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "scripted", "choices": choices,
            **fields}


def _call(index: int, call_id: str | None = None, name: str | None = None, arguments: str | None = None) -> dict:
    function = {key: value for key, value in (("name", name), ("arguments", arguments)) if value is not None}
    call = {"index": index, "function": function}
    if call_id is not None:
        call.update(id=call_id, type="function")
    return {"tool_calls": [call]}


_COUNTS = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
# script -> the stream's chunks; a whole answer holds each call's pieces joined
SCRIPTS: dict[str, list[dict]] = {
    "badargs": [_chunk({"role": "assistant"}), _chunk(_call(0, "call_1", "get_weather", "{not json")),
                _chunk({}, "tool_calls")],
    "arrayargs": [_chunk({"role": "assistant"}), _chunk(_call(0, "call_1", "get_weather", "[1,2]")),
                  _chunk({}, "tool_calls")],
    "late_name": [_chunk({"role": "assistant"}), _chunk(_call(0, "call_1", "", "")),
                  _chunk(_call(0, None, "get_weather", '{"city":')), _chunk(_call(0, None, None, ' "Paris"}')),
                  _chunk({}, "tool_calls")],
}
# script -> the error a stream begins with (HTTP 200)
STREAM_ERRORS: dict[str, dict] = {
    "too_long_streamed": {"error": {"type": "invalid_request_error", "message": "context too long", "code": 400}},
    "busy_streamed": {"error": {"message": "try later", "type": "server_error", "code": 429}},
    "crashed_streamed": {"error": {"message": "model crashed", "type": "server_error"}},
}


class ScriptedUpstream(RawUpstream):
    """An OpenAI-compatible server answering each chat call as its last user message names (`SCRIPTS`,
    `STREAM_ERRORS`; anything else: "ok"), keeping every chat request it was sent in `bodies`."""

    def __init__(self, model: str) -> None:
        super().__init__()
        self.model = model
        self.bodies: list[dict] = []

    async def answer(self, head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        if head.startswith(b"GET"):
            await self._send(writer, 200, "application/json", {"object": "list", "data": [{"id": self.model}]})
            return
        request = json.loads(body)
        self.bodies.append(request)
        last = request["messages"][-1]["content"]
        script = last if isinstance(last, str) else ""
        if script in STREAM_ERRORS:
            await self._send(writer, 200, "text/event-stream", b"data: " + json.dumps(STREAM_ERRORS[script]).encode()
                             + b"\n\n")
            return
        chunks = SCRIPTS.get(script) or [_chunk({"role": "assistant", "content": "ok"}), _chunk({}, "stop")]
        if request.get("stream"):
            events = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n"
                              for c in [*chunks, _chunk(None, usage=_COUNTS)]) + b"data: [DONE]\n\n"
            await self._send(writer, 200, "text/event-stream", events)
            return
        text, calls, finish = "", {}, "stop"
        for c in chunks:
            for choice in c["choices"]:
                text += choice["delta"].get("content") or ""
                finish = choice["finish_reason"] or finish
                for call in choice["delta"].get("tool_calls") or ():
                    whole = calls.setdefault(call["index"], {"id": call.get("id"), "type": "function",
                                                             "function": {"name": "", "arguments": ""}})
                    for key in ("name", "arguments"):
                        whole["function"][key] += call["function"].get(key) or ""
        message = {"role": "assistant", "content": text or None}
        if calls:
            message["tool_calls"] = list(calls.values())
        await self._send(writer, 200, "application/json", {
            "id": "c1", "object": "chat.completion", "created": 1, "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": _COUNTS})

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: int, content_type: str, data: dict | bytes) -> None:
        payload = data if isinstance(data, bytes) else json.dumps(data).encode()
        writer.write(b"HTTP/1.1 %d X\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n"
                     % (status, content_type.encode(), len(payload)) + payload)
        await writer.drain()


@dataclass
class Scripted:
    upstream: ScriptedUpstream
    demo: DemoStack
    model: str
    key: str

    def client(self) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(base_url=self.demo.url, api_key=self.key, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
async def scripted(demo: DemoStack) -> AsyncIterator[Scripted]:
    async with scripted_model(demo, f"anth-scripted-{uuid.uuid4().hex[:6]}") as registered:
        yield registered


@asynccontextmanager
async def scripted_model(demo: DemoStack, prefix: str,
                         scripted: type[ScriptedUpstream] = ScriptedUpstream) -> AsyncIterator[Scripted]:
    """A ScriptedUpstream (or another `scripted` server) behind an OpenAI-compatible endpoint serving its own model,
    and a tenant with a key."""
    model, provider, endpoint = f"{prefix}-model", f"{prefix}-kind", f"{prefix}-endpoint"
    async with scripted(model) as upstream, \
            httpx.AsyncClient(base_url=demo.url, headers={"X-API-Key": demo.admin_key}, timeout=30) as admin:
        await _admin(admin, "POST", "providers", {"provider_id": provider, "kind": "openai-compatible"})
        await _admin(admin, "POST", "models", {"model_id": model, "kind": "chat", "context_length": 4096})
        await _admin(admin, "POST", "endpoints", {"endpoint_id": endpoint, "provider_id": provider,
                                                  "base_url": upstream.url, "models": [model], "timeout_s": 10.0})
        key = await add_tenant(demo, prefix, [model])
        registered = Scripted(upstream, demo, model, key)

        async def served() -> bool:
            try:
                await registered.client().messages.create(model=model, max_tokens=5,
                                                          messages=[{"role": "user", "content": "hi"}])
            except anthropic.NotFoundError:
                return False
            return True

        await wait_for(served, 15, what="the scripted model to be served")
        try:
            yield registered
        finally:
            for path in (f"tenants/{prefix}", f"endpoints/{endpoint}", f"models/{model}", f"providers/{provider}"):
                await admin.delete(f"/api/admin/{path}")


@pytest.mark.parametrize(("script", "expected"), [
    ("badargs", {"arguments": "{not json"}),
    ("arrayargs", {"arguments": [1, 2]}),
    ("late_name", {"city": "Paris"}),
])
async def test_a_streamed_tool_call_is_the_call_the_whole_answer_gives(scripted: Scripted, script: str,
                                                                       expected: dict) -> None:
    """Streamed, a call's arguments were relayed as the upstream wrote them (`{not json` made the SDK raise
    mid-stream, `[1,2]` gave a list as `input`) and a name that came after the call's first piece was lost; whole,
    they were read as an object. Both give the same call now."""
    client = scripted.client()
    body = {"model": scripted.model, "max_tokens": 50, "tools": [WEATHER],
            "messages": [{"role": "user", "content": script}]}
    whole = await client.messages.create(**body)  # type: ignore[arg-type]
    async with client.messages.stream(**body) as stream:  # type: ignore[arg-type]
        streamed = await stream.get_final_message()
    for message in (whole, streamed):
        assert [(b.type, b.id, b.name, b.input) for b in message.content] == [  # type: ignore[union-attr]
            ("tool_use", "call_1", "get_weather", expected)]
        assert message.stop_reason == "tool_use"


@pytest.mark.parametrize(("script", "kind", "message"), [
    ("too_long_streamed", "invalid_request_error", "context too long"),
    ("busy_streamed", "rate_limit_error", "try later"),
    ("crashed_streamed", "api_error", "model crashed"),
])
async def test_an_upstreams_refusal_inside_its_stream_keeps_its_type(scripted: Scripted, script: str, kind: str,
                                                                     message: str) -> None:
    """A stream whose upstream answered with an error event (`{"error": {"type": "invalid_request_error", "code":
    400}}`) ended with an `error` event of type `api_error` whatever that error was; its type is the one its code
    (or its type, when Anthropic has it) stands for now."""
    with pytest.raises(anthropic.APIStatusError) as refused:
        async with scripted.client().messages.stream(model=scripted.model, max_tokens=20,
                                                     messages=[{"role": "user", "content": script}]) as stream:
            await stream.get_final_message()
    assert (refused.value.type, refused.value.api_message) == (kind, message)


async def test_a_failed_tool_result_reaches_the_upstream_as_a_failure(scripted: Scripted) -> None:
    """`is_error: true` was dropped on the way to the upstream: the model read the failure as the tool's answer."""
    call = {"type": "tool_use", "id": "toolu_7", "name": "get_weather", "input": {"city": "Oslo"}}
    result = {"type": "tool_result", "tool_use_id": "toolu_7", "is_error": True, "content": "service unreachable"}
    await scripted.client().messages.create(model=scripted.model, max_tokens=20, tools=[WEATHER], messages=[
        {"role": "user", "content": "weather in Oslo?"}, {"role": "assistant", "content": [call]},
        {"role": "user", "content": [result]}])
    assert scripted.upstream.bodies[-1]["messages"][-1] == {"role": "tool", "tool_call_id": "toolu_7",
                                                            "content": "Error: service unreachable"}


async def test_structured_outputs_reach_the_upstream_as_its_response_format(scripted: Scripted) -> None:
    """The SDK's `output_config.format` is asked of an OpenAI-compatible server as `response_format`."""
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    answer = await scripted.client().messages.create(
        model=scripted.model, max_tokens=20, messages=[{"role": "user", "content": "judge"}],
        output_config={"format": {"type": "json_schema", "schema": schema}})
    assert answer.content[0].type == "text"
    assert scripted.upstream.bodies[-1]["response_format"] == {"type": "json_schema",
                                                               "json_schema": {"name": "output", "schema": schema}}


@pytest.mark.parametrize(("fields", "needle"), [
    ({"container": "container_011CZ"}, "container"),
    ({"mcp_servers": [{"type": "url", "url": "https://mcp.example.com/sse", "name": "example"}]}, "mcp_servers"),
    ({"tool_choice": {"type": "any"}}, "tool_choice"),
])
async def test_what_the_door_cannot_serve_as_asked_is_refused_before_the_upstream(
        scripted: Scripted, fields: dict, needle: str) -> None:
    """Code execution containers and MCP servers were dropped and the call answered without them, and `tool_choice: any`
    with no tools was sent on: each is refused now (400, naming the field), and reaches no upstream."""
    sent = len(scripted.upstream.bodies)
    with pytest.raises(anthropic.BadRequestError) as refused:
        await scripted.client().messages.create(model=scripted.model, max_tokens=20,
                                                messages=[{"role": "user", "content": "hi"}], extra_body=fields)
    assert refused.value.type == "invalid_request_error" and (refused.value.api_message or "").startswith(needle)
    assert len(scripted.upstream.bodies) == sent
    answered = await scripted.client().messages.create(model=scripted.model, max_tokens=20,
                                                       messages=[{"role": "user", "content": "hi"}],
                                                       extra_body={"a_field_from_next_year": True})
    assert answered.content[0].text == "ok"                # a field it does not know is still ignored
