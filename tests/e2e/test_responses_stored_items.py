"""End to end: the Responses door keeps an answer's output items, and a later request names them by `item_reference`
(as the AI SDK's default Responses model does from its second turn), through the `openai` client and raw HTTP.

The demo gateway keeps items for the default `SWITCHYARD_RESPONSES_STORE_TTL_S`; their expiry is shown against the
session's Valkey with a short TTL (tests/integration/test_kept_items_valkey.py).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from tests.conftest import DemoStack, wait_for
from tests.e2e.test_anthropic_front_door import Upstream, add_tenant, registered_upstream
from tests.e2e.test_demo import usage_rows
from tests.e2e.test_responses_front_door import WEATHER, client

QUESTION = {"role": "user", "content": "Tell me about the switchyard at Hagen"}
FOLLOW_UP = {"role": "user", "content": "And its history?"}


@pytest.fixture(scope="module")
async def upstream(demo: DemoStack) -> AsyncIterator[Upstream]:
    async with registered_upstream(demo, f"kept-{uuid.uuid4().hex[:6]}") as registered:
        yield registered


async def _input_tokens(demo: DemoStack, request_id: str) -> int:
    [row] = await wait_for(lambda: usage_rows(demo, request_id), timeout_s=15, what=f"usage row for {request_id}")
    return json.loads(row["payload"])["input_tokens"]


async def _post(demo: DemoStack, key: str, body: dict | bytes) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with httpx.AsyncClient(base_url=demo.url, timeout=30) as http:
        return await http.post("/v1/responses", content=content,
                               headers={"authorization": f"Bearer {key}", "content-type": "application/json"})


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
async def test_a_second_turn_refers_to_the_first_answers_message_and_is_counted_with_it(
        demo: DemoStack, upstream: Upstream, streamed: bool) -> None:
    api, model = client(demo, upstream.key), upstream.model("translated")
    if streamed:
        async with api.responses.stream(model=model, input=[QUESTION], max_output_tokens=20) as stream:
            first = await stream.get_final_response()
    else:
        first = await api.responses.create(model=model, input=[QUESTION], max_output_tokens=20)
    [message] = first.output
    assert first.store is True and message.type == "message" and first.output_text
    ids = {name: uuid.uuid4().hex for name in ("referred", "whole", "without")}
    referred = await api.responses.create(
        model=model, input=[QUESTION, {"type": "item_reference", "id": message.id}, FOLLOW_UP],
        max_output_tokens=20, extra_headers={"X-Request-Id": ids["referred"]})
    assert referred.status == "completed" and referred.output_text and referred.store is True
    await api.responses.create(model=model, input=[QUESTION, message.model_dump(exclude_none=True), FOLLOW_UP],
                               max_output_tokens=20, extra_headers={"X-Request-Id": ids["whole"]})
    await api.responses.create(model=model, input=[QUESTION, FOLLOW_UP], max_output_tokens=20,
                               extra_headers={"X-Request-Id": ids["without"]})
    counted = {name: await _input_tokens(demo, rid) for name, rid in ids.items()}
    assert counted["referred"] == counted["whole"] > counted["without"]
    assert referred.usage.input_tokens == counted["referred"]


async def test_a_tool_round_trip_refers_to_the_function_call_item(demo: DemoStack, upstream: Upstream) -> None:
    api, model = client(demo, upstream.key), upstream.model("native")
    question = {"role": "user", "content": "What is the weather in Oslo?"}
    first = await api.responses.create(model=model, input=[question], tools=[WEATHER], max_output_tokens=50)
    [call] = first.output
    assert call.type == "function_call" and call.id.startswith("fc_") and first.store is True
    second = await api.responses.create(model=model, tools=[WEATHER], max_output_tokens=50, input=[
        question, {"type": "item_reference", "id": call.id},
        {"type": "function_call_output", "call_id": call.call_id, "output": "-3 degrees, snow"}])
    assert second.status == "completed" and second.output[0].type == "message" and second.output_text


async def test_an_answer_with_store_false_is_not_kept(demo: DemoStack, upstream: Upstream) -> None:
    api, model = client(demo, upstream.key), upstream.model("translated")
    first = await api.responses.create(model=model, input=[QUESTION], max_output_tokens=10, store=False)
    assert first.store is False
    with pytest.raises(openai.BadRequestError) as refused:
        await api.responses.create(model=model, max_output_tokens=10,
                                   input=[QUESTION, {"type": "item_reference", "id": first.output[0].id}, FOLLOW_UP])
    error = refused.value.body
    assert (error["param"], error["code"]) == ("input[1].id", "item_not_found") and first.output[0].id in \
        error["message"]


async def test_another_tenants_item_is_not_found(demo: DemoStack, upstream: Upstream) -> None:
    model = upstream.model("translated")
    first = await client(demo, upstream.key).responses.create(model=model, input=[QUESTION], max_output_tokens=10)
    other = await add_tenant(demo, f"kept-other-{uuid.uuid4().hex[:6]}", [model])
    with pytest.raises(openai.BadRequestError) as refused:
        await client(demo, other).responses.create(
            model=model, max_output_tokens=10, input=[{"type": "item_reference", "id": first.output[0].id}, FOLLOW_UP])
    assert refused.value.body["param"] == "input[0].id"


HOSTILE = [
    ("msg_" + "a" * 10_000, "input[0].id"),
    ("msg_x:sy", "input[0].id"),
    ("../../etc", "input[0].id"),
    ("msg_\u00e9\u0000*", "input[0].id"),
    (5, "input[0].id"),
    (None, "input[0].id"),
    ([{"id": "msg_1"}], "input[0].id"),
    ({"$ne": 1}, "input[0].id"),
]


@pytest.mark.parametrize(("item_id", "param"), HOSTILE, ids=range(len(HOSTILE)))
async def test_a_hostile_reference_is_a_400_naming_it(demo: DemoStack, upstream: Upstream, item_id: object,
                                                      param: str) -> None:
    answer = await _post(demo, upstream.key, {"model": upstream.model("translated"), "max_output_tokens": 5,
                                              "input": [{"type": "item_reference", "id": item_id}, FOLLOW_UP]})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param and len(answer.text) < 2000


async def test_ten_thousand_references_are_a_400(demo: DemoStack, upstream: Upstream) -> None:
    items = [{"type": "item_reference", "id": f"msg_{n}"} for n in range(10_000)]
    answer = await _post(demo, upstream.key, {"model": upstream.model("translated"), "input": [*items, FOLLOW_UP]})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "input"


async def test_the_words_item_reference_in_a_message_are_only_text(demo: DemoStack, upstream: Upstream) -> None:
    answer = await _post(demo, upstream.key, {"model": upstream.model("translated"), "max_output_tokens": 5,
                                              "input": [{"role": "user", "content": "what is an item_reference?"}]})
    assert answer.status_code == 200 and answer.json()["store"] is True
    refused = await _post(demo, upstream.key, b'{"model": "x", "input": "item_reference" ')
    assert refused.status_code == 400
