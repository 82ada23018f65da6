"""The Responses door's kept items against the session's real Valkey: kept per tenant, resolved in one lookup,
gone after their TTL, and a Valkey that does not answer refusing the call 503 rather than dropping the reference."""

from __future__ import annotations

import json
import time
import uuid

import msgspec
import pytest

from switchyard_gateway.resp import Valkey
from switchyard_gateway.services.gateway.edge.errors import ApiError, BadRequest
from switchyard_gateway.services.gateway.pipeline.stored_items import StoredItems, StoreUnavailable
from tests.conftest import StackUrls, wait_for

MESSAGE = {"type": "message", "id": "msg_1a2b", "status": "completed", "role": "assistant",
           "content": [{"type": "output_text", "text": "Hagen's yard", "annotations": [], "logprobs": []}]}


def _items(urls: StackUrls, ttl_s: float = 60.0, max_body_bytes: int = 4 << 20) -> StoredItems:
    return StoredItems(Valkey(urls.redis_url), f"test:r:{uuid.uuid4().hex[:8]}:", ttl_s, max_body_bytes)


def _body(*references: object) -> bytes:
    return json.dumps({"model": "m", "input": [{"role": "user", "content": "hi"},
                                               *({"type": "item_reference", "id": r} for r in references)]}).encode()


async def _kept(items: StoredItems, tenant: str, *pairs: tuple[str, dict]) -> None:
    items.store(tenant, [(item_id, msgspec.json.encode(item)) for item_id, item in pairs])
    await wait_for(lambda: _stored(items), what="the items kept")


async def _stored(items: StoredItems) -> bool:
    return not items._writes


async def test_a_reference_is_replaced_by_the_item_kept_under_the_tenant(urls: StackUrls) -> None:
    items = _items(urls)
    call = {**MESSAGE, "type": "function_call", "id": "fc_9", "call_id": "call_9", "name": "f", "arguments": "{}"}
    await _kept(items, "acme", ("msg_1a2b", MESSAGE), ("fc_9", call))
    resolved = json.loads((await items.resolve("acme", _body("fc_9", "msg_1a2b"))).body)
    assert resolved["input"][1:] == [call, MESSAGE] and resolved["model"] == "m"
    with pytest.raises(BadRequest) as refused:
        await items.resolve("acme:msg_1a2b", _body("msg_1a2b"))            # another tenant, whatever its name
    assert refused.value.param == "input[1].id" and "msg_1a2b" in str(refused.value)
    await items.close()


async def test_an_item_is_gone_after_its_ttl(urls: StackUrls) -> None:
    items = _items(urls, ttl_s=0.3)
    await _kept(items, "acme", ("msg_1a2b", MESSAGE))
    assert json.loads((await items.resolve("acme", _body("msg_1a2b"))).body)["input"][1] == MESSAGE
    started = time.monotonic()

    async def expired() -> bool:
        try:
            await items.resolve("acme", _body("msg_1a2b"))
        except BadRequest as exc:
            return exc.param == "input[1].id"
        return False
    await wait_for(expired, timeout_s=5, what="the item expired")
    assert time.monotonic() - started < 5
    await items.close()


async def test_a_valkey_that_does_not_answer_is_a_503(urls: StackUrls) -> None:
    items = StoredItems(Valkey("redis://127.0.0.1:1"), "test:r:", 60.0, 4 << 20)
    with pytest.raises(StoreUnavailable) as refused:
        await items.resolve("acme", _body("msg_1a2b"))
    assert refused.value.status == 503
    items.store("acme", [("msg_1a2b", b"{}")])              # dropped, never raised
    await items.close()


async def test_resolved_items_are_bounded_as_a_body_is(urls: StackUrls) -> None:
    items = _items(urls, max_body_bytes=4096)
    big = {**MESSAGE, "content": [{"type": "output_text", "text": "x" * 3000}]}
    await _kept(items, "acme", ("msg_big", big))
    await items.resolve("acme", _body("msg_big"))
    with pytest.raises(ApiError) as refused:
        await items.resolve("acme", _body("msg_big", "msg_big"))
    assert refused.value.status == 413
    await items.close()


async def test_many_references_to_a_large_item_are_refused_before_it_is_fetched(urls: StackUrls,
                                                                                 monkeypatch) -> None:
    """300 references to one 400 KB kept item (a 22 KB request) had Valkey send 118 MB, read by the worker for 14 s
    and holding every other lookup of that worker 503 meanwhile. Each item is asked for once, and its size is read
    before it is fetched."""
    items = _items(urls, max_body_bytes=4 << 20)
    big = {**MESSAGE, "content": [{"type": "output_text", "text": "x" * 400_000}]}
    await _kept(items, "acme", ("msg_big", big), ("msg_1a2b", MESSAGE))
    fetched = spied_lookups(items, monkeypatch)
    with pytest.raises(ApiError) as refused:
        await items.resolve("acme", _body(*["msg_big"] * 300))
    assert refused.value.status == 413 and fetched == []
    resolved = json.loads((await items.resolve("acme", _body(*["msg_1a2b"] * 100, "msg_big"))).body)
    assert resolved["input"][1:] == [MESSAGE] * 100 + [big]
    assert [len(keys) for keys in fetched] == [2]                     # each item once
    await items.close()


def spied_lookups(items: StoredItems, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The keys of each value lookup (MGET) the store makes from now on."""
    fetched: list[list[str]] = []
    real_lookup = items.lookup

    async def lookup(keys: list[str]) -> list:
        fetched.append(keys)
        return await real_lookup(keys)
    monkeypatch.setattr(items, "lookup", lookup)
    return fetched
