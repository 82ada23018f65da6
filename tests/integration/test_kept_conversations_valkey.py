"""Conversations against the session's real Valkey: a request naming one resolved in three round trips however long
it is, sized before anything is fetched; a kept turn adds its input and output after the conversation's items and
renews all of them; items removed or lost drop out; and the conversation's memory is its items once."""

from __future__ import annotations

import json

import pytest

from switchyard_gateway.services.gateway.edge.errors import ApiError
from switchyard_gateway.services.gateway.pipeline.stored_names import ConversationNotFound
from tests.conftest import StackUrls
from tests.integration.test_kept_items_valkey import spied_lookups
from tests.integration.test_kept_responses_valkey import _items, _texts, _turn, counted_rounds


async def test_a_long_conversation_is_three_round_trips_and_a_kept_turn_adds_its_items(urls: StackUrls,
                                                                                      monkeypatch) -> None:
    items = _items(urls)
    conversations = items.conversations
    conversation = json.loads(await conversations.create("acme", {"k": "v"}, [
        {"role": "user" if number % 2 == 0 else "assistant", "content": f"turn {number}"} for number in range(20)]))
    for number in range(20, 60, 20):
        await conversations.add("acme", conversation["id"], [{"role": "user", "content": f"turn {number + more}"}
                                                             for more in range(20)])
    rounds = counted_rounds(items, monkeypatch)
    answered = await _turn(items, "acme", "the answer", input="the question", conversation=conversation["id"])
    assert len(rounds) == 3 and answered["conversation"] == {"id": conversation["id"]}
    page = await conversations.page("acme", conversation["id"], 100, "asc", None)
    listed = [json.loads(bytes(raw)) for raw in page.items]
    assert _texts(listed) == [f"turn {number}" for number in range(60)] + ["the question", "the answer"]
    assert listed[-1] == answered["output"][0] and page.more is False
    kept = json.loads(await items.valkey.call("HGET", items.record_key("acme", answered["id"]), "input"))
    assert kept == listed[60:61]                         # the Response keeps its own input, the same item
    await items.close()


async def test_a_conversation_past_the_limit_is_refused_before_its_items_are_fetched(urls: StackUrls,
                                                                                    monkeypatch) -> None:
    items = _items(urls, max_body_bytes=64 << 10)
    conversation = json.loads(await items.conversations.create("acme", {}, [
        {"role": "user", "content": "x" * 4000} for _ in range(20)]))
    fetched, rounds = spied_lookups(items, monkeypatch), counted_rounds(items, monkeypatch)
    body = json.dumps({"model": "m", "input": "y" * 10_000, "conversation": conversation["id"]}).encode()
    with pytest.raises(ApiError) as refused:            # 80 KB of items and 10 KB more: past the 64 KB limit
        await items.resolve("acme", body)
    assert refused.value.status == 413 and fetched == [] and len(rounds) == 1
    for tenant in ("other", "acme:" + conversation["id"]):
        with pytest.raises(ConversationNotFound):
            await items.resolve(tenant, body)
    await items.close()


async def test_a_kept_turn_renews_the_conversation_and_every_item(urls: StackUrls) -> None:
    items = _items(urls)
    conversations = items.conversations
    conversation = json.loads(await conversations.create("acme", {}, [{"role": "user", "content": "Q1"}]))
    [first] = (await conversations.page("acme", conversation["id"], 10, "asc", None)).items
    keys = [conversations.record_key("acme", conversation["id"]), conversations.list_key("acme", conversation["id"]),
            items.key("acme", json.loads(bytes(first))["id"])]
    for key in keys:                                    # as if most of its TTL had gone
        await items.valkey.call("PEXPIRE", key, 5_000)
    await _turn(items, "acme", input="Q2", conversation={"id": conversation["id"]})
    for key in keys:
        assert await items.valkey.call("PTTL", key) > 50_000, key
    await items.close()


async def test_removed_and_lost_items_drop_out_and_the_size_follows(urls: StackUrls) -> None:
    items = _items(urls)
    conversations = items.conversations
    conversation = json.loads(await conversations.create("acme", {}, [{"role": "user", "content": "Q1"}]))
    answered = await _turn(items, "acme", "A1", input="Q2", conversation=conversation["id"])
    listed = [json.loads(bytes(raw)) for raw in (await conversations.page("acme", conversation["id"], 10, "asc",
                                                                          None)).items]
    assert _texts(listed) == ["Q1", "Q2", "A1"]
    size = (await conversations.held("acme", conversation["id"])).size
    assert size == sum(len(json.dumps(item, separators=(",", ":"))) for item in listed)
    head, removed = await conversations.remove("acme", conversation["id"], listed[0]["id"])
    assert removed and json.loads(head)["id"] == conversation["id"]
    assert (await conversations.held("acme", conversation["id"])).size < size
    assert await conversations.item("acme", conversation["id"], listed[0]["id"]) == (True, None)
    assert await items.delete("acme", answered["id"])  # its output item goes with it
    body = json.dumps({"model": "m", "input": "Q3", "conversation": conversation["id"]}).encode()
    request = json.loads((await items.resolve("acme", body)).body)
    assert _texts(request["input"]) == ["Q2", "Q3"] and "conversation" not in request
    assert await conversations.delete("acme", conversation["id"])
    assert await conversations.head("acme", conversation["id"]) is None
    assert await items.valkey.call("EXISTS", items.key("acme", listed[1]["id"])) == 1     # items expire on their own
    await items.close()
