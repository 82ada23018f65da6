"""End to end: the official `openai` client's Responses API (`client.responses`) against the gateway's Responses door
(`/v1/responses`), translated to chat completions for an Ollama endpoint and an OpenAI-compatible one alike.

One simulator (answering tool calls) stands behind both endpoints (tests/e2e/test_anthropic_front_door.py's
`registered_upstream`): `*-native` is served by the `ollama` one, `*-translated` by the `openai-compatible` one; both
are asked through `/v1/chat/completions`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import openai
import pytest

from tests.conftest import DUPLICATE_GRACE_S, DemoStack, wait_for
from tests.e2e.test_anthropic_front_door import TOKENS, Upstream, add_tenant, registered_upstream
from tests.e2e.test_demo import exactly_one_usage_row, usage_rows
from tests.e2e.test_quota_e2e import set_limits

CHAT = "/v1/chat/completions"
WEATHER = {"type": "function", "name": "get_weather", "description": "The current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                           "unit": {"type": "string", "enum": ["c", "f"]}},
                          "required": ["city"]}}


def client(demo: DemoStack, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{demo.url}/v1", api_key=key, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
async def upstream(demo: DemoStack) -> AsyncIterator[Upstream]:
    async with registered_upstream(demo, f"resp-{uuid.uuid4().hex[:6]}") as registered:
        yield registered


def _usage(event: dict) -> tuple[int, int]:
    return event["input_tokens"], event["output_tokens"]


@pytest.mark.parametrize("served", ["native", "translated"])
async def test_create_answers_a_response_and_records_its_usage_once(demo: DemoStack, upstream: Upstream,
                                                                    served: str) -> None:
    before, native_before, rid = upstream.calls(CHAT), upstream.calls("/api/chat"), uuid.uuid4().hex
    response = await client(demo, upstream.key).responses.create(
        model=upstream.model(served), instructions="Be brief.", input="Grüße aus der Weichenhalle",
        max_output_tokens=5, extra_headers={"X-Request-Id": rid})
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.model == upstream.model(served) and response.output_text
    assert (response.status, response.incomplete_details.reason) == ("incomplete", "max_output_tokens")
    assert response.instructions == "Be brief." and response.max_output_tokens == 5 and response.tools == []
    [message] = response.output
    assert message.type == "message" and message.id.startswith("msg_") and message.content[0].type == "output_text"
    assert (upstream.calls(CHAT), upstream.calls("/api/chat")) == (before + 1, native_before)
    event = await exactly_one_usage_row(demo, rid)
    assert (event["api"], event["outcome"], event["status"], event["stream"]) == ("openai.responses", "ok", 200, False)
    assert _usage(event) == (response.usage.input_tokens, response.usage.output_tokens) and event["output_tokens"] == 5
    assert response.usage.total_tokens == sum(_usage(event))


async def test_a_stream_ends_with_the_completed_response_and_its_recorded_usage(demo: DemoStack,
                                                                                 upstream: Upstream) -> None:
    rid = uuid.uuid4().hex
    async with client(demo, upstream.key).responses.stream(
            model=upstream.model("translated"), input=[{"role": "user", "content": "stream it"}],
            max_output_tokens=100, extra_headers={"X-Request-Id": rid}) as stream:
        text = "".join([event.delta async for event in stream if event.type == "response.output_text.delta"])
        final = await stream.get_final_response()
    assert text and final.output_text == text and final.status == "completed"
    assert final.usage.output_tokens == TOKENS and final.usage.input_tokens > 0
    event = await exactly_one_usage_row(demo, rid)
    assert (event["api"], event["stream"], event["outcome"], event["estimated"]) == ("openai.responses", True, "ok",
                                                                                     False)
    assert _usage(event) == (final.usage.input_tokens, final.usage.output_tokens)


async def test_the_raw_event_sequence_is_the_responses_apis(demo: DemoStack, upstream: Upstream) -> None:
    stream = await client(demo, upstream.key).responses.create(model=upstream.model("native"), input="events please",
                                                               max_output_tokens=3, stream=True)
    events = [event async for event in stream]
    assert [event.type for event in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.incomplete"]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert len({event.response.id for event in events if hasattr(event, "response")}) == 1
    assert events[-1].response.usage.output_tokens == 3


@pytest.mark.parametrize("served", ["native", "translated"])
async def test_a_function_call_round_trip(demo: DemoStack, upstream: Upstream, served: str) -> None:
    api, model = client(demo, upstream.key), upstream.model(served)
    question = {"role": "user", "content": "What is the weather in Oslo?"}
    first = await api.responses.create(model=model, input=[question], tools=[WEATHER], max_output_tokens=50)
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id and call.id.startswith("fc_")
    assert set(json.loads(call.arguments)) == {"city", "unit"} and first.output_text == ""
    answered = [question, *[item.model_dump(exclude_none=True) for item in first.output],
                {"type": "function_call_output", "call_id": call.call_id, "output": "-3 degrees, snow"}]
    second = await api.responses.create(model=model, input=answered, tools=[WEATHER], max_output_tokens=50)
    assert second.status == "completed" and second.output_text and second.output[0].type == "message"
    async with api.responses.stream(model=model, input=[question], tools=[WEATHER], max_output_tokens=50) as stream:
        kinds = [event.type async for event in stream]
        streamed = await stream.get_final_response()
    assert "response.function_call_arguments.done" in kinds
    [streamed_call] = streamed.output
    assert (streamed_call.type, streamed_call.name) == ("function_call", "get_weather")
    assert set(json.loads(streamed_call.arguments)) == {"city", "unit"}


@pytest.mark.parametrize(("fields", "param"), [
    ({"previous_response_id": "resp_earlier"}, "previous_response_id"),
    ({"background": True}, "background"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"max_output_tokens": 5000}, "max_output_tokens"),
    ({"temperature": "hot"}, "temperature"),
])
async def test_what_the_door_cannot_serve_is_refused_before_the_upstream(demo: DemoStack, upstream: Upstream,
                                                                         fields: dict, param: str) -> None:
    before = upstream.calls(CHAT)
    with pytest.raises(openai.BadRequestError) as refused:
        await client(demo, upstream.key).responses.create(model=upstream.model("translated"), input="hi",
                                                          extra_body=fields)
    assert refused.value.param == param and refused.value.type == "invalid_request_error"
    assert upstream.calls(CHAT) == before


async def test_quota_refusals_are_openais_402_and_rate_limit_error(demo: DemoStack, upstream: Upstream) -> None:
    poor, busy = f"{upstream.prefix}-poor", f"{upstream.prefix}-busy"
    keys = {tenant: await add_tenant(demo, tenant, [upstream.model("translated")]) for tenant in (poor, busy)}
    assert set_limits(demo, poor, daily_tokens=20).status_code == 200
    assert set_limits(demo, busy, rpm=1).status_code == 200

    async def refusal(tenant: str) -> openai.APIStatusError | None:
        asked = client(demo, keys[tenant]).responses.create(model=upstream.model("translated"), input="hi",
                                                            max_output_tokens=4000 if tenant == poor else 5)
        outcome = (await asyncio.gather(asked, return_exceptions=True))[0]
        return outcome if isinstance(outcome, openai.APIStatusError) else None

    payment = await wait_for(lambda: refusal(poor), timeout_s=15, what="the daily quota to be used")
    assert payment.status_code == 402 and payment.code == "insufficient_quota"
    assert isinstance(payment.body, dict) and (payment.body["quota_type"], payment.body["limit"]) == ("daily", 20)
    limited = await wait_for(lambda: refusal(busy), timeout_s=15, what="the rpm limit to be applied")
    assert isinstance(limited, openai.RateLimitError) and limited.code == "rate_limit_exceeded" and int(limited.response.headers["retry-after"]) >= 1


async def test_a_client_leaving_mid_stream_records_one_cancelled_call(demo: DemoStack) -> None:
    async with registered_upstream(demo, f"resp-slow-{uuid.uuid4().hex[:6]}", tokens=40,
                                   token_interval_ms=40) as slow:
        rid, deltas = uuid.uuid4().hex, 0
        stream = await client(demo, slow.key).responses.create(model=slow.model("translated"), input="a long one",
                                                               stream=True, extra_headers={"X-Request-Id": rid})
        events = stream.__aiter__()
        while deltas < 5:
            deltas += (await events.__anext__()).type == "response.output_text.delta"
        await stream.close()                            # leave: the connection closes with the stream unread
        event = await exactly_one_usage_row(demo, rid)
        assert (event["outcome"], event["api"]) == ("cancelled", "openai.responses")
        assert 5 <= event["output_tokens"] < 40 and event["input_tokens"] > 0


async def test_an_upstream_cut_ends_the_stream_with_response_failed(demo: DemoStack) -> None:
    async with registered_upstream(demo, f"resp-cut-{uuid.uuid4().hex[:6]}", tokens=20, failure_kind="cut",
                                   failure_rate=1.0, failure_paths=(CHAT,)) as cut:
        rid = uuid.uuid4().hex
        stream = await client(demo, cut.key).responses.create(model=cut.model("translated"), input="cut me off",
                                                              stream=True, extra_headers={"X-Request-Id": rid})
        events = await asyncio.wait_for(_all(stream), 20)
        error, failed = events[-2:]
        assert (error.type, error.code, failed.type) == ("error", "stream_cut", "response.failed")
        assert failed.response.status == "failed" and "cut" in failed.response.error.message
        assert error.sequence_number + 1 == failed.sequence_number
        event = await exactly_one_usage_row(demo, rid)
        assert (event["outcome"], event["estimated"]) == ("error", True) and event["output_tokens"] > 0
        usage = failed.response.usage            # none before: what was spent, as the usage event records it
        assert (usage.input_tokens, usage.output_tokens) == (event["input_tokens"], event["output_tokens"]), usage


async def _all(stream: openai.AsyncStream) -> list:
    return [event async for event in stream]


async def test_input_tokens_counts_the_prompt_as_count_tokens_does_and_records_no_call(demo: DemoStack,
                                                                                       upstream: Upstream) -> None:
    """`client.responses.input_tokens.count` was a 404: it counts what a call's quota hold would (the same
    tokenizer and framing as the Anthropic door's `count_tokens`), reaches no endpoint and records no usage."""
    responses, rid, model = client(demo, upstream.key).responses, uuid.uuid4().hex, upstream.model("translated")
    before = upstream.calls(CHAT)
    text = "Grüße aus der Weichenhalle"
    counted = await responses.input_tokens.count(model=model, instructions="Be brief.", input=text,
                                                 extra_headers={"X-Request-Id": rid})
    anthropic_count = await upstream.client().messages.count_tokens(
        model=model, system="Be brief.", messages=[{"role": "user", "content": text}])
    assert counted.object == "response.input_tokens" and counted.input_tokens == anthropic_count.input_tokens > 0
    image = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}
    shown = await responses.input_tokens.count(model=model, instructions="Be brief.", input=[
        {"role": "user", "content": [{"type": "input_text", "text": text}, image]}], tools=[WEATHER])
    assert shown.input_tokens > counted.input_tokens + 100                 # the image and the tool count too
    with pytest.raises(openai.NotFoundError):                              # a model not the tenant's
        await responses.input_tokens.count(model="no-such-model", input=text)
    for fields, param in (({}, "input"), ({"input": 5}, "input"),
                          ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]},
                           "input[0].call_id")):
        with pytest.raises(openai.BadRequestError) as refused:
            await responses.input_tokens.count(model=model, extra_body=fields)
        assert refused.value.param == param or param in str(refused.value), refused.value
    assert upstream.calls(CHAT) == before
    await asyncio.sleep(DUPLICATE_GRACE_S)
    assert await usage_rows(demo, rid) == []
