"""The Responses door's kept Responses: each answered Response kept in Valkey for a while, so that a later request may
continue it (`previous_response_id`) or name its output items (`item_reference`), and its client read it back or
delete it (`GET`/`DELETE /v1/responses/{id}`, `GET .../input_items`: api/stored_responses.py); what a request may
name of them, and what it is told when it names them wrongly, is stored_names.py.

What a Response keeps, under its tenant, for `SWITCHYARD_RESPONSES_STORE_TTL_S` (0 keeps nothing: `store` is answered
false, references and `previous_response_id` are refused, the routes answer 404):

    <prefix><tenant>:<item id>             each output item, its JSON as the Response carried it (a string): an input
                                           item the door reads as it is, which a later request names by reference
    <prefix><tenant>:<resp id>.response    a hash: `head`, the Response's JSON as answered without its output;
                                           `input`, its own input items (those of the Responses it continued left
                                           out, references replaced, each given an id: `own_items`); `output`, its
                                           output items' ids and sizes; `chain`, the ids of the Responses it
                                           continued, nearest first

so a conversation keeps each turn's items once, and each turn the ids of the turns before it. Ids are of the door's
own form (ITEM_ID, RESPONSE_ID: no `:` or `.`), so no two tenants' keys, nor an item's and a Response's, ever meet.
A Response is kept when its request did not say `store: false` and it was answered 200 (whole, or a stream that
completed or ended incomplete; never a failed one) with output items of at most the door's MAX_KEPT_BYTES (else it
says `store: false`). It is written in the background as it is made (its items, then its hash), never making the
client wait, and renews the TTL of every Response it continues (and of their items), so a conversation in use keeps
its start; a failed write is dropped (warned of, throttled).

Before the door reads a request, `resolve` puts in place, under the caller's tenant, what it names: for
`previous_response_id`, the input then the output items of each Response of that one's chain, oldest first, before
the request's own `input` (their `instructions` are not carried over); for `conversation`, its items
(stored_conversations.py; a Response kept in it adds its input and output items to it); for each `item_reference`,
the item. At most
three round trips, however long the conversation: the continued Response's chain and sizes with each referenced
item's size (STRLEN), the sizes of the Responses before it, then every value at once (each item asked for once;
what is not found is looked for once more, RECHECK_S later); a request whose body would pass the limit with them in
place is a 413 before any is fetched. What is counted for the quota, routed and sent upstream is the request so
resolved. What names nothing kept is a 400 (stored_names.py); a Valkey that does not answer, a 503 (the request
cannot be read without it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, NamedTuple

import msgspec
from switchyard_gateway.resp import Valkey, ValkeyError
from switchyard_gateway.services.gateway.edge.errors import ApiError, BadRequest
from switchyard_gateway.services.gateway.pipeline.background_writes import BackgroundWrites
from switchyard_gateway.services.gateway.pipeline.stored_conversations import StoredConversations
from switchyard_gateway.services.gateway.pipeline.stored_names import (
    MAX_REFERENCES, ConversationNotFound, check_continued, conversation_named, not_kept, own_items, previous_not_found,
    referenced, too_large,
)
from switchyard_gateway.services.gateway.translate.responses_door import KeptOutput

LOOKUP_TIMEOUT_S = 2.0            # a lookup Valkey has not answered by then: the call is answered 503
RECHECK_S = 0.1                   # what is not found is looked up once more after this: a client that sends its next
                                  # turn at once (a tool loop) may reach another worker before the store lands
REFERENCE = b"item_reference"     # a body without these bytes, PREVIOUS or CONVERSATION names nothing kept and is not
PREVIOUS = b"previous_response_id"  # decoded here
CONVERSATION = b"conversation"
RECORD = ".response"              # a Response's hash: `<prefix><tenant>:<resp id>.response`


class Resolved(NamedTuple):
    """A Responses request as the door reads it (`body`), and what its Response is kept with."""

    body: bytes
    previous: str | None = None       # the Response it continues
    chain: tuple[str, ...] = ()       # that one and those it continued, nearest first: the new Response's chain
    inherited: int = 0                # how many of the first items of `input` came from them
    renewed: tuple[str, ...] = ()     # their keys (hashes and output items; a conversation's items), whose TTL a kept
                                      # answer renews
    conversation: str | None = None   # the conversation it is made in, whose items are those `inherited`


class Chain(NamedTuple):
    """A kept Response and those it continued, as their hashes say (nearest first), before their items are read."""

    ids: list[str]
    outputs: list[list[tuple[str, int]]]      # each one's output items: id, size
    input_sizes: list[int]
    lost: str | None = None                   # the first of them no longer kept (deleted, or expired)

    def size(self) -> int:
        return sum(self.input_sizes) + sum(size for output in self.outputs for _, size in output)


class StoreUnavailable(ApiError):
    """503: Valkey did not answer the lookup of what a request names, or of a kept Response."""

    status, kind, code = 503, "server_error", "store_unavailable"


_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode
_decode_items = msgspec.json.Decoder(list[msgspec.Raw]).decode
_decode_output = msgspec.json.Decoder(list[tuple[str, int]]).decode


class StoredItems(BackgroundWrites):
    """Keeps Responses and their output items per tenant, and resolves what a request names of them."""

    def __init__(self, valkey: Valkey, prefix: str, ttl_s: float, max_body_bytes: int) -> None:
        super().__init__(valkey)
        self.prefix = prefix
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.max_body_bytes = max_body_bytes       # a request with its items resolved is bounded as a body sent
        self.conversations = StoredConversations(self)

    def key(self, tenant_id: str, item_id: str) -> str:
        """`<prefix><tenant>:<item id>`: the item id has no `:` (ITEM_ID), so no two tenants' keys meet."""
        return f"{self.prefix}{tenant_id}:{item_id}"

    def record_key(self, tenant_id: str, response_id: str) -> str:
        """`<prefix><tenant>:<resp id>.response`: no item id holds a `.`, so no item's key is a Response's."""
        return f"{self.prefix}{tenant_id}:{response_id}{RECORD}"

    @staticmethod
    def names_any(body: bytes) -> bool:
        """Whether a body may name something kept (an item or a Response); one that does not is read as it is."""
        return REFERENCE in body or PREVIOUS in body or CONVERSATION in body

    async def resolve(self, tenant_id: str, body: bytes) -> Resolved:
        """The body with each `item_reference` of its `input` replaced by the item kept under the tenant, and the
        items of the Response its `previous_response_id` continues, or of the conversation its `conversation` names,
        before its own (that field taken out); the body
        itself when it names neither (or is not an object with an `input` of a type the door reads: the door refuses
        it as it is)."""
        try:
            request = _decode(body)
        except (msgspec.DecodeError, RecursionError):
            return Resolved(body)
        if not isinstance(request, dict):
            return Resolved(body)
        previous, given = request.get("previous_response_id"), request.get("input")
        conversation = conversation_named(request) if previous is None else None
        if previous is not None or conversation is not None:
            if not isinstance(previous, (str, type(None))) or not (given is None or isinstance(given, (str, list))):
                return Resolved(body)               # the door names the field of the wrong type
            if previous is not None:
                check_continued(request, previous)
            items = [{"type": "message", "role": "user", "content": given}] if isinstance(given, str) \
                else given or []
        elif isinstance(given, list):
            items = given
        else:
            return Resolved(body)
        wanted = referenced(items)
        if previous is None and conversation is None and not wanted:
            return Resolved(body)
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
        held = None
        if conversation is not None:
            held, sizes = await self.round_trip(self.conversations.held(tenant_id, conversation), self._sizes(keys))
            if held is None:
                raise ConversationNotFound(conversation)
            chain = None
        else:
            chain, sizes = await self._measure(tenant_id, previous, keys)
        if chain is not None and chain.lost is not None:
            raise previous_not_found(previous, chain.lost)  # type: ignore[arg-type]
        size_of = dict(zip(distinct, sizes))
        for index, item_id in wanted:
            if not size_of[item_id]:  # type: ignore[index]
                raise not_kept(index, item_id)
        referred = sum(size_of[item_id] for _, item_id in wanted)  # type: ignore[index]
        inherited = chain.size() if chain is not None else held.size if held is not None else 0
        if len(body) + referred + inherited > self.max_body_bytes:
            raise too_large(self.max_body_bytes)
        if held is not None:
            context, kept, found = await self.conversations.context(tenant_id, held, keys)
        else:
            context, found = await self._fetch(tenant_id, chain, keys)  # type: ignore[assignment]
        if context is None:                             # a Response of the chain expired since its size was read
            raise previous_not_found(previous, None)  # type: ignore[arg-type]
        found_by_id = dict(zip(distinct, found))
        for index, item_id in wanted:
            raw = found_by_id[item_id]  # type: ignore[index]
            if raw is None:                             # expired since its size was read
                raise not_kept(index, item_id)
            items[index] = msgspec.Raw(raw)
        if previous is not None or held is not None:   # (else `items` is the request's own `input`, changed in place)
            request.pop("previous_response_id", None)
            request.pop("conversation", None)
            request["input"] = [*context, *items]
        resolved = _encode(request)
        if len(resolved) > self.max_body_bytes:          # (the body itself was read: nothing is left to drain)
            raise too_large(self.max_body_bytes)
        if held is not None:
            return Resolved(resolved, inherited=len(context), renewed=tuple(kept), conversation=held.id)
        if chain is None:
            return Resolved(resolved)
        renewed = [self.record_key(tenant_id, response_id) for response_id in chain.ids]
        renewed += [self.key(tenant_id, item_id) for output in chain.outputs for item_id, _ in output]
        return Resolved(resolved, previous, tuple(chain.ids), len(context), tuple(renewed))

    async def _measure(self, tenant_id: str, head: str | None, keys: list[str]) -> tuple[Chain | None, list[int]]:
        """The chain of the Response `head` (None when `head` is None; `lost` when it, or one it continued, is not
        kept) and each key's value's length (0: none is kept): one round trip, and one more for a chain longer than
        one. What is not found is looked for once more after RECHECK_S."""
        first, sizes = await self.round_trip(self._first(tenant_id, head), self._sizes(keys))
        missing = [number for number, size in enumerate(sizes) if not size]
        if missing or first is False:
            await asyncio.sleep(RECHECK_S)
            again, found = await self.round_trip(self._first(tenant_id, head) if first is False else _none(None),
                                             self._sizes([keys[number] for number in missing]))
            first = again if first is False else first
            for number, size in zip(missing, found):
                sizes[number] = size
        if first is None:
            return None, sizes
        if first is False:
            return Chain([], [], [], lost=head), sizes
        ancestors, output, input_size = first
        chain = Chain([head, *ancestors], [output], [input_size])  # type: ignore[list-item]
        if ancestors:
            for response_id, (output, input_size) in zip(ancestors, await self.round_trip(
                    *(self._sized(tenant_id, response_id) for response_id in ancestors))):
                if output is None:
                    return chain._replace(lost=response_id), sizes
                chain.outputs.append(output)
                chain.input_sizes.append(input_size)
        return chain, sizes

    async def _first(self, tenant_id: str, head: str | None) -> Any:
        """A Response's chain (ids), output (ids, sizes) and input size; False when it is not kept, None when no
        Response is named."""
        if head is None:
            return None
        key = self.record_key(tenant_id, head)
        (chain, output), input_size = await asyncio.gather(self.valkey.call("HMGET", key, "chain", "output"),
                                                           self.valkey.call("HSTRLEN", key, "input"))
        if output is None:
            return False
        return chain.decode().split(), _decode_output(output), input_size

    async def _sized(self, tenant_id: str, response_id: str) -> tuple[list[tuple[str, int]] | None, int]:
        key = self.record_key(tenant_id, response_id)
        output, input_size = await asyncio.gather(self.valkey.call("HGET", key, "output"),
                                                  self.valkey.call("HSTRLEN", key, "input"))
        return (None if output is None else _decode_output(output)), input_size

    async def _fetch(self, tenant_id: str, chain: Chain | None, keys: list[str],
                     own_output: bool = True) -> tuple[list[msgspec.Raw] | None, list[bytes | None]]:
        """In one round trip, the items of a chain (oldest first: each Response's input, then its output; the
        newest one's output left out unless `own_output`), None if any is gone since its size was read; and each
        key's value."""
        if chain is None:
            return [], (await self.round_trip(self.lookup(keys)))[0] if keys else []
        outputs = [[self.key(tenant_id, item_id) for item_id, _ in output] for output in chain.outputs]
        looked_up = [key for output in outputs for key in output] + keys
        inputs, values = await self.round_trip(
            asyncio.gather(*(self.valkey.call("HGET", self.record_key(tenant_id, response_id), "input")
                             for response_id in chain.ids)),
            self.lookup(looked_up) if looked_up else _none([]))
        starts = [0]
        for output_keys in outputs:
            starts.append(starts[-1] + len(output_keys))
        context: list[msgspec.Raw] = []
        for number in reversed(range(len(chain.ids))):
            given, output = inputs[number], values[starts[number]:starts[number + 1]]
            if given is None or None in output:
                return None, []
            context += _decode_items(given)
            if number or own_output:
                context += [msgspec.Raw(raw) for raw in output]
        return context, values[len(values) - len(keys):] if keys else []

    def _sizes(self, keys: list[str]) -> Awaitable[list[int]]:
        """Each key's value's length (0: none is kept); the calls go out in one write."""
        return asyncio.gather(*(self.valkey.call("STRLEN", key) for key in keys))

    async def lookup(self, keys: list[str]) -> list[bytes | None]:
        """Each key's value (None: none is kept), in one MGET; the conversation store reads its items with it too."""
        return await self.valkey.call("MGET", *keys)

    async def round_trip(self, *asked: Awaitable[Any]) -> list[Any]:
        """One round trip: what is asked goes out together, and its answers come back in order; StoreUnavailable
        when Valkey does not answer it."""
        reply = asyncio.gather(*asked)
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                answer = await reply
        except (ConnectionError, ValkeyError, TimeoutError) as exc:
            self._warn("responses.store_lookup_failed", exc)
            raise StoreUnavailable("Kept responses and their items could not be looked up right now: retry shortly "
                                   "(or send the items themselves)", headers={"retry-after": "1"}) from None
        return answer

    # --- kept Responses, read back ----------------------------------------------------------------------

    async def response(self, tenant_id: str, response_id: str) -> bytes | None:
        """A kept Response's JSON as it was answered (None: none is kept under the tenant): two round trips."""
        [(head, output)] = await self.round_trip(self.valkey.call("HMGET", self.record_key(tenant_id, response_id),
                                                              "head", "output"))
        if head is None or output is None:
            return None
        ids = [item_id for item_id, _ in _decode_output(output)]
        [items] = await self.round_trip(self.lookup([self.key(tenant_id, item_id) for item_id in ids])) if ids else [[]]
        if None in items:
            return None
        answered = _decode(head)
        answered["output"] = [msgspec.Raw(raw) for raw in items]
        return _encode(answered)

    async def input_items(self, tenant_id: str, response_id: str) -> tuple[list[msgspec.Raw] | None, str | None]:
        """The items a kept Response was made from, oldest first (the chain's, then its own input; at most three
        round trips); else None, and the Response found not kept (it, or one it continued)."""
        chain, _ = await self._measure(tenant_id, response_id, [])
        if chain is None or chain.lost is not None:
            return None, chain.lost if chain is not None else response_id
        context, _ = await self._fetch(tenant_id, chain, [], own_output=False)
        return context, None if context is not None else response_id

    async def delete(self, tenant_id: str, response_id: str) -> bool:
        """Delete a kept Response and its output items; False when none is kept under the tenant."""
        key = self.record_key(tenant_id, response_id)
        [output] = await self.round_trip(self.valkey.call("HGET", key, "output"))
        if output is None:
            return False
        items = [self.key(tenant_id, item_id) for item_id, _ in _decode_output(output)]
        [deleted] = await self.round_trip(self.valkey.call("DEL", key, *items))
        return deleted > 0

    # --- keeping ----------------------------------------------------------------------------------------

    async def warm(self) -> None:
        """Open the connection at start, so that the first store is not slower than a client's next turn; a Valkey
        away now is only warned of (each call tries again)."""
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                await self.valkey.call("PING")
        except (ConnectionError, ValkeyError, TimeoutError) as exc:
            self._warn("responses.store_unreachable", exc)

    def store(self, tenant_id: str, items: list[tuple[str, bytes]], resolved: Resolved | None = None) -> None:
        """Keep a Response's output items (id, JSON) in the background, as the Response is made: its bytes are on
        their way to the client as the store is sent, and the client never waits for it. Items the door hands over
        with their Response (`KeptOutput`), from the request `resolved`, keep the Response too."""
        if isinstance(items, KeptOutput) and resolved is not None:
            self._in_background(self._store_response(tenant_id, items, resolved))
        elif items:
            self._in_background(self._written([("SET", self.key(tenant_id, item_id), raw, "PX", self.ttl_ms)
                                               for item_id, raw in items]))

    async def _store_response(self, tenant_id: str, output: KeptOutput, resolved: Resolved) -> None:
        """The items, then the Response's hash and its expiry, then the renewed expiry of those it continued: one
        write. Its own input is read from the request here, off the answer's way."""
        head = _encode(msgspec.structs.replace(output.response, output=[]))
        key = self.record_key(tenant_id, output.response.id)
        own = own_items(resolved.body, resolved.inherited)
        if resolved.conversation is None:
            written = [("SET", self.key(tenant_id, item_id), raw, "PX", self.ttl_ms) for item_id, raw in output]
            renewed = [("PEXPIRE", renewed, self.ttl_ms) for renewed in resolved.renewed]
        else:       # its input (kept in its hash too) and output after the conversation's items, which are renewed
            added = [*((item["id"], _encode(item)) for item in own), *output]
            written = [*self.conversations.appended(tenant_id, resolved.conversation, added, list(resolved.renewed)),
                       ("HINCRBY", self.conversations.record_key(tenant_id, resolved.conversation), "bytes",
                        sum(len(raw) for _, raw in added))]
            renewed = []
        await self._written([
            *written,
            ("HSET", key, "head", head, "input", _encode(own),
             "output", _encode([(item_id, len(raw)) for item_id, raw in output]), "chain", " ".join(resolved.chain)),
            ("PEXPIRE", key, self.ttl_ms), *renewed])

    async def _written(self, commands: list[tuple[Any, ...]]) -> None:
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):       # pipelined on the one connection, in order
                done = await asyncio.gather(*(self.valkey.call(*command) for command in commands),
                                            return_exceptions=True)
        except TimeoutError as exc:
            done = [exc]
        failed = next((result for result in done if isinstance(result, Exception)), None)
        if failed is not None:
            self._warn("responses.store_failed", failed)


async def _none(value: Any) -> Any:
    """`value`, where a round trip asks for nothing."""
    return value
