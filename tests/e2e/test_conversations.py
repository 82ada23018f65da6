"""End to end: OpenAI's Conversations API on the kept-Responses store, through the `openai` client and raw HTTP: a
conversation created with items is read by a Response naming it (counted as the conversation sent whole) and then
holds that Response's input and output; items added, read, removed and paged; another tenant's, `store: false`,
hostile values, a conversation past the body limit, a gateway keeping nothing; and the Agents SDK's
`OpenAIConversationsSession` and `Runner.run(conversation_id=...)` over it.

TTL renewal and the round trips are shown against the session's Valkey (tests/integration/
test_kept_conversations_valkey.py).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from tests.conftest import DemoStack
from tests.e2e.test_anthropic_front_door import Upstream, add_tenant, registered_upstream
from tests.e2e.test_quota_e2e import start_gateway, stop_gateway
from tests.e2e.test_responses_front_door import CHAT, client
from tests.e2e.test_responses_stored import refused_field
from tests.e2e.test_responses_stored_items import _input_tokens

NEVER_WRITTEN = "conv_" + "0" * 32
OPENING = [{"type": "message", "role": "user", "content": "Tell me about the switchyard at Hagen"},
           {"type": "message", "role": "assistant", "content": "It is one of Germany's largest."}]


@pytest.fixture(scope="module")
async def upstream(demo: DemoStack) -> AsyncIterator[Upstream]:
    async with registered_upstream(demo, f"conv-{uuid.uuid4().hex[:6]}") as registered:
        yield registered


def _http(demo: DemoStack, key: str, url: str | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url or demo.url, timeout=30, headers={"authorization": f"Bearer {key}"})


def _texts(items: list) -> list[tuple[str, str]]:
    return [(item.role, item.content[0].text) for item in items]


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
async def test_a_response_in_a_conversation_reads_its_items_and_adds_its_own(demo: DemoStack, upstream: Upstream,
                                                                            streamed: bool) -> None:
    api, model = client(demo, upstream.key), upstream.model("translated")
    conversation = await api.conversations.create(items=OPENING, metadata={"topic": "rail"})
    assert conversation.id.startswith("conv_") and conversation.metadata == {"topic": "rail"}
    ids = [uuid.uuid4().hex for _ in range(2)]
    fields = {"model": model, "input": "And its history?", "max_output_tokens": 20,
              "extra_headers": {"X-Request-Id": ids[0]}}
    if streamed:
        async with api.responses.stream(**fields, conversation=conversation.id) as stream:
            first = await stream.get_final_response()
    else:
        first = await api.responses.create(**fields, conversation=conversation.id)
    assert first.conversation.id == conversation.id and first.store is True and first.output_text
    await api.responses.create(model=model, max_output_tokens=20, extra_headers={"X-Request-Id": ids[1]},
                               input=[*OPENING, {"role": "user", "content": "And its history?"}])
    assert await _input_tokens(demo, ids[0]) == await _input_tokens(demo, ids[1]) == first.usage.input_tokens
    listed = [item async for item in api.conversations.items.list(conversation.id, order="asc")]
    assert _texts(listed) == [("user", OPENING[0]["content"]), ("assistant", OPENING[1]["content"]),
                              ("user", "And its history?"), ("assistant", first.output_text)]
    assert listed[3].id == first.output[0].id and len({item.id for item in listed}) == 4
    second = await api.responses.create(model=model, input="Who runs it?", max_output_tokens=20,
                                        conversation={"id": conversation.id})
    assert second.usage.input_tokens > first.usage.input_tokens
    listed = [item async for item in api.conversations.items.list(conversation.id, order="asc")]
    assert _texts(listed)[4:] == [("user", "Who runs it?"), ("assistant", second.output_text)]
    assert (await api.responses.retrieve(second.id)).conversation.id == conversation.id


async def test_items_are_added_read_removed_and_paged(demo: DemoStack, upstream: Upstream) -> None:
    api = client(demo, upstream.key)
    conversation = await api.conversations.create()
    assert (await api.conversations.retrieve(conversation.id)).model_dump() == conversation.model_dump()
    added = await api.conversations.items.create(conversation.id, items=[
        {"role": "user", "content": f"question {number}"} for number in range(20)])
    assert len(added.data) == 20 and added.has_more is False
    assert (added.first_id, added.last_id) == (added.data[0].id, added.data[-1].id)
    more = await api.conversations.items.create(conversation.id, items=[
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "snow"}])
    ids = [item.id for item in added.data + more.data]
    newest_first = [item.id async for item in api.conversations.items.list(conversation.id, limit=3)]
    assert newest_first == ids[::-1]                           # eight pages of at most three
    page = await api.conversations.items.list(conversation.id, limit=5, order="asc", after=ids[17])
    assert [item.id for item in page.data] == ids[18:] and page.has_more is False
    page = await api.conversations.items.list(conversation.id, limit=2, after=ids[5])
    assert [item.id for item in page.data] == [ids[4], ids[3]] and page.has_more is True
    one = await api.conversations.items.retrieve(ids[1], conversation_id=conversation.id)
    assert one.id == ids[1] and one.content[0].text == "question 1" and one.status == "completed"
    after = await api.conversations.items.delete(ids[1], conversation_id=conversation.id)
    assert after.id == conversation.id and after.object == "conversation"
    with pytest.raises(openai.NotFoundError) as gone:
        await api.conversations.items.retrieve(ids[1], conversation_id=conversation.id)
    assert gone.value.body["param"] == "item_id"
    with pytest.raises(openai.NotFoundError):
        await api.conversations.items.delete(ids[1], conversation_id=conversation.id)
    assert [item.id async for item in api.conversations.items.list(conversation.id, order="asc")] == \
        ids[:1] + ids[2:]
    updated = await api.conversations.update(conversation.id, metadata={"k": "v"})
    assert updated.metadata == {"k": "v"} and updated.created_at == conversation.created_at
    assert (await api.conversations.retrieve(conversation.id)).metadata == {"k": "v"}
    deleted = await api.conversations.delete(conversation.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (conversation.id, "conversation.deleted", True)
    for asked in (api.conversations.retrieve(conversation.id), api.conversations.delete(conversation.id),
                  api.conversations.items.list(conversation.id)):
        with pytest.raises(openai.NotFoundError):
            await asked


async def test_another_tenants_conversation_is_not_found(demo: DemoStack, upstream: Upstream) -> None:
    model = upstream.model("translated")
    mine = await client(demo, upstream.key).conversations.create(items=OPENING[:1])
    [item] = (await client(demo, upstream.key).conversations.items.list(mine.id)).data
    other = client(demo, await add_tenant(demo, f"conv-other-{uuid.uuid4().hex[:6]}", [model]))
    for asked in (other.conversations.retrieve(mine.id), other.conversations.delete(mine.id),
                  other.conversations.update(mine.id, metadata={}), other.conversations.items.list(mine.id),
                  other.conversations.items.create(mine.id, items=OPENING[:1]),
                  other.conversations.items.retrieve(item.id, conversation_id=mine.id),
                  other.conversations.items.delete(item.id, conversation_id=mine.id)):
        with pytest.raises(openai.NotFoundError) as refused:
            await asked
        assert refused.value.body["message"].startswith(f"Conversation not found: no conversation '{mine.id}'")
    with pytest.raises(openai.NotFoundError) as refused:
        await other.responses.create(model=model, input="and?", conversation=mine.id)
    assert refused.value.body["param"] == "conversation"
    assert len((await client(demo, upstream.key).conversations.items.list(mine.id)).data) == 1


async def test_store_false_reads_the_conversation_and_adds_nothing(demo: DemoStack, upstream: Upstream) -> None:
    api, model = client(demo, upstream.key), upstream.model("translated")
    conversation = await api.conversations.create(items=OPENING)
    unkept = await api.responses.create(model=model, input="And?", max_output_tokens=10, store=False,
                                        conversation=conversation.id)
    assert unkept.store is False and unkept.conversation.id == conversation.id
    kept = await api.responses.create(model=model, input="And?", max_output_tokens=10, conversation=conversation.id)
    assert unkept.usage.input_tokens == kept.usage.input_tokens
    assert len((await api.conversations.items.list(conversation.id)).data) == 4


HOSTILE_BODIES = [
    ({"items": [{"role": "user", "content": "x"}] * 21}, "items"),
    ({"items": "hello"}, "items"),
    ({"items": [{"type": "web_search_call", "id": "ws_1"}]}, "items[0].type"),
    ({"items": [{"type": "item_reference", "id": "msg_1"}]}, "items[0].type"),
    ({"items": [{"role": "user", "content": 5}]}, "items[0].content"),
    ({"items": [{"role": "tool", "content": "x"}]}, "items[0].role"),
    ({"items": [{"role": "assistant", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
     "items[0].content[0]"),
    ({"metadata": {f"k{number}": "v" for number in range(17)}}, "metadata"),
    ({"metadata": {"k" * 65: "v"}}, "metadata"),
    ({"metadata": {"k": "v" * 513}}, "metadata"),
    ({"metadata": {"k": 5}}, "metadata"),
    ({"metadata": ["k"]}, "metadata"),
]


@pytest.mark.parametrize(("body", "param"), HOSTILE_BODIES, ids=range(len(HOSTILE_BODIES)))
async def test_a_hostile_body_is_a_400_naming_the_field(demo: DemoStack, upstream: Upstream, body: dict,
                                                        param: str) -> None:
    async with _http(demo, upstream.key) as http:
        created = await http.post("/v1/conversations", json=body)
        conversation = (await http.post("/v1/conversations", json={})).json()["id"]
        updated = await http.post(f"/v1/conversations/{conversation}",
                                  json={"metadata": body["metadata"]} if "metadata" in body else {"metadata": {}})
        added = await http.post(f"/v1/conversations/{conversation}/items", json={"items": body.get("items", [])})
        listed = await http.get(f"/v1/conversations/{conversation}/items")
    assert created.status_code == 400 and created.json()["error"]["param"] == param, created.text
    if "metadata" in body:
        assert updated.status_code == 400 and updated.json()["error"]["param"] == param, updated.text
    else:
        assert added.status_code == 400 and added.json()["error"]["param"] == param, added.text
    assert listed.json()["data"] == [] and len(created.text) < 2000


HOSTILE_QUERIES = [("limit=0", "limit"), ("limit=101", "limit"), ("limit=abc", "limit"), ("order=ASC", "order"),
                   ("after=" + "x" * 200, "after"), ("after=msg_absent", "after"), ("after=%00", "after"),
                   ("include=everything", "include"), ("include[]=" + "x" * 5000, "include")]


@pytest.mark.parametrize(("query", "param"), HOSTILE_QUERIES, ids=range(len(HOSTILE_QUERIES)))
async def test_a_hostile_query_value_is_a_400_naming_it(demo: DemoStack, upstream: Upstream, query: str,
                                                        param: str) -> None:
    async with _http(demo, upstream.key) as http:
        conversation = (await http.post("/v1/conversations", json={"items": OPENING})).json()["id"]
        answer = await http.get(f"/v1/conversations/{conversation}/items?{query}")
    assert answer.status_code == 400 and answer.json()["error"]["param"] == param, answer.text
    assert len(answer.text) < 2000


HOSTILE_CONVERSATIONS = [5, True, ["conv_1"], {"id": 5}, {"id": None, "x": 1}, "conv_x", "../../etc",
                         "conv_" + "a" * 5000, "CONV_" + "A" * 32, "conv_" + "0" * 32 + ".items"]


@pytest.mark.parametrize("conversation", HOSTILE_CONVERSATIONS, ids=range(len(HOSTILE_CONVERSATIONS)))
async def test_a_hostile_conversation_field_is_a_400_naming_it(demo: DemoStack, upstream: Upstream,
                                                               conversation: object) -> None:
    error = await refused_field(demo, upstream, "conversation", conversation)
    assert error["param"] in ("conversation", "conversation.id")


HOSTILE_PATHS = [NEVER_WRITTEN, "conv_" + "a" * 2000, "conv_%00", "..%2f..%2fetc", "CONV_" + "A" * 32,
                 "conv_" + "0" * 32 + ".conversation", "%20"]


@pytest.mark.parametrize("conversation", HOSTILE_PATHS, ids=range(len(HOSTILE_PATHS)))
async def test_a_hostile_id_in_the_path_is_a_404_in_openais_shape(demo: DemoStack, upstream: Upstream,
                                                                  conversation: str) -> None:
    async with _http(demo, upstream.key) as http:
        for method, path in (("GET", ""), ("POST", ""), ("DELETE", ""), ("GET", "/items"), ("POST", "/items"),
                             ("GET", "/items/msg_1"), ("DELETE", "/items/msg_1")):
            answer = await http.request(method, f"/v1/conversations/{conversation}{path}",
                                        json={"metadata": {}, "items": OPENING} if method == "POST" else None)
            assert answer.status_code in (404, 405), (method, path, answer.status_code, answer.text)
            assert set(answer.json()["error"]) == {"message", "type", "param", "code"} and len(answer.text) < 2000


async def test_a_conversation_past_the_body_limit_is_a_413(demo: DemoStack, upstream: Upstream) -> None:
    """Three items of 1.45 MB each, added one a request: a Response naming the conversation would be 4.35 MB, past the
    4 MiB body limit; it is refused before the items are fetched, and reaches no endpoint."""
    api, model = client(demo, upstream.key), upstream.model("translated")
    conversation = await api.conversations.create()
    for _ in range(3):
        await api.conversations.items.create(conversation.id, items=[{"role": "user", "content": "freight " * 181_250}])
    before = upstream.calls(CHAT)
    with pytest.raises(openai.APIStatusError) as refused:
        await api.responses.create(model=model, input="and briefly?", max_output_tokens=5, conversation=conversation.id)
    assert refused.value.status_code == 413 and refused.value.code == "payload_too_large"
    assert upstream.calls(CHAT) == before


async def test_a_gateway_keeping_nothing_has_no_conversations(demo: DemoStack, upstream: Upstream, urls) -> None:
    """`SWITCHYARD_RESPONSES_STORE_TTL_S=0`: every conversation route is a 404, and `conversation` a 400."""
    gateway = start_gateway(demo, urls, responses_store_ttl_s="0", workers="1")
    try:
        api = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=upstream.key, max_retries=0, timeout=30)
        kept = await client(demo, upstream.key).conversations.create(items=OPENING)
        with pytest.raises(openai.BadRequestError) as refused:
            await api.responses.create(model=upstream.model("translated"), input="hi", conversation=kept.id)
        assert refused.value.param == "conversation" and "SWITCHYARD_RESPONSES_STORE_TTL_S" in refused.value.message
        for asked in (api.conversations.create(), api.conversations.retrieve(kept.id),
                      api.conversations.items.list(kept.id), api.conversations.delete(kept.id)):
            with pytest.raises(openai.NotFoundError) as missing:
                await asked
            assert "SWITCHYARD_RESPONSES_STORE_TTL_S" in missing.value.message
    finally:
        stop_gateway(gateway)


@pytest.mark.parametrize("how", ["session", "conversation_id"])
async def test_an_agent_keeps_its_history_in_a_conversation(demo: DemoStack, upstream: Upstream, how: str) -> None:
    """The Agents SDK's `OpenAIConversationsSession` (items listed and added by the session) and
    `Runner.run(conversation_id=...)` (the conversation named in each model call): a tool round trip, then a second
    run that is sent the first one's items."""
    agents = pytest.importorskip("agents", reason="the OpenAI Agents SDK (`openai-agents`) is not installed")
    from tests.e2e.test_agents_sdk import Labelled, agent_of
    agents.set_tracing_disabled(True)
    labelled, cities = Labelled(), []
    agent = agent_of(demo, upstream, "openai.responses", labelled.http, cities)
    api = openai.AsyncOpenAI(base_url=f"{demo.url}/v1", api_key=upstream.key, max_retries=0, http_client=labelled.http)
    conversation = await api.conversations.create()
    if how == "session":
        session = agents.OpenAIConversationsSession(conversation_id=conversation.id, openai_client=api)
        runs = {"session": session}
    else:
        runs = {"conversation_id": conversation.id}
    first = await agents.Runner.run(agent, "Weather in Oslo?", **runs)
    assert [type(item).__name__ for item in first.new_items] == ["ToolCallItem", "ToolCallOutputItem",
                                                                 "MessageOutputItem"]
    listed = [item async for item in api.conversations.items.list(conversation.id, order="asc")]
    assert [item.type for item in listed] == ["message", "function_call", "function_call_output", "message"]
    second = await agents.Runner.run(agent, "And tomorrow?", **runs)
    assert second.final_output and second.raw_responses[0].usage.input_tokens > \
        first.raw_responses[0].usage.input_tokens
    assert len([item async for item in api.conversations.items.list(conversation.id)]) > len(listed)
