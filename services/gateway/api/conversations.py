"""OpenAI's Conversations API over the kept Responses' store (pipeline/stored_conversations.py): a conversation
created with items (`POST /v1/conversations`), read, its metadata set (`POST /v1/conversations/{id}`) and deleted;
its items listed a page at a time, added, read and removed one at a time (`/v1/conversations/{id}/items...`).

Each takes any key, as the Responses door does, and sees only its own tenant's conversations: another tenant's id,
one deleted, past `SWITCHYARD_RESPONSES_STORE_TTL_S` or never written (not of the `conv_<hex>` form: no lookup) is a
404 alike, in OpenAI's error shape, as is an item not in the conversation; with the TTL 0, every id is. A body or a
query value out of OpenAI's bounds (more than 20 items, an item of a type the Responses door does not read,
metadata past 16 pairs, 64-character keys or 512-character values, `limit` out of 1-100, `order`, `after`,
`include`) is a 400 naming it. A `POST /v1/responses` naming the conversation (`conversation`) reads its items first
and, when its Response is kept, adds its input and output items to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.params import FromPath

from switchyard_gateway.services.gateway.api.stored_responses import page_asked
from switchyard_gateway.services.gateway.edge.errors import GatewayError
from switchyard_gateway.services.gateway.pipeline.stored_names import CONVERSATION_ID, ITEM_ID, ConversationNotFound
from switchyard_gateway.services.gateway.translate.responses_conversations import (
    ConversationCreate, ConversationDeleted, ConversationUpdate, ItemsCreate, given_items, includes, read_body,
)

if TYPE_CHECKING:
    from switchyard_gateway.services.gateway.pipeline.stored_conversations import StoredConversations

Req = Request[Any, Any, Any]
_encode = msgspec.json.Encoder().encode


class ItemNotFound(GatewayError):
    """404: the conversation holds no item of that id (it never did, or it was removed, or expired)."""

    status, kind, code = 404, "invalid_request_error", "not_found"

    def __init__(self, item_id: str) -> None:
        shown = f"'{item_id}'" if ITEM_ID.fullmatch(item_id) else "of that id"
        super().__init__(f"Item not found: this conversation holds no item {shown}", param="item_id")


def _store(request: Req) -> tuple[StoredConversations, str]:
    """The conversations and the caller's tenant; a 404 when none are kept (no lookup)."""
    deps = request.app.state.deps
    key = deps.auth.authenticate(request.headers, anonymous=True)
    items = deps.proxy.items
    if items is None:
        raise GatewayError("Conversation not found: this gateway keeps no conversations "
                           "(SWITCHYARD_RESPONSES_STORE_TTL_S is 0)", status=404, kind="invalid_request_error",
                           code="not_found", param="conversation_id")
    return items.conversations, key.tenant_id


def _named(request: Req, conversation_id: str) -> tuple[StoredConversations, str]:
    """As `_store`, for an id the gateway could have written; a 404 otherwise (no lookup)."""
    conversations, tenant_id = _store(request)
    if not CONVERSATION_ID.fullmatch(conversation_id):
        raise ConversationNotFound(conversation_id, "conversation_id")
    return conversations, tenant_id


def _json(data: bytes) -> Response[bytes]:
    return Response(data, media_type="application/json")


def _found(head: bytes | None, conversation_id: str) -> Response[bytes]:
    if head is None:
        raise ConversationNotFound(conversation_id, "conversation_id")
    return _json(head)


def _listed(data: list[msgspec.Raw], more: bool) -> Response[bytes]:
    """OpenAI's list object of items (each with its `id`)."""
    ids = [msgspec.json.decode(raw, type=dict)["id"] for raw in data[:1] + data[-1:]]
    return _json(_encode({"object": "list", "data": data, "first_id": ids[0] if ids else None,
                          "last_id": ids[-1] if ids else None, "has_more": more}))


def _included(request: Req) -> None:
    includes([*request.query_params.getall("include", []), *request.query_params.getall("include[]", [])])


@post("/v1/conversations", status_code=200)
async def create_conversation(request: Req) -> Response[bytes]:
    """A new conversation, with its first items (OpenAI's `conversations.create`)."""
    conversations, tenant_id = _store(request)
    asked = read_body(await request.body(), ConversationCreate)
    given = given_items(asked.items, needed=False)
    return _json(await conversations.create(tenant_id, asked.metadata or {}, given))


