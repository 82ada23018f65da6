"""End to end: whole Responses kept by the Responses door, through the `openai` client and raw HTTP: a chat continued
by `previous_response_id` (whole and streamed, a tool round trip too), counted and sent upstream as the conversation
sent whole without earlier `instructions`; `responses.retrieve`, `.delete` and `.input_items.list` (paged); and what
is refused: another tenant's, `store: false`, deleted, hostile ids and query values, a conversation past the body
limit.

The demo gateway keeps Responses for the default `SWITCHYARD_RESPONSES_STORE_TTL_S`; expiry and the renewal of a
conversation's start are shown against the session's Valkey (tests/integration/test_kept_responses_valkey.py).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from tests.conftest import DemoStack
from tests.e2e.test_anthropic_front_door import Scripted, Upstream, add_tenant, registered_upstream, scripted_model
from tests.e2e.test_responses_stored_items import _input_tokens
from tests.e2e.test_quota_e2e import start_gateway, stop_gateway
from tests.e2e.test_responses_front_door import CHAT, WEATHER, client

NEVER_WRITTEN = "resp_" + "0" * 32


@pytest.fixture(scope="module")
async def upstream(demo: DemoStack) -> AsyncIterator[Upstream]:
    async with registered_upstream(demo, f"whole-{uuid.uuid4().hex[:6]}") as registered:
        yield registered


@pytest.fixture(scope="module")
async def scripted(demo: DemoStack) -> AsyncIterator[Scripted]:
    """An upstream that keeps every chat request it was sent, behind an OpenAI-compatible endpoint of its own."""
    async with scripted_model(demo, f"whole-scripted-{uuid.uuid4().hex[:6]}") as registered:
        yield registered


async def _asked(api: openai.AsyncOpenAI, streamed: bool, request_id: str, **fields: object):
    """A Response, whole or streamed, under the request id given."""
    headers = {"X-Request-Id": request_id}
    if not streamed:
        return await api.responses.create(**fields, extra_headers=headers)
    async with api.responses.stream(**fields, extra_headers=headers) as stream:
        return await stream.get_final_response()


def _http(demo: DemoStack, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=demo.url, timeout=30, headers={"authorization": f"Bearer {key}"})


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
async def test_a_three_turn_chat_by_previous_response_id_is_counted_as_the_conversation_sent_whole(
        demo: DemoStack, upstream: Upstream, streamed: bool) -> None:
    api, model = client(demo, upstream.key), upstream.model("translated")
    questions = ["Tell me about the switchyard at Hagen", "And its history?", "Who runs it now?"]
    ids = [uuid.uuid4().hex for _ in range(4)]
    turns, previous = [], None
    for number, question in enumerate(questions):
        turn = await _asked(api, streamed, ids[number], model=model, input=question, max_output_tokens=20,
                            **({"previous_response_id": previous} if previous else {}))
        assert turn.status == "completed" and turn.store is True and turn.previous_response_id == previous
        turns.append(turn)
        previous = turn.id
    whole = [{"role": "user", "content": questions[0]}, *turns[0].output, {"role": "user", "content": questions[1]},
             *turns[1].output, {"role": "user", "content": questions[2]}]
    await _asked(api, streamed, ids[3], model=model, max_output_tokens=20,
                 input=[item if isinstance(item, dict) else item.model_dump(exclude_none=True) for item in whole])
    counted = [await _input_tokens(demo, request_id) for request_id in ids]
    assert counted[0] < counted[1] < counted[2] == counted[3]
    assert turns[2].usage.input_tokens == counted[2]


async def test_a_tool_round_trip_continues_by_previous_response_id(demo: DemoStack, upstream: Upstream) -> None:
    api, model = client(demo, upstream.key), upstream.model("native")
    first = await api.responses.create(model=model, input="What is the weather in Oslo?", tools=[WEATHER],
                                       max_output_tokens=50)
    [call] = first.output
    assert call.type == "function_call"
    second = await api.responses.create(
        model=model, tools=[WEATHER], max_output_tokens=50, previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "-3 degrees, snow"}])
    assert second.status == "completed" and second.output[0].type == "message" and second.output_text
    listed = [item async for item in api.responses.input_items.list(second.id, order="asc")]
    assert [item.type for item in listed] == ["message", "function_call", "function_call_output"]
    assert listed[1].id == call.id and listed[2].call_id == call.call_id and listed[2].id.startswith("fco_")


async def test_earlier_instructions_are_not_carried_over(demo: DemoStack, scripted: Scripted) -> None:
    api = client(demo, scripted.key)
    first = await api.responses.create(model=scripted.model, instructions="Answer as a pirate.", input="Ahoy?")
    sent = len(scripted.upstream.bodies)
    second = await api.responses.create(model=scripted.model, instructions="Answer plainly.", input="Again?",
                                        previous_response_id=first.id)
    [body] = scripted.upstream.bodies[sent:]
    assert body["messages"] == [{"role": "system", "content": "Answer plainly."},
                                {"role": "user", "content": "Ahoy?"}, {"role": "assistant", "content": "ok"},
                                {"role": "user", "content": "Again?"}]
    assert second.instructions == "Answer plainly." and second.previous_response_id == first.id
    third = await api.responses.create(model=scripted.model, input="And now?", previous_response_id=second.id)
    assert scripted.upstream.bodies[-1]["messages"][0] == {"role": "user", "content": "Ahoy?"}
    assert third.instructions is None


async def test_retrieve_delete_and_input_items_through_the_sdk(demo: DemoStack, upstream: Upstream) -> None:
    api, model = client(demo, upstream.key), upstream.model("translated")
    first = await api.responses.create(model=model, input=[{"role": "user", "content": "one"},
                                                           {"role": "developer", "content": "two"}],
                                       max_output_tokens=10)
    second = await api.responses.create(model=model, input="three", max_output_tokens=10, previous_response_id=first.id,
                                        metadata={"k": "v"})
    assert (await api.responses.retrieve(second.id)).model_dump() == second.model_dump()
    async with _http(demo, upstream.key) as http:
        raw = await http.get(f"/v1/responses/{second.id}")
    assert raw.status_code == 200 and raw.json()["store"] is True and raw.json()["metadata"] == {"k": "v"}
    oldest_first = [item async for item in api.responses.input_items.list(second.id, order="asc", limit=2)]
    assert [item.type for item in oldest_first] == ["message"] * 4
    assert [(item.role, item.content[0].text) for item in oldest_first] == [
        ("user", "one"), ("developer", "two"), ("assistant", first.output_text), ("user", "three")]
    assert len({item.id for item in oldest_first}) == 4 and oldest_first[2].id == first.output[0].id
    page = await api.responses.input_items.list(second.id, limit=3)
    assert [item.id for item in page.data] == [item.id for item in reversed(oldest_first)][:3]
    assert page.has_more is True and (page.first_id, page.last_id) == (page.data[0].id, page.data[-1].id)
    rest = await api.responses.input_items.list(second.id, limit=3, after=page.last_id)
    assert [item.id for item in rest.data] == [oldest_first[0].id] and rest.has_more is False
    assert [item.id for item in (await api.responses.input_items.list(first.id)).data] == \
        [item.id for item in oldest_first[:2]][::-1]
    assert await api.responses.delete(first.id) is None
    with pytest.raises(openai.NotFoundError) as gone:
        await api.responses.retrieve(first.id)
    assert gone.value.body["message"].startswith(f"Response not found: '{first.id}' is not kept here")
    with pytest.raises(openai.NotFoundError):
        await api.responses.delete(first.id)
    for previous in (first.id, second.id):               # the second's conversation lost its first turn
        with pytest.raises(openai.BadRequestError) as refused:
            await api.responses.create(model=model, input="four", previous_response_id=previous)
        assert (refused.value.param, refused.value.code) == ("previous_response_id", "previous_response_not_found")
        assert first.id in refused.value.message
    with pytest.raises(openai.NotFoundError) as unlisted:
        await api.responses.input_items.list(second.id)
    assert unlisted.value.body["message"].startswith(f"Input items not found: '{second.id}' continues the earlier "
                                                     f"response '{first.id}', which is no longer kept")
    assert (await api.responses.retrieve(second.id)).id == second.id


async def test_another_tenants_response_is_not_found(demo: DemoStack, upstream: Upstream) -> None:
    model = upstream.model("translated")
    mine = await client(demo, upstream.key).responses.create(model=model, input="hi", max_output_tokens=5)
    other = client(demo, await add_tenant(demo, f"whole-other-{uuid.uuid4().hex[:6]}", [model]))
    for asked in (other.responses.retrieve(mine.id), other.responses.delete(mine.id),
                  other.responses.input_items.list(mine.id)):
        with pytest.raises(openai.NotFoundError) as refused:
            await asked
        assert refused.value.body == {"message": f"Response not found: '{mine.id}' is not kept here (it was never "
                                                 "stored, was answered with `store: false`, belongs to another tenant, "
                                                 "was deleted, or expired)", "type": "invalid_request_error",
                                      "param": "response_id", "code": "not_found"}
    with pytest.raises(openai.BadRequestError) as refused:
        await other.responses.create(model=model, input="and?", previous_response_id=mine.id)
    assert refused.value.code == "previous_response_not_found"
    assert (await client(demo, upstream.key).responses.retrieve(mine.id)).id == mine.id


async def test_store_false_is_not_continued_and_not_kept(demo: DemoStack, upstream: Upstream) -> None:
    api, model = client(demo, upstream.key), upstream.model("translated")
    unkept = await api.responses.create(model=model, input="hi", max_output_tokens=5, store=False)
    assert unkept.store is False
    with pytest.raises(openai.BadRequestError) as refused:
        await api.responses.create(model=model, input="and?", previous_response_id=unkept.id)
    assert (refused.value.param, refused.value.code) == ("previous_response_id", "previous_response_not_found")
    with pytest.raises(openai.NotFoundError):
        await api.responses.retrieve(unkept.id)
    kept = await api.responses.create(model=model, input="hi", max_output_tokens=5)
    continued = await api.responses.create(model=model, input="and?", max_output_tokens=5, store=False,
                                           previous_response_id=kept.id)
    assert continued.store is False and continued.previous_response_id == kept.id
    with pytest.raises(openai.NotFoundError):
        await api.responses.retrieve(continued.id)


async def test_previous_response_id_and_conversation_together_are_a_400(demo: DemoStack, upstream: Upstream) -> None:
    api, model = client(demo, upstream.key), upstream.model("translated")
    kept = await api.responses.create(model=model, input="hi", max_output_tokens=5)
    with pytest.raises(openai.BadRequestError) as refused:
        await api.responses.create(model=model, input="and?", previous_response_id=kept.id, conversation="conv_1")
    assert (refused.value.param, refused.value.code) == ("conversation", "mutually_exclusive_parameters")


HOSTILE_PREVIOUS = ["resp_" + "a" * 10_000, "../../etc/passwd", "resp_\u00e9\u0000*", "RESP_" + "A" * 32,
                    NEVER_WRITTEN, "", "resp_x:sy", 5, ["resp_1"], {"$ne": 1}, True]


@pytest.mark.parametrize("previous", HOSTILE_PREVIOUS, ids=range(len(HOSTILE_PREVIOUS)))
async def test_a_hostile_previous_response_id_is_a_400_naming_it(demo: DemoStack, upstream: Upstream,
                                                                  previous: object) -> None:
    error = await refused_field(demo, upstream, "previous_response_id", previous)
    assert error["param"] == "previous_response_id"
    if isinstance(previous, str):
        assert error["code"] == "previous_response_not_found"


async def refused_field(demo: DemoStack, upstream: Upstream, field: str, value: object) -> dict:
    """The error of a Responses request with `field` set to `value`, which must be a short 400 that reached no
    endpoint."""
    before = upstream.calls(CHAT)
    async with _http(demo, upstream.key) as http:
        answer = await http.post("/v1/responses", json={"model": upstream.model("translated"), "input": "hi",
                                                        field: value})
    assert answer.status_code == 400, answer.text
    assert len(answer.text) < 2000 and upstream.calls(CHAT) == before
    return answer.json()["error"]


HOSTILE_IDS = ["resp_" + "a" * 2000, "resp_" + "0" * 31 + "%00", "resp_%C3%A9", "RESP_" + "A" * 32, NEVER_WRITTEN,
               "resp_..%2f..%2fetc", "input_items", "%20", "msg_1", "resp_" + "0" * 32 + ".response"]


@pytest.mark.parametrize("response_id", HOSTILE_IDS, ids=range(len(HOSTILE_IDS)))
async def test_a_hostile_id_in_the_path_is_a_404_in_openais_shape(demo: DemoStack, upstream: Upstream,
                                                                  response_id: str) -> None:
    async with _http(demo, upstream.key) as http:
        for method, path in (("GET", f"/v1/responses/{response_id}"), ("DELETE", f"/v1/responses/{response_id}"),
                             ("GET", f"/v1/responses/{response_id}/input_items")):
            answer = await http.request(method, path)
            assert answer.status_code in (404, 405), (method, path, answer.status_code, answer.text)
            assert set(answer.json()["error"]) == {"message", "type", "param", "code"} and len(answer.text) < 2000


HOSTILE_QUERIES = [("limit=0", "limit"), ("limit=101", "limit"), ("limit=-1", "limit"), ("limit=abc", "limit"),
                   ("limit=1e2", "limit"), ("limit=%EF%BC%91%EF%BC%92", "limit"), ("limit=", "limit"),
                   ("limit=99999999999999999999", "limit"), ("order=ASC", "order"), ("order=", "order"),
                   ("after=" + "x" * 200, "after"), ("after=msg_1%3A2", "after"), ("after=msg_absent", "after"),
                   ("before=%00", "before"), ("after=msg_a&before=msg_b", "before")]


@pytest.mark.parametrize(("query", "param"), HOSTILE_QUERIES, ids=range(len(HOSTILE_QUERIES)))
async def test_a_hostile_query_value_is_a_400_naming_it(demo: DemoStack, upstream: Upstream, kept: str, query: str,
                                                        param: str) -> None:
    async with _http(demo, upstream.key) as http:
        answer = await http.get(f"/v1/responses/{kept}/input_items?{query}")
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param and len(answer.text) < 2000


@pytest.mark.parametrize("stream", ["true", "yes", "1"])
async def test_a_kept_response_is_not_streamed(demo: DemoStack, upstream: Upstream, kept: str, stream: str) -> None:
    async with _http(demo, upstream.key) as http:
        answer = await http.get(f"/v1/responses/{kept}?stream={stream}")
        whole = await http.get(f"/v1/responses/{kept}?stream=false")
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "stream"
    assert whole.status_code == 200 and whole.json()["id"] == kept


@pytest.fixture(scope="module")
async def kept(demo: DemoStack, upstream: Upstream) -> str:
    return (await client(demo, upstream.key).responses.create(model=upstream.model("translated"), input="hi",
                                                              max_output_tokens=5)).id


async def test_a_conversation_resolved_past_the_body_limit_is_a_413(demo: DemoStack, upstream: Upstream) -> None:
    """Each turn's own input is 1.45 MB: the third turn's request, 1.45 MB sent, would be 4.35 MB with the two before
    it in place, past the 4 MiB body limit; it is refused before they are fetched, and reaches no endpoint."""
    api, model = client(demo, upstream.key), upstream.model("translated")
    long_input = "freight " * 181_250
    previous = None
    for _ in range(2):
        turn = await api.responses.create(model=model, input=long_input, max_output_tokens=5,
                                          **({"previous_response_id": previous} if previous else {}))
        previous = turn.id
    before = upstream.calls(CHAT)
    with pytest.raises(openai.APIStatusError) as refused:
        await api.responses.create(model=model, input=long_input, max_output_tokens=5, previous_response_id=previous)
    assert refused.value.status_code == 413 and refused.value.code == "payload_too_large"
    assert upstream.calls(CHAT) == before
    short = await api.responses.create(model=model, input="and briefly?", max_output_tokens=5,
                                       previous_response_id=previous)
    assert short.usage.input_tokens > 2 * 181_250


async def test_a_gateway_keeping_nothing_says_store_false_and_refuses_what_would_need_it(
        demo: DemoStack, upstream: Upstream, urls) -> None:
    """`SWITCHYARD_RESPONSES_STORE_TTL_S=0`: answers say `store: false`, a continuation or a reference is a 400 naming
    its field, and the routes that read kept Responses are 404s."""
    gateway = start_gateway(demo, urls, responses_store_ttl_s="0", workers="1")
    try:
        api = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=upstream.key, max_retries=0, timeout=30)
        model = upstream.model("translated")
        first = await api.responses.create(model=model, input="Tell me about Hagen", max_output_tokens=10)
        assert first.store is False and first.output_text
        with pytest.raises(openai.BadRequestError) as refused:
            await api.responses.create(model=model, input="And then?", previous_response_id=first.id,
                                       max_output_tokens=10)
        assert refused.value.param == "previous_response_id"
        with pytest.raises(openai.BadRequestError) as refused:
            await api.responses.create(model=model, max_output_tokens=10, input=[
                {"type": "item_reference", "id": first.output[0].id}, {"role": "user", "content": "And then?"}])
        assert refused.value.param == "input[0].type"           # an item type the door reads only when it keeps items
        for asked in (api.responses.retrieve(first.id), api.responses.delete(first.id),
                      api.responses.input_items.list(first.id)):
            with pytest.raises(openai.NotFoundError) as missing:
                await asked
            assert "SWITCHYARD_RESPONSES_STORE_TTL_S" in missing.value.message
    finally:
        stop_gateway(gateway)
