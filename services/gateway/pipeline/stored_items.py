"""The Responses door's kept items: a Response's output items kept in Valkey for a while, for later requests to name.

A later request names an item by id (`{"type": "item_reference", "id": "msg_…"}`), as the AI SDK's default Responses
model does from its second turn on (`msg_…`, `rs_…` and `fc_…` items).

A Response is kept when its request did not say `store: false` and it was answered 200 (whole, or a stream that
completed or ended incomplete; never a failed one), for `SWITCHYARD_RESPONSES_STORE_TTL_S` (0 keeps nothing: `store`
is answered false and every reference refused). Each item is kept under `<prefix><tenant>:<item id>`, its JSON as the
Response carried it, which is an input item the door reads as it is; a Response whose items are larger than the
door's MAX_KEPT_BYTES is not kept (and says `store: false`). The items are sent to Valkey as the Response is made,
without making the client wait; a failed store is dropped (warned of, throttled).

Before the door reads a request, its references are looked up under the caller's tenant, each item once: their sizes
first (STRLEN, one round trip), so that a request that would pass the body limit with them is refused before they
are fetched, then the items (MGET), which replace the references: what is counted for the quota, routed and sent
upstream is the request with the items whole.
A reference to nothing kept (never, expired, another tenant's, or an id the gateway never writes) is a 400 naming
it; more than MAX_REFERENCES a 400; a request larger than the body limit with its items in place a 413; a Valkey
that does not answer a 503 (the request cannot be read without it). Responses themselves are not kept:
`previous_response_id`, `conversation` and `GET`/`DELETE /v1/responses/{id}` stay unserved.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import msgspec
from switchyard_gateway.resp import Valkey, ValkeyError
from switchyard_gateway.services.gateway.edge.errors import ApiError, BadRequest
from switchyard_gateway.services.gateway.pipeline.background_writes import BackgroundWrites

LOOKUP_TIMEOUT_S = 2.0            # references Valkey has not resolved by then: the call is answered 503
RECHECK_S = 0.1                   # a reference not found is looked up once more after this: a client that sends its
                                  # next turn at once (a tool loop) may reach another worker before the store lands
MAX_REFERENCES = 4096             # item_references one request may hold
ITEM_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")     # the ids the door writes (`msg_<hex>`): no other is ever kept
REFERENCE = b"item_reference"     # a body without these bytes holds no reference and is not decoded here


def _too_large(limit: int) -> ApiError:
    return ApiError(f"Request body is larger than the {limit} byte limit with the items its item_references name",
                    status=413, code="payload_too_large", param="input")


class StoreUnavailable(ApiError):
    """503: Valkey did not answer the lookup of a request's item references."""

    status, kind, code = 503, "server_error", "store_unavailable"


_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


class StoredItems(BackgroundWrites):
    """Keeps a Response's output items per tenant, and resolves a request's references to them."""

    def __init__(self, valkey: Valkey, prefix: str, ttl_s: float, max_body_bytes: int) -> None:
        super().__init__(valkey)
        self.prefix = prefix
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.max_body_bytes = max_body_bytes       # a request with its items resolved is bounded as a body sent

    def key(self, tenant_id: str, item_id: str) -> str:
        """`<prefix><tenant>:<item id>`: the item id has no `:` (ITEM_ID), so no two tenants' keys meet."""
        return f"{self.prefix}{tenant_id}:{item_id}"

    async def resolve(self, tenant_id: str, body: bytes) -> bytes:
        """The body with each `item_reference` of its `input` replaced by the item kept under the tenant; the body
        itself when it holds none (or is not an object with a list `input`: the door refuses it as it is)."""
        try:
            request = _decode(body)
        except (msgspec.DecodeError, RecursionError):
            return body
        items = request.get("input") if isinstance(request, dict) else None
        if not isinstance(items, list):
            return body
        wanted = referenced(items)
        if not wanted:
            return body
        if len(wanted) > MAX_REFERENCES:
            raise BadRequest(f"Invalid 'input': it holds {len(wanted)} item_references, more than the "
                             f"{MAX_REFERENCES} one request may hold", param="input", code="invalid_value")
        for index, item_id in wanted:
            if item_id is None:
                raise not_kept(index, item_id)
        # each item asked for once, and how large it is before it is fetched: a few references to a large item must
        # not make Valkey send (and this worker read) more than the request may hold
        distinct = list(dict.fromkeys(item_id for _, item_id in wanted))
        keys = [self.key(tenant_id, item_id) for item_id in distinct]  # type: ignore[arg-type]
        sizes = await self._sizes(keys)
        missing = [number for number, size in enumerate(sizes) if not size]
        if missing:
            await asyncio.sleep(RECHECK_S)
            for number, size in zip(missing, await self._sizes([keys[number] for number in missing])):
                sizes[number] = size
        size_of = dict(zip(distinct, sizes))
        for index, item_id in wanted:
            if not size_of[item_id]:  # type: ignore[index]
                raise not_kept(index, item_id)
        if len(body) + sum(size_of[item_id] for _, item_id in wanted) > self.max_body_bytes:  # type: ignore[index]
            raise _too_large(self.max_body_bytes)
        found = dict(zip(distinct, await self._lookup(keys)))
        for index, item_id in wanted:
            raw = found[item_id]  # type: ignore[index]
            if raw is None:                             # expired since its size was read
                raise not_kept(index, item_id)
            items[index] = msgspec.Raw(raw)
        resolved = _encode(request)
        if len(resolved) > self.max_body_bytes:          # (the body itself was read: nothing is left to drain)
            raise _too_large(self.max_body_bytes)
        return resolved

    async def _sizes(self, keys: list[str]) -> list[int]:
        """Each key's value's length (0: none is kept), in one round trip (the calls go out in one write)."""
        return await self._asked(asyncio.gather(*(self.valkey.call("STRLEN", key) for key in keys)))

    async def _lookup(self, keys: list[str]) -> list[bytes | None]:
        return await self._asked(self.valkey.call("MGET", *keys))

    async def _asked(self, reply: Any) -> Any:
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                answer = await reply
        except (ConnectionError, ValkeyError, TimeoutError) as exc:
            self._warn("responses.store_lookup_failed", exc)
            raise StoreUnavailable("The items this request refers to could not be looked up right now; retry "
                                   "shortly, or send the items themselves", headers={"retry-after": "1"}) from None
        return answer

    async def warm(self) -> None:
        """Open the connection at start, so that the first store is not slower than a client's next turn; a Valkey
        away now is only warned of (each call tries again)."""
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                await self.valkey.call("PING")
        except (ConnectionError, ValkeyError, TimeoutError) as exc:
            self._warn("responses.store_unreachable", exc)

    def store(self, tenant_id: str, items: list[tuple[str, bytes]]) -> None:
        """Keep a Response's items (id, JSON) in the background, as the Response is made: its bytes are on their
        way to the client as the store is sent, and the client never waits for it."""
        if not items:
            return
        self._in_background(self._store([(self.key(tenant_id, item_id), raw) for item_id, raw in items]))

    async def _store(self, pairs: list[tuple[str, bytes]]) -> None:
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):       # pipelined on the one connection
                done = await asyncio.gather(*(self.valkey.call("SET", key, raw, "PX", self.ttl_ms)
                                              for key, raw in pairs), return_exceptions=True)
        except TimeoutError as exc:
            done = [exc]
        failed = next((result for result in done if isinstance(result, Exception)), None)
        if failed is not None:
            self._warn("responses.store_failed", failed)



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
