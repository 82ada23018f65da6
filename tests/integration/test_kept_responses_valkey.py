"""Kept Responses against the session's real Valkey: a conversation continued by `previous_response_id` resolved in
at most three round trips however long it is, sized before anything is fetched, its start renewed by every turn
kept after it, and a Response lost (deleted, expired, another tenant's) refusing its continuation 400."""

from __future__ import annotations

import json
import uuid
from functools import partial

import pytest

from switchyard_gateway.resp import Valkey
from switchyard_gateway.services.gateway.edge.errors import ApiError, BadRequest
from switchyard_gateway.services.gateway.pipeline.stored_items import Resolved, StoredItems, StoreUnavailable
from switchyard_gateway.services.gateway.translate.asks import read_request
from switchyard_gateway.services.gateway.translate.doors import Door
from switchyard_gateway.services.gateway.translate.wire import Times
from tests.conftest import StackUrls, wait_for
from tests.integration.test_kept_items_valkey import spied_lookups
from tests.unit.test_responses_door import completion

TTL_S = 60.0


def _items(urls: StackUrls, ttl_s: float = TTL_S, max_body_bytes: int = 4 << 20) -> StoredItems:
    return StoredItems(Valkey(urls.redis_url), f"test:r:{uuid.uuid4().hex[:8]}:", ttl_s, max_body_bytes)


async def _turn(items: StoredItems, tenant: str, reply: str = "Hagen's yard", **fields: object) -> dict:
    """One call through the door as the proxy makes it (resolved, read, answered, kept), once its store landed."""
    body = json.dumps({"model": "m", **fields}).encode()
    resolved = await items.resolve(tenant, body) if items.names_any(body) else Resolved(body)
    door = Door("/v1/responses", read_request("openai.responses", resolved.body), resolved.body)
    door.responses.keep(partial(items.store, tenant, resolved=resolved), resolved.previous,  # type: ignore[union-attr]
                        resolved.conversation)
    answered = json.loads(door.plan("openai-compatible").answer(completion({"content": reply}), "m", Times(0, 0)))
    await wait_for(lambda: _landed(items), what="the Response kept")
    return answered


