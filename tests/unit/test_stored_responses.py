"""Kept Responses, their pure parts: what a Response keeps of its own input, what the door hands over and echoes, the
pages of `input_items`, and the refusals that name what is missing."""

from __future__ import annotations

import json

import msgspec
import pytest

from switchyard_gateway.services.gateway.edge.errors import BadRequest
from switchyard_gateway.services.gateway.pipeline.stored_names import ITEM_ID, own_items, previous_not_found
from switchyard_gateway.services.gateway.api.stored_responses import ResponseNotFound, page
from switchyard_gateway.services.gateway.translate.responses_door import KeptOutput
from switchyard_gateway.services.gateway.translate.wire import Times
from tests.unit.test_responses_door import completion, door

ITEMS = [msgspec.Raw(json.dumps({"id": f"msg_{n}", "type": "message"}).encode()) for n in range(5)]


def _ids(listed: bytes) -> tuple[list[str], bool, str | None, str | None]:
    answer = json.loads(listed)
    assert answer["object"] == "list"
    return [item["id"] for item in answer["data"]], answer["has_more"], answer["first_id"], answer["last_id"]


def test_a_page_is_newest_first_unless_asked_and_goes_on_after_or_before_an_item() -> None:
    assert _ids(page(ITEMS, 20, "desc", None, None)) == (["msg_4", "msg_3", "msg_2", "msg_1", "msg_0"], False,
                                                          "msg_4", "msg_0")
    assert _ids(page(ITEMS, 2, "asc", None, None)) == (["msg_0", "msg_1"], True, "msg_0", "msg_1")
    assert _ids(page(ITEMS, 2, "asc", "msg_1", None))[:2] == (["msg_2", "msg_3"], True)
    assert _ids(page(ITEMS, 2, "asc", "msg_3", None))[:2] == (["msg_4"], False)
    assert _ids(page(ITEMS, 2, "desc", "msg_4", None))[:2] == (["msg_3", "msg_2"], True)
    assert _ids(page(ITEMS, 2, "asc", None, "msg_3"))[:2] == (["msg_1", "msg_2"], True)
    assert _ids(page(ITEMS, 2, "asc", None, "msg_1"))[:2] == (["msg_0"], False)
    assert _ids(page([], 20, "desc", None, None)) == ([], False, None, None)
    with pytest.raises(BadRequest) as refused:
        page(ITEMS, 2, "asc", "msg_9", None)
    assert refused.value.param == "after" and "msg_9" in str(refused.value)


def test_a_response_keeps_its_own_input_each_with_a_new_id_as_openai_lists_it() -> None:
    body = json.dumps({"model": "m", "input": [
        {"type": "message", "id": "msg_old", "role": "user", "content": [{"type": "input_text", "text": "earlier"}]},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "done"}]}).encode()
    kept = own_items(body, 1)                                # the first came from the Response it continued
    assert [item["type"] for item in kept] == ["message", "message", "function_call", "function_call_output"]
    assert [item["id"][:item["id"].index("_")] for item in kept] == ["msg", "msg", "fc", "fco"]
    assert kept[2]["id"] != "fc_1" and len({item["id"] for item in kept}) == 4
    assert all(ITEM_ID.fullmatch(item["id"]) and item["status"] == "completed" for item in kept)
    assert kept[0]["content"] == [{"type": "input_text", "text": "hi"}]
    assert kept[1]["content"] == [{"type": "output_text", "text": "hello", "annotations": []}]
    assert kept[3]["output"] == "done" and kept[3]["call_id"] == "c1"
    [text] = own_items(json.dumps({"model": "m", "input": "just text"}).encode(), 0)
    assert (text["role"], text["content"]) == ("user", [{"type": "input_text", "text": "just text"}])


def test_the_door_hands_over_the_response_with_its_items_and_echoes_what_it_continues() -> None:
    called, handed = door(), []
    called.responses.keep(handed.append, "resp_" + "a" * 32)
    answered = json.loads(called.plan("openai-compatible").answer(completion({"content": "Hi"}), "m", Times(0, 0)))
    [kept] = handed
    assert isinstance(kept, KeptOutput) and kept.response.id == answered["id"]
    assert answered["previous_response_id"] == "resp_" + "a" * 32 and answered["store"] is True
    assert json.loads(msgspec.json.encode(kept.response)) == answered


def test_what_is_not_found_is_named_and_an_id_never_written_is_not_repeated() -> None:
    kept_id, lost = "resp_" + "1" * 32, "resp_" + "2" * 32
    error = previous_not_found(kept_id)
    assert (error.status, error.param, error.code) == (400, "previous_response_id", "previous_response_not_found")
    assert kept_id in str(error) and "`input`" in str(error)
    assert lost in str(previous_not_found(kept_id, lost)) and "continues" in str(previous_not_found(kept_id, lost))
    hostile = "resp_<script>" + "x" * 500
    assert hostile not in str(previous_not_found(hostile)) and len(str(previous_not_found(hostile))) < 300
    missing = ResponseNotFound(kept_id)
    assert (missing.status, missing.code) == (404, "not_found") and str(missing).startswith("Response not found")
    assert str(ResponseNotFound(kept_id, lost)).startswith("Input items not found") and lost in str(
        ResponseNotFound(kept_id, lost))
    assert hostile not in str(ResponseNotFound(hostile))
