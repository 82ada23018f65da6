"""Conversations kept beside the kept Responses (pipeline/stored_items.py), as OpenAI's Conversations API serves them:
created with items, added to by hand and by each Response kept in one, read a page at a time, one item removed,
deleted (api/conversations.py); and what a Responses request naming one (`conversation`) is resolved with.

What a conversation keeps, under its tenant, for `SWITCHYARD_RESPONSES_STORE_TTL_S`, renewed (with every item's) by
each change: items added, a Response kept in it, its metadata set:

    <prefix><tenant>:<conv id>.conversation   a hash: `head`, the Conversation object's JSON; `bytes`, its items'
                                              sizes summed (the size a request naming it is checked with)
    <prefix><tenant>:<conv id>.items          a list: its items' ids, oldest first
    <prefix><tenant>:<item id>                each item, the key the kept Responses' output items already have: a
                                              Response kept in a conversation writes its output once, and its input
                                              items once more (a Response's hash keeps its own input too)

Removing an item takes its id off the list (its key stays until it expires: a kept Response may be made of it), and
deleting a conversation deletes the hash and list only, as OpenAI leaves a deleted conversation's items. An item no
longer kept (its Response deleted, or expired apart) drops out of the conversation where it is read. A request
naming a conversation is resolved in three round trips however long it is: its size (and each referenced item's),
then its ids, then every item at once; one whose body would pass the limit with them is a 413 before any is fetched.
Memory is linear in the conversation: its ids and items, once, while a request is resolved; a page while one is listed.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
from switchyard_gateway.services.gateway.edge.errors import BadRequest
from switchyard_gateway.services.gateway.pipeline.stored_names import kept_items
from switchyard_gateway.services.gateway.translate.responses_answers import new_id
from switchyard_gateway.services.gateway.translate.responses_conversations import Conversation

if TYPE_CHECKING:
    from switchyard_gateway.services.gateway.pipeline.stored_items import StoredItems

RECORD = ".conversation"          # the hash: `<prefix><tenant>:<conv id>.conversation`
LISTING = ".items"                # the list of its items' ids

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode
_conversation = msgspec.json.Decoder(Conversation).decode


class Held(NamedTuple):
    """A conversation a request names, as its hash says, before its items are read."""

    id: str
    size: int                     # its items' bytes, summed


class Page(NamedTuple):
    items: list[msgspec.Raw]
    more: bool


class StoredConversations:
    """Conversations per tenant, on the kept Responses' Valkey, keys and TTL."""

    def __init__(self, items: StoredItems) -> None:
        self.items = items

    def record_key(self, tenant_id: str, conversation_id: str) -> str:
        """`<prefix><tenant>:<conv id>.conversation`: no item id holds a `.`, so no item's key is a conversation's."""
        return f"{self.items.prefix}{tenant_id}:{conversation_id}{RECORD}"

    def list_key(self, tenant_id: str, conversation_id: str) -> str:
        return f"{self.items.prefix}{tenant_id}:{conversation_id}{LISTING}"

    # --- the conversation itself --------------------------------------------------------------------------

    async def create(self, tenant_id: str, metadata: dict[str, str], given: list[dict[str, Any]]) -> bytes:
        """A new conversation with its first items, written before it is answered (one round trip)."""
        conversation_id = new_id("conv")
        head = _encode(Conversation(conversation_id, int(time.time()), metadata))
        added = [(item["id"], _encode(item)) for item in kept_items(given)]
        record = self.record_key(tenant_id, conversation_id)
        await self.items.round_trip(*(self.items.valkey.call(*command) for command in (
            ("HSET", record, "head", head, "bytes", sum(len(raw) for _, raw in added)),
            *self.appended(tenant_id, conversation_id, added, []))))
        return head

    async def head(self, tenant_id: str, conversation_id: str) -> bytes | None:
        """The Conversation object's JSON; None when none is kept under the tenant."""
        [head] = await self.items.round_trip(self.items.valkey.call("HGET", self.record_key(tenant_id, conversation_id),
                                                                "head"))
        return head

    async def update(self, tenant_id: str, conversation_id: str, metadata: dict[str, str]) -> bytes | None:
        """Set its metadata, renewing it (two round trips); None when none is kept."""
        head, ids = await self._read(tenant_id, conversation_id)
        if head is None:
            return None
        head = _encode(msgspec.structs.replace(_conversation(head), metadata=metadata))
        await self.items.round_trip(*(self.items.valkey.call(*command) for command in (
            ("HSET", self.record_key(tenant_id, conversation_id), "head", head),
            *self.appended(tenant_id, conversation_id, [], ids))))
        return head

    async def delete(self, tenant_id: str, conversation_id: str) -> bool:
        """Delete it (its hash and list; its items expire); False when none is kept."""
        deleted, _ = await self.items.round_trip(
            self.items.valkey.call("DEL", self.record_key(tenant_id, conversation_id)),
            self.items.valkey.call("DEL", self.list_key(tenant_id, conversation_id)))
        return deleted > 0

    # --- its items --------------------------------------------------------------------------------------

    async def add(self, tenant_id: str, conversation_id: str, given: list[dict[str, Any]]) -> list[msgspec.Raw] | None:
        """Add items after its last, renewing it (two round trips): the items as kept; None when none is kept."""
        head, ids = await self._read(tenant_id, conversation_id)
        if head is None:
            return None
        added = [(item["id"], _encode(item)) for item in kept_items(given)]
        await self.items.round_trip(*(self.items.valkey.call(*command) for command in (
            ("HINCRBY", self.record_key(tenant_id, conversation_id), "bytes", sum(len(raw) for _, raw in added)),
            *self.appended(tenant_id, conversation_id, added, ids))))
        return [msgspec.Raw(raw) for _, raw in added]

    def appended(self, tenant_id: str, conversation_id: str, added: list[tuple[str, bytes]],
                 kept: list[str]) -> list[tuple[Any, ...]]:
        """The commands that add items (id, JSON) after a conversation's last and renew it, with its items before
        them (`kept`, their keys); the caller adds their sizes to its `bytes`."""
        ttl_ms, key = self.items.ttl_ms, self.items.key
        listing = self.list_key(tenant_id, conversation_id)
        return [*(("SET", key(tenant_id, item_id), raw, "PX", ttl_ms) for item_id, raw in added),
                *((("RPUSH", listing, *(item_id for item_id, _ in added)),) if added else ()),
                ("PEXPIRE", self.record_key(tenant_id, conversation_id), ttl_ms), ("PEXPIRE", listing, ttl_ms),
                *(("PEXPIRE", kept_key, ttl_ms) for kept_key in kept)]

    async def page(self, tenant_id: str, conversation_id: str, limit: int, order: str,
                   after: str | None) -> Page | None:
        """`limit` of its items in `order` (`after` one of them: those after it), and whether more follow; None when
        none is kept; a 400 naming `after` when it holds no such item. Two round trips (three with `after`)."""
        valkey, listing = self.items.valkey, self.list_key(tenant_id, conversation_id)
        exists = valkey.call("HEXISTS", self.record_key(tenant_id, conversation_id), "head")
        if after is None:
            span = (0, limit) if order == "asc" else (-limit - 1, -1)
            found, ids = await self.items.round_trip(exists, valkey.call("LRANGE", listing, *span))
        else:
            found, at = await self.items.round_trip(exists, valkey.call("LPOS", listing, after))
            if found and at is None:
                raise BadRequest(f"Invalid 'after': no item '{after}' in this conversation", param="after",
                                 code="invalid_value")
            span = (at + 1, at + 1 + limit) if order == "asc" else (max(0, at - limit - 1), at - 1)
            [ids] = await self.items.round_trip(valkey.call("LRANGE", listing, *span)) if found and span[1] >= 0 \
                else [[]]
        if not found:
            return None
        if order == "desc":
            ids.reverse()
        return Page(await self._values(self._keys(tenant_id, ids[:limit])), len(ids) > limit)

    async def item(self, tenant_id: str, conversation_id: str, item_id: str) -> tuple[bool, bytes | None]:
        """Whether the conversation is kept, and the item when it is one of its (one round trip)."""
        found, at, raw = await self.items.round_trip(
            self.items.valkey.call("HEXISTS", self.record_key(tenant_id, conversation_id), "head"),
            self.items.valkey.call("LPOS", self.list_key(tenant_id, conversation_id), item_id),
            self.items.valkey.call("GET", self.items.key(tenant_id, item_id)))
        return bool(found), raw if found and at is not None else None

    async def remove(self, tenant_id: str, conversation_id: str, item_id: str) -> tuple[bytes | None, bool]:
        """Take an item off the conversation (two round trips): its Conversation object (None: none is kept), and
        whether it held the item."""
        record, listing = self.record_key(tenant_id, conversation_id), self.list_key(tenant_id, conversation_id)
        head, at, size = await self.items.round_trip(self.items.valkey.call("HGET", record, "head"),
                                                 self.items.valkey.call("LPOS", listing, item_id),
                                                 self.items.valkey.call("STRLEN", self.items.key(tenant_id, item_id)))
        if head is None or at is None:
            return head, False
        await self.items.round_trip(self.items.valkey.call("LREM", listing, 1, item_id),
                                self.items.valkey.call("HINCRBY", record, "bytes", -size))
        return head, True

    # --- a Responses request naming one -----------------------------------------------------------------

    async def held(self, tenant_id: str, conversation_id: str) -> Held | None:
        """The conversation as a request naming it is measured (None: none is kept); part of its first round trip."""
        head, size = await self.items.valkey.call("HMGET", self.record_key(tenant_id, conversation_id), "head", "bytes")
        return None if head is None else Held(conversation_id, int(size or 0))

    async def context(self, tenant_id: str, held: Held, keys: list[str]) -> tuple[list[msgspec.Raw], list[str],
                                                                                 list[bytes | None]]:
        """Its items, oldest first (those no longer kept left out), their keys, and each of `keys`' values: two round
        trips."""
        [ids] = await self.items.round_trip(self.items.valkey.call("LRANGE", self.list_key(tenant_id, held.id), 0, -1))
        kept = self._keys(tenant_id, ids)
        [values] = await self.items.round_trip(self.items.lookup(kept + keys)) if kept or keys else [[]]
        return [msgspec.Raw(raw) for raw in values[:len(kept)] if raw is not None], kept, values[len(kept):]

    async def _read(self, tenant_id: str, conversation_id: str) -> tuple[bytes | None, list[str]]:
        """Its Conversation object and its items' keys, in one round trip."""
        head, ids = await self.items.round_trip(
            self.items.valkey.call("HGET", self.record_key(tenant_id, conversation_id), "head"),
            self.items.valkey.call("LRANGE", self.list_key(tenant_id, conversation_id), 0, -1))
        return head, self._keys(tenant_id, ids)

    def _keys(self, tenant_id: str, ids: list[bytes]) -> list[str]:
        return [self.items.key(tenant_id, item_id.decode()) for item_id in ids]

    async def _values(self, keys: list[str]) -> list[msgspec.Raw]:
        if not keys:
            return []
        [values] = await self.items.round_trip(self.items.lookup(keys))
        return [msgspec.Raw(raw) for raw in values if raw is not None]
