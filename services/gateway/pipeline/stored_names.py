"""What a Responses request may name of the kept Responses and conversations (pipeline/stored_items.py,
stored_conversations.py), and what it is told when it names them wrongly: the ids the door writes, the 400s for a
reference or a `previous_response_id` naming nothing kept, the 404 for a `conversation` naming none, the 413 for a
request too large with what it names in place; and items as they are kept (a Response's own input, a conversation's).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from switchyard_gateway.services.gateway.edge.errors import ApiError, BadRequest
from switchyard_gateway.services.gateway.translate.responses_answers import new_id

MAX_REFERENCES = 4096             # item_references one request may hold
ITEM_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")     # the ids the door writes (`msg_<hex>`): no other is ever kept
RESPONSE_ID = re.compile(r"resp_[0-9a-f]{32}")    # the Response ids the door writes (`responses_answers.new_id`)
CONVERSATION_ID = re.compile(r"conv_[0-9a-f]{32}")  # the conversation ids the gateway writes
ID_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}

_decode = msgspec.json.Decoder().decode


class _Input(msgspec.Struct):
    input: str | list[msgspec.Raw] | None = None


_decode_input = msgspec.json.Decoder(_Input).decode


def too_large(limit: int) -> ApiError:
    return ApiError(f"Request body is larger than the {limit} byte limit with the items its item_references, "
                    "previous_response_id or conversation name", status=413, code="payload_too_large", param="input")


def conversation_named(request: dict[str, Any]) -> str | None:
    """The id of the conversation a request names (`conversation`: the id, or `{"id": ...}`), None when it names none;
    a 400 naming the field for a value of another type, or an id not of the gateway's form (no lookup)."""
    given = request.get("conversation")
    if given in (None, "", {}):
        return None
    where = "conversation"
    if isinstance(given, dict):
        given, where = given.get("id"), "conversation.id"
    if not isinstance(given, str):
        raise BadRequest(f"Invalid '{where}': a conversation's id (a string), or an object with one as `id`",
                         param=where, code="invalid_type")
    if not CONVERSATION_ID.fullmatch(given):
        raise BadRequest(f"Invalid '{where}': not a conversation id this gateway gives (`conv_` and 32 hexadecimal "
                         "digits)", param=where, code="invalid_value")
    return given


class ConversationNotFound(ApiError):
    """404: no conversation of that id is kept for the caller's tenant (whoever else may have one)."""

    status, code = 404, "not_found"

    def __init__(self, conversation_id: str, param: str = "conversation") -> None:
        shown = f"'{conversation_id}'" if CONVERSATION_ID.fullmatch(conversation_id) else "of that id"
        super().__init__(f"Conversation not found: no conversation {shown} is kept here (it was never created, "
                         "belongs to another tenant, was deleted, or expired)", param=param)


def check_continued(request: dict[str, Any], previous: str) -> None:
    """A `previous_response_id` that can name a kept Response, and no `conversation` beside it (OpenAI refuses the
    two together); a 400 without a lookup otherwise."""
    if request.get("conversation") not in (None, "", {}):
        raise BadRequest("Mutually exclusive parameters: send either 'previous_response_id' or 'conversation', not "
                         "both", param="conversation", code="mutually_exclusive_parameters")
    if not RESPONSE_ID.fullmatch(previous):
        raise previous_not_found(previous)


def own_items(body: bytes, inherited: int) -> list[dict[str, Any]]:
    """A Response's own input items as it keeps them: its request's `input` (a string as a user message) after the
    `inherited` items of the Responses it continued; each given an id of its own (the ids `input_items` lists and
    pages by, never one already listed), a message's text as a content part, with a `status`, as OpenAI lists them."""
    given = _decode_input(body).input              # the inherited items are skipped unread
    items = [{"role": "user", "content": given}] if isinstance(given, str) \
        else [_decode(raw) for raw in (given or [])[inherited:]]
    return kept_items(items)


def kept_items(items: list[Any]) -> list[dict[str, Any]]:
    """Items as they are kept and listed: each with an id of its own (the one it came with replaced) and a status."""
    return [_kept_item(item) for item in items if isinstance(item, dict)]


def _kept_item(item: dict[str, Any]) -> dict[str, Any]:
    kind = item.get("type") or "message"
    kept = {"type": kind, "id": new_id(ID_PREFIXES.get(kind, "item")),
            **{name: value for name, value in item.items() if name not in ("type", "id")}}
    if kind == "message" and isinstance(kept.get("content"), str):
        part = {"type": "output_text", "text": kept["content"], "annotations": []} if kept.get("role") == "assistant" \
            else {"type": "input_text", "text": kept["content"]}
        kept["content"] = [part]
    if kind in ("message", "function_call", "function_call_output"):
        kept.setdefault("status", "completed")
    return kept


def referenced(items: list[Any]) -> list[tuple[int, str | None]]:
    """Each `item_reference` in `input`: its index, and its id when it is one the gateway could have kept (None: it
    cannot name a kept item, whatever it is)."""
    wanted: list[tuple[int, str | None]] = []
    for index, item in enumerate(items):
        if isinstance(item, dict) and item.get("type") == "item_reference":
            item_id = item.get("id")
            wanted.append((index, item_id if isinstance(item_id, str) and ITEM_ID.fullmatch(item_id) else None))
    return wanted


def not_kept(index: int, item_id: str | None) -> BadRequest:
    """The 400 for a reference to nothing kept, naming the item (an id too long or odd to be one is not repeated)."""
    where = f"input[{index}].id"
    named = f"'{item_id}'" if item_id is not None else "it names"
    return BadRequest(f"Invalid '{where}': the item {named} is not kept here (it was never stored, was answered with "
                      "`store: false`, belongs to another tenant, or expired): send the item itself",
                      param=where, code="item_not_found")


def unkept(response_id: str, lost: str | None = None) -> str:
    """Why no kept Response answers to `response_id` (`lost`: the Response of its conversation found not kept); an
    id not of the door's form is not repeated."""
    if not RESPONSE_ID.fullmatch(response_id):
        return "the id is not one this gateway gives (`resp_` and 32 hexadecimal digits)"
    if lost is not None and lost != response_id:
        return f"'{response_id}' continues the earlier response '{lost}', which is no longer kept (deleted, or expired)"
    return (f"'{response_id}' is not kept here (it was never stored, was answered with `store: false`, belongs to "
            "another tenant, was deleted, or expired)")


def previous_not_found(previous: str, lost: str | None = None) -> BadRequest:
    """The 400 for a `previous_response_id` that names no kept Response, or one whose conversation lost an earlier
    Response: OpenAI's `previous_response_not_found`."""
    return BadRequest(f"Previous response not found: {unkept(previous, lost)}. Send the conversation in `input` "
                      "instead, without previous_response_id", param="previous_response_id",
                      code="previous_response_not_found")
