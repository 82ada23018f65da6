"""OpenAI's Conversations API on the wire: its request bodies and answers as msgspec types, and their checks (items
of the types the Responses door reads, at most MAX_ITEMS a request; metadata within OpenAI's bounds; `include`
values OpenAI knows), each a 400 naming the field. Shapes follow the `openai` SDK's `openai.types.conversations`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from switchyard_gateway.services.gateway.edge.errors import BadRequest
from switchyard_gateway.services.gateway.translate.asks import refusal
from switchyard_gateway.services.gateway.translate.responses_door import check_items
from switchyard_gateway.services.gateway.translate.responses_wire import InputItem

MAX_ITEMS = 20                    # items one request may add (OpenAI's limit)
INCLUDABLE = frozenset((          # what OpenAI's `include` may name; none of it is ever made here, so none is added
    "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
    "message.input_image.image_url", "computer_call_output.output.image_url", "code_interpreter_call.outputs",
    "reasoning.encrypted_content", "message.output_text.logprobs"))
Included = list[Literal[tuple(sorted(INCLUDABLE))]]  # type: ignore[misc]     # `include`, as the document says it

Metadata = Annotated[dict[Annotated[str, Meta(max_length=64)], Annotated[str, Meta(max_length=512)]],
                     Meta(max_length=16)]


class ConversationCreate(msgspec.Struct, kw_only=True):
    """`POST /v1/conversations`: its first items (at most MAX_ITEMS) and metadata."""

    items: list[msgspec.Raw] | None = None
    metadata: Metadata | None = None


class ConversationUpdate(msgspec.Struct, kw_only=True):
    """`POST /v1/conversations/{id}`: its new metadata (null: none)."""

    metadata: Metadata | None


class ItemsCreate(msgspec.Struct, kw_only=True):
    """`POST /v1/conversations/{id}/items`: items to add after its last (1 to MAX_ITEMS)."""

    items: list[msgspec.Raw]


class Conversation(msgspec.Struct):
    """A conversation: its items are listed apart (`GET /v1/conversations/{id}/items`)."""

    id: str
    created_at: int
    metadata: dict[str, str]
    object: Literal["conversation"] = "conversation"


class ConversationDeleted(msgspec.Struct):
    """`DELETE /v1/conversations/{id}`: the conversation is gone (its items stay until they expire)."""

    id: str
    object: Literal["conversation.deleted"] = "conversation.deleted"
    deleted: bool = True


class ConversationItem(msgspec.Struct, kw_only=True):
    """One of a conversation's items, as the Responses door reads and answers them: a `message`, a `function_call`,
    its `function_call_output`, a `reasoning` item; each with its `id`."""

    type: str
    id: str
    status: str | None = None
    role: str | None = None
    content: list[dict[str, Any]] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[dict[str, Any]] | None = None


class ConversationItemList(msgspec.Struct):
    """A page of a conversation's items, or the items just added, each with its `id`."""

    data: list[ConversationItem]
    first_id: str | None
    last_id: str | None
    has_more: bool
    object: Literal["list"] = "list"


_item = msgspec.json.Decoder(InputItem).decode
_plain = msgspec.json.Decoder().decode


def read_body(body: bytes, kind: type[Any]) -> Any:
    """A request body of the given type; the 400 naming the field msgspec could not read."""
    try:
        return msgspec.json.decode(body or b"{}", type=kind)
    except (msgspec.MsgspecError, RecursionError) as exc:
        raise refusal(exc, body) from None


def given_items(items: list[msgspec.Raw] | None, needed: bool) -> list[dict[str, Any]]:
    """The items a request gives, each checked as the Responses door checks an `input` item (alone: a
    `function_call_output` may answer a call added earlier), as plain objects; at most MAX_ITEMS, at least one when
    `needed`."""
    items = items or []
    if len(items) > MAX_ITEMS or (needed and not items):
        raise BadRequest(f"Invalid 'items': from {int(needed)} to {MAX_ITEMS} items at a time, not {len(items)}",
                         param="items", code="invalid_value")
    read = []
    for index, raw in enumerate(items):
        try:
            item = _item(raw)
        except (msgspec.MsgspecError, RecursionError) as exc:
            field = refusal(exc).param
            param = f"items[{index}].{field}" if field else f"items[{index}]"
            raise BadRequest(f"Invalid '{param}': {str(exc).partition(' - at `$')[0]}", param=param,
                             code="invalid_value") from None
        if item.type == "item_reference":
            raise BadRequest(f"Invalid 'items[{index}].type': an item_reference is not kept in a conversation; send "
                             "the item itself", param=f"items[{index}].type", code="unsupported_parameter")
        read.append(item)
    check_items(read, "items", whole=False)
    return [_plain(raw) for raw in items]


def includes(values: list[str]) -> None:
    """`include` values OpenAI knows; a 400 naming `include` for any other."""
    for value in values:
        if value not in INCLUDABLE:
            raise BadRequest(f"Invalid 'include': '{value[:100]}' is not one of {', '.join(sorted(INCLUDABLE))}",
                             param="include", code="invalid_value")