@get("/v1/conversations/{conversation_id:str}")
async def retrieve_conversation(request: Req, conversation_id: FromPath[str]) -> Response[bytes]:
    """A kept conversation (OpenAI's `conversations.retrieve`)."""
    conversations, tenant_id = _named(request, conversation_id)
    return _found(await conversations.head(tenant_id, conversation_id), conversation_id)


@post("/v1/conversations/{conversation_id:str}", status_code=200)
async def update_conversation(request: Req, conversation_id: FromPath[str]) -> Response[bytes]:
    """Set a conversation's metadata (OpenAI's `conversations.update`)."""
    conversations, tenant_id = _named(request, conversation_id)
    asked = read_body(await request.body(), ConversationUpdate)
    return _found(await conversations.update(tenant_id, conversation_id, asked.metadata or {}), conversation_id)


@delete("/v1/conversations/{conversation_id:str}", status_code=200)
async def delete_conversation(request: Req, conversation_id: FromPath[str]) -> Response[bytes]:
    """Delete a conversation; its items stay until they expire (OpenAI's `conversations.delete`)."""
    conversations, tenant_id = _named(request, conversation_id)
    if not await conversations.delete(tenant_id, conversation_id):
        raise ConversationNotFound(conversation_id, "conversation_id")
    return _json(_encode(ConversationDeleted(conversation_id)))


@get("/v1/conversations/{conversation_id:str}/items")
async def list_items(request: Req, conversation_id: FromPath[str]) -> Response[bytes]:
    """A conversation's items, a page at a time (OpenAI's `conversations.items.list`)."""
    conversations, tenant_id = _named(request, conversation_id)
    limit, order, after, _ = page_asked(request.query_params, takes_before=False)
    _included(request)
    listed = await conversations.page(tenant_id, conversation_id, limit, order, after)
    if listed is None:
        raise ConversationNotFound(conversation_id, "conversation_id")
    return _listed(*listed)


@post("/v1/conversations/{conversation_id:str}/items", status_code=200)
async def add_items(request: Req, conversation_id: FromPath[str]) -> Response[bytes]:
    """Add items after a conversation's last: the items as kept, each with its id (OpenAI's
    `conversations.items.create`)."""
    conversations, tenant_id = _named(request, conversation_id)
    _included(request)
    given = given_items(read_body(await request.body(), ItemsCreate).items, needed=True)
    added = await conversations.add(tenant_id, conversation_id, given)
    if added is None:
        raise ConversationNotFound(conversation_id, "conversation_id")
    return _listed(added, False)


@get("/v1/conversations/{conversation_id:str}/items/{item_id:str}")
async def retrieve_item(request: Req, conversation_id: FromPath[str], item_id: FromPath[str]) -> Response[bytes]:
    """One of a conversation's items (OpenAI's `conversations.items.retrieve`)."""
    conversations, tenant_id = _named(request, conversation_id)
    _included(request)
    if not ITEM_ID.fullmatch(item_id):
        raise ItemNotFound(item_id)
    found, raw = await conversations.item(tenant_id, conversation_id, item_id)
    if not found:
        raise ConversationNotFound(conversation_id, "conversation_id")
    if raw is None:
        raise ItemNotFound(item_id)
    return _json(raw)


@delete("/v1/conversations/{conversation_id:str}/items/{item_id:str}", status_code=200)
async def delete_item(request: Req, conversation_id: FromPath[str], item_id: FromPath[str]) -> Response[bytes]:
    """Take an item off a conversation: the conversation (OpenAI's `conversations.items.delete`)."""
    conversations, tenant_id = _named(request, conversation_id)
    if not ITEM_ID.fullmatch(item_id):
        raise ItemNotFound(item_id)
    head, removed = await conversations.remove(tenant_id, conversation_id, item_id)
    if head is not None and not removed:
        raise ItemNotFound(item_id)
    return _found(head, conversation_id)


CONVERSATION_ROUTES = [create_conversation, retrieve_conversation, update_conversation, delete_conversation,
                       list_items, add_items, retrieve_item, delete_item]