def counted_rounds(items: StoredItems, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many lookups go out in each round trip the store makes from now on."""
    rounds: list[int] = []
    real_round = items.round_trip

    async def counted(*asked):
        rounds.append(len(asked))
        return await real_round(*asked)
    monkeypatch.setattr(items, "round_trip", counted)
    return rounds


async def _landed(items: StoredItems) -> bool:
    return not items._writes


def _texts(items: list) -> list[str]:
    return [part if isinstance(part, str) else part["text"] for item in items
            for part in ([item["content"]] if isinstance(item["content"], str) else item["content"])]


async def test_a_chain_resolves_to_each_turns_input_then_output_and_this_turns_input(urls: StackUrls) -> None:
    items = _items(urls)
    first = await _turn(items, "acme", "one", input="Q1", instructions="Be brief.")
    second = await _turn(items, "acme", "two", input=[{"role": "user", "content": "Q2"}],
                         previous_response_id=first["id"], instructions="Be long.")
    assert second["previous_response_id"] == first["id"] and second["instructions"] == "Be long."
    body = json.dumps({"model": "m", "input": "Q3", "previous_response_id": second["id"]}).encode()
    resolved = await items.resolve("acme", body)
    request = json.loads(resolved.body)
    assert "previous_response_id" not in request and "instructions" not in request      # none carried over
    assert _texts(request["input"]) == ["Q1", "one", "Q2", "two", "Q3"]
    assert [item["role"] for item in request["input"]] == ["user", "assistant", "user", "assistant", "user"]
    assert request["input"][1] == first["output"][0] and request["input"][3] == second["output"][0]
    assert resolved.chain == (second["id"], first["id"]) and resolved.inherited == 4
    kept = request["input"][0]                               # a string input kept as OpenAI lists it
    assert kept["type"] == "message" and kept["id"].startswith("msg_") and kept["status"] == "completed"
    assert kept["content"] == [{"type": "input_text", "text": "Q1"}]
    listed = [json.loads(bytes(raw)) for raw in (await items.input_items("acme", second["id"]))[0]]
    assert listed == request["input"][:3] and listed[2]["id"].startswith("msg_")     # not its own output
    assert listed[2]["content"] == [{"type": "input_text", "text": "Q2"}]
    assert json.loads(await items.response("acme", second["id"])) == second           # as it was answered
    await items.close()


async def test_a_long_chain_is_three_round_trips_and_sized_before_it_is_fetched(urls: StackUrls,
                                                                                monkeypatch) -> None:
    items = _items(urls, max_body_bytes=64 << 10)
    rounds = counted_rounds(items, monkeypatch)
    previous, trips = None, []
    for number in range(12):
        rounds.clear()
        fields = {"previous_response_id": previous} if previous else {}
        previous = (await _turn(items, "acme", f"answer {number}", input=f"question {number} " + "x" * 2000,
                                **fields))["id"]
        trips.append(len(rounds))
    assert trips[0] == 0 and max(trips) == 3 and trips[-1] == 3, trips
    fetched = spied_lookups(items, monkeypatch)
    rounds.clear()
    big = json.dumps({"model": "m", "input": "y" * 50_000, "previous_response_id": previous}).encode()
    with pytest.raises(ApiError) as refused:            # 12 turns of 2 KB and 50 KB more: past the 64 KB limit
        await items.resolve("acme", big)
    assert refused.value.status == 413 and fetched == [] and len(rounds) == 2
    await items.close()


async def test_a_kept_turn_renews_the_conversation_it_continues(urls: StackUrls) -> None:
    items = _items(urls)
    first = await _turn(items, "acme", input="Q1")
    keys = [items.record_key("acme", first["id"]), items.key("acme", first["output"][0]["id"])]
    for key in keys:                                    # as if most of its TTL had gone
        await items.valkey.call("PEXPIRE", key, 5_000)
    await _turn(items, "acme", input="Q2", previous_response_id=first["id"])
    for key in keys:
        assert await items.valkey.call("PTTL", key) > 50_000, key
    await items.close()


async def test_a_conversation_that_lost_a_turn_is_not_continued(urls: StackUrls) -> None:
    items = _items(urls)
    first = await _turn(items, "acme", input="Q1")
    second = await _turn(items, "acme", input="Q2", previous_response_id=first["id"])
    await items.valkey.call("PEXPIRE", items.record_key("acme", first["id"]), 1)     # the first turn expires

    async def gone() -> bool:
        return await items.valkey.call("EXISTS", items.record_key("acme", first["id"])) == 0
    await wait_for(gone, what="the first turn expired")
    with pytest.raises(BadRequest) as refused:
        await items.resolve("acme", json.dumps({"model": "m", "input": "Q3",
                                                "previous_response_id": second["id"]}).encode())
    error = refused.value
    assert (error.param, error.code) == ("previous_response_id", "previous_response_not_found")
    assert first["id"] in str(error) and "`input`" in str(error)
    assert await items.input_items("acme", second["id"]) == (None, first["id"])
    assert await items.response("acme", second["id"]) is not None          # itself is still kept
    await items.close()


async def test_another_tenants_or_a_deleted_response_is_not_found(urls: StackUrls) -> None:
    items = _items(urls)
    first = await _turn(items, "acme", input="Q1")
    body = json.dumps({"model": "m", "input": "Q2", "previous_response_id": first["id"]}).encode()
    for tenant in ("other", "acme:" + first["id"]):
        with pytest.raises(BadRequest) as refused:
            await items.resolve(tenant, body)
        assert refused.value.code == "previous_response_not_found"
        assert await items.response(tenant, first["id"]) is None and not await items.delete(tenant, first["id"])
    item_key = items.key("acme", first["output"][0]["id"])
    assert await items.delete("acme", first["id"])
    assert await items.response("acme", first["id"]) is None and await items.valkey.call("EXISTS", item_key) == 0
    with pytest.raises(BadRequest):
        await items.resolve("acme", body)
    assert not await items.delete("acme", first["id"])
    await items.close()


async def test_a_valkey_that_does_not_answer_a_continuation_is_a_503(urls: StackUrls) -> None:
    items = StoredItems(Valkey("redis://127.0.0.1:1"), "test:r:", 60.0, 4 << 20)
    body = json.dumps({"model": "m", "input": "hi", "previous_response_id": "resp_" + "0" * 32}).encode()
    with pytest.raises(StoreUnavailable):
        await items.resolve("acme", body)
    with pytest.raises(StoreUnavailable):
        await items.response("acme", "resp_" + "0" * 32)
    await items.close()
