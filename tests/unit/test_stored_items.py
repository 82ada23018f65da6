"""The Responses door's kept items, their pure parts: which Responses say `store: true` and hand their items over,
which references a request holds, and the 400 for one that names nothing kept."""

from __future__ import annotations

import json

import msgspec
import pytest

from switchyard_gateway.kit.settings import SettingsError
from switchyard_gateway.services.gateway.pipeline.stored_names import ITEM_ID, not_kept, referenced
from switchyard_gateway.services.gateway.settings import Settings
from switchyard_gateway.services.gateway.translate import responses_door
from switchyard_gateway.services.gateway.translate.responses_wire import InputItem
from switchyard_gateway.services.gateway.translate.wire import Times
from tests.unit.test_responses_door import WEATHER, chunk, completion, door


def _answered(keep: bool = True, **fields) -> tuple[dict, object]:
    """The Response, and the items handed over to keep (None: none were)."""
    called, handed = door(tools=[WEATHER], **fields), []
    if keep:
        called.responses.keep(handed.append)
    out = called.plan("openai-compatible").answer(
        completion({"content": "Hi", "reasoning_content": "think",
                    "tool_calls": [{"id": "call_1", "type": "function",
                                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}),
        "gpt-ish", Times(0, 0))
    return json.loads(out), handed[0] if handed else None


def test_a_kept_answer_says_store_true_and_hands_over_each_item_as_it_was_answered() -> None:
    response, kept = _answered()
    assert response["store"] is True
    assert [item_id for item_id, _ in kept] == [item["id"] for item in response["output"]]
    assert [json.loads(raw) for _, raw in kept] == response["output"]
    assert [item["type"] for item in response["output"]] == ["reasoning", "message", "function_call"]
    for _, raw in kept:                                     # each is an input item the door reads as it is
        assert msgspec.json.decode(raw, type=InputItem).type in ("reasoning", "message", "function_call")
    assert all(ITEM_ID.fullmatch(item_id) for item_id, _ in kept)


def test_store_false_or_a_gateway_that_keeps_nothing_keeps_nothing() -> None:
    for keep, fields in ((True, {"store": False}), (False, {}), (False, {"store": True})):
        response, kept = _answered(keep, **fields)
        assert (response["store"], kept) == (False, None)


def test_items_larger_than_the_bound_are_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(responses_door, "MAX_KEPT_BYTES", 100)
    response, kept = _answered()
    assert (response["store"], kept) == (False, None)


def test_a_completed_stream_hands_over_its_items_and_a_failed_one_none() -> None:
    for ending, stored in ((chunk({}, "stop") + chunk(usage={"prompt_tokens": 3, "completion_tokens": 1}), True),
                           (b'data: {"error": {"message": "boom"}}\n\n', False)):
        called, handed = door(stream=True), []
        called.responses.keep(handed.append)
        tap = called.plan("openai-compatible").stream("gpt-ish", Times(0, 0))
        out = tap.feed(chunk({"content": "Hi"}) + ending) + tap.ended()
        if tap.done:
            out += tap.finish()
        assert b'"store":true' in out.split(b"\n")[1]             # response.created says so
        kept = handed[0] if handed else None
        assert (kept is not None) is stored
        if stored:
            [(item_id, raw)] = kept
            assert json.loads(raw)["content"][0]["text"] == "Hi" and item_id.startswith("msg_")


def test_references_are_found_by_index_and_an_id_never_written_is_none() -> None:
    items = [{"role": "user", "content": "item_reference"}, {"type": "item_reference", "id": "msg_1a"},
             {"type": "item_reference", "id": "x" * 129}, {"type": "item_reference", "id": "msg:1"},
             {"type": "item_reference", "id": 7}, {"type": "item_reference"}, "item_reference",
             {"type": "item_reference", "id": "fc_9-b"}]
    assert referenced(items) == [(1, "msg_1a"), (2, None), (3, None), (4, None), (5, None), (7, "fc_9-b")]


def test_the_refusal_names_the_item_and_never_repeats_an_id_it_could_not_be() -> None:
    error = not_kept(3, "msg_1a")
    assert (error.status, error.param, error.code) == (400, "input[3].id", "item_not_found")
    assert "'msg_1a'" in str(error) and "expired" in str(error) and "store: false" in str(error)
    assert "input[0].id" in str(not_kept(0, None))


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "soon"])
def test_a_bad_ttl_refuses_to_start_in_one_line(value: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"SWITCHYARD_RESPONSES_STORE_TTL_S": value, "SWITCHYARD_API_KEY": "k"})
    assert "SWITCHYARD_RESPONSES_STORE_TTL_S" in str(refused.value) and "\n" not in str(refused.value)


def test_the_ttl_defaults_to_an_hour_and_zero_keeps_nothing() -> None:
    assert Settings.from_env({"SWITCHYARD_API_KEY": "k"}).responses_store_ttl_s == 3600
    assert Settings.from_env({"SWITCHYARD_API_KEY": "k", "SWITCHYARD_RESPONSES_STORE_TTL_S": "0"}) \
        .responses_store_ttl_s == 0
