"""The registry's lists and imports at sizes one NATS message cannot carry whole: a page stops at what fits, and an
import its asker would stop waiting for is refused with nothing recorded. The registry, its NATS server and a fresh
database are the real ones, run in this process as in test_registry_sign_in_flood."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest

from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.kit import natsio
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.services.registry import handlers
from tests.conftest import create_database
from tests.integration.test_registry_sign_in_flood import command, registry

_page = msgspec.json.Decoder(m.RegistryPage)


@pytest.fixture(scope="module")
async def running(own_nats: str, urls) -> AsyncIterator[tuple[handlers.Deps, object]]:
    database_url = await create_database(urls.database_url, f"t_{uuid.uuid4().hex[:12]}")
    async with registry(own_nats, database_url, urls.redis_url) as deps:
        nc = await natsio.connect(own_nats, "registry-pages-tests", 10)
        try:
            yield deps, nc
        finally:
            await nc.close()


async def query(nc, q: m.RegistryQuery) -> bytes:
    return await natsio.request(nc, subjects.REGISTRY_QUERY, encode(q), 10)


async def test_a_page_of_long_names_stops_at_one_message_and_the_walk_misses_none(running) -> None:
    _, nc = running
    name = "\U0001d11e" * 200                     # the longest display name, four bytes a character
    doc = {"tenants": [{"id": f"long-{i:04d}-{'x' * 40}", "display_name": name} for i in range(1500)]}
    for half in (doc["tenants"][:750], doc["tenants"][750:]):        # the whole would not fit one request
        reply = await command(nc, m.ImportConfig(config={"tenants": half}, summary=True), timeout_s=60)
        assert reply.events == [] and reply.summary is not None
        assert reply.summary.kinds["tenants"] == m.KindCounts(created=750) and reply.summary.events == 750

    seen: list[str] = []
    after: str | None = None
    while True:
        raw = await query(nc, m.RegistryQuery("tenants", limit=1000, after=after, q="long-"))
        assert len(raw) <= nc.max_payload - 32 * 1024, "a page leaves room in its message"
        page = _page.decode(raw)
        seen += [t["tenant_id"] for t in page.items]
        assert page.total == 1500
        if not page.has_more:
            break
        assert len(page.items) < 1000, "cut short by size, not by the limit"
        after = page.next_after
        assert after == seen[-1]
    assert seen == [t["id"] for t in doc["tenants"]]


async def test_an_import_its_asker_would_stop_waiting_for_records_nothing(running) -> None:
    deps, nc = running
    before = len(deps.store.catalog.tenants)
    doc = {"tenants": [{"id": f"slow-{i:05d}"} for i in range(5000)]}
    for summary in (True, False):            # a gateway of an earlier release asks for the events, and 5 s at most
        with pytest.raises(ServiceError) as refused:
            await command(nc, m.ImportConfig(config=doc, summary=summary), timeout_s=3)
        assert (refused.value.status, refused.value.body.code) == (503, "IMPORT_TOO_SLOW")
        assert "nothing was recorded" in refused.value.body.message
        assert len(deps.store.catalog.tenants) == before
    assert _page.decode(await query(nc, m.RegistryQuery("tenants", limit=1, q="slow-"))).total == 0


async def test_an_earlier_gateways_questions_are_answered_as_before(running) -> None:
    """Without `limit` a list is the whole array, and an import without `summary` answers its events."""
    _, nc = running
    doc = {"providers": [{"id": f"old-{i}", "kind": "ollama"} for i in range(3)]}
    reply = await command(nc, m.ImportConfig(config=doc), timeout_s=30)
    assert [e.provider_id for e in reply.events] == ["old-0", "old-1", "old-2"] and reply.summary is None
    listed = msgspec.json.decode(await query(nc, m.RegistryQuery("providers")))
    assert isinstance(listed, list) and {"old-0", "old-1", "old-2"} <= {p["provider_id"] for p in listed}
