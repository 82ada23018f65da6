"""Thousands of tenants and providers through the admin API: an import answers what it did in counts that always fit,
and every list is walked a page at a time to exactly what the registry holds.

The registry's answers travel as one NATS message each: 7,000 tenants made the import answer 500 ANSWER_TOO_LARGE
after applying all of them, and the tenant list 500 from then on. This `up` gets a NATS of its own and a fresh
database on the session's PostgreSQL, so the shared demo stack never holds the bulk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from switchyard_gateway.kit.stack import StackUrls
from switchyard_gateway.kit.stack_proc import pick_free_port
from tests.conftest import REPO, traversable_tempdir, wait_for
from tests.e2e.test_admin_config_up import private_stack

MAX_LIMIT, DEFAULT_LIMIT = 1000, 500


@dataclass
class Bulk:
    url: str
    admin_key: str

    async def call(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        async with httpx.AsyncClient(timeout=90) as client:
            return await client.request(method, f"{self.url}{path}", headers={"X-API-Key": self.admin_key},
                                        **kwargs)  # type: ignore[arg-type]

    async def walk(self, path: str, id_field: str, limit: int = MAX_LIMIT) -> tuple[list[str], int]:
        """Every id of a list, following each page's `Link: rel="next"`; and how many pages it took."""
        ids: list[str] = []
        pages = 0
        url: str | None = f"{path}?limit={limit}"
        while url is not None:
            page = await self.call("GET", url)
            assert page.status_code == 200, page.text
            ids += [item[id_field] for item in page.json()]
            pages += 1
            assert page.headers["x-has-more"] == ("true" if "next" in page.links else "false")
            url = page.links["next"]["url"] if "next" in page.links else None
        return ids, pages


@contextlib.asynccontextmanager
async def private_up(urls: StackUrls, name: str) -> AsyncIterator[Bulk]:
    """`switchyard up` (no demo) on a NATS of its own and a fresh database; stopped as an operator stops it."""
    async with private_stack(urls, name) as private:
        root = traversable_tempdir(f"switchyard-{name}-")
        try:
            async with _up(root, private) as running:
                yield running
        finally:
            shutil.rmtree(root, ignore_errors=True)


@contextlib.asynccontextmanager
async def _up(root: Path, private: StackUrls) -> AsyncIterator[Bulk]:
    port, admin_key = pick_free_port(set()), f"sy_bulk_{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    env.update(SWITCHYARD_NATS_URL=private.nats_url, SWITCHYARD_DATABASE_URL=private.database_url,
               SWITCHYARD_REDIS_URL=private.redis_url, SWITCHYARD_ADMIN_KEY=admin_key)
    log_path = root / "up.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "switchyard_gateway.cli", "up", "--data-dir", str(root / "data"),
                                 "--port", str(port), "--gateway-workers", "1"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        await wait_for(lambda: b"Switchyard is up" in log_path.read_bytes() or proc.poll() is not None, 90,
                       interval_s=0.2, what="switchyard up")
        assert proc.poll() is None, log_path.read_text()
        yield Bulk(f"http://127.0.0.1:{port}", admin_key)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
async def bulk(urls: StackUrls) -> AsyncIterator[Bulk]:
    async with private_up(urls, "paging") as running:
        yield running


def tenants(count: int, prefix: str = "bt") -> dict:
    return {"tenants": [{"id": f"{prefix}{i:05d}", "display_name": f"Bulk tenant {i}"} for i in range(count)]}


async def test_seven_thousand_tenants_imported_are_counted_and_listed_page_by_page(bulk: Bulk) -> None:
    before, _ = await bulk.walk("/api/admin/tenants", "tenant_id")
    imported = await bulk.call("POST", "/api/admin/registry/import", json=tenants(7000))
    assert imported.status_code == 200, imported.text
    answer = imported.json()
    assert answer["changed"] is True and answer["events"] == 7000
    assert answer["summary"]["tenants"] == {"created": 7000, "changed": 0, "unchanged": 0}
    assert answer["summary"]["providers"] == {"created": 0, "changed": 0, "unchanged": 0}
    assert len(imported.content) < 2048, "the answer counts, it does not list"

    ids, pages = await bulk.walk("/api/admin/tenants", "tenant_id")
    expected = sorted({*before, *(f"bt{i:05d}" for i in range(7000))})
    assert ids == expected, "every tenant once, in id order, none missing"
    assert pages == -(-len(expected) // MAX_LIMIT)
    small, small_pages = await bulk.walk("/api/admin/tenants", "tenant_id", limit=333)
    assert small == expected and small_pages == -(-len(expected) // 333)

    unpaged = await bulk.call("GET", "/api/admin/tenants")          # a client that knows nothing of paging
    assert unpaged.status_code == 200
    assert [t["tenant_id"] for t in unpaged.json()] == expected[:DEFAULT_LIMIT]
    assert (unpaged.headers["x-has-more"], unpaged.headers["x-total-count"]) == ("true", str(len(expected)))
    assert unpaged.headers["x-next-after"] == expected[DEFAULT_LIMIT - 1]

    found = await bulk.call("GET", "/api/admin/tenants", params={"q": "BULK TENANT 6999"})
    assert [t["tenant_id"] for t in found.json()] == ["bt06999"] and found.headers["x-total-count"] == "1"
    prefixed = await bulk.call("GET", "/api/admin/tenants", params={"q": "bt0699", "limit": "4"})
    assert [t["tenant_id"] for t in prefixed.json()] == [f"bt0699{i}" for i in range(4)]
    assert prefixed.links["next"]["url"] == "/api/admin/tenants?limit=4&after=bt06993&q=bt0699"

    again = (await bulk.call("POST", "/api/admin/registry/import", json=tenants(7000))).json()
    assert again["changed"] is False and again["summary"]["tenants"] == {"created": 0, "changed": 0, "unchanged": 7000}
    renamed = tenants(3)
    renamed["tenants"][0]["display_name"] = "Renamed"
    third = (await bulk.call("POST", "/api/admin/registry/import", json=renamed)).json()
    assert third["summary"]["tenants"] == {"created": 0, "changed": 1, "unchanged": 2}
    assert (await bulk.call("GET", "/api/admin/tenants/bt00000")).json()["display_name"] == "Renamed"


async def test_providers_in_bulk_are_listed_whole_and_a_document_too_large_is_refused_untouched(bulk: Bulk) -> None:
    before, _ = await bulk.walk("/api/admin/providers", "provider_id")
    too_many = {"providers": [{"id": f"bx{i:05d}", "kind": "ollama"} for i in range(20_000)]}
    refused = await bulk.call("POST", "/api/admin/registry/import", json=too_many)
    assert refused.status_code == 413, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["field"]) == ("PAYLOAD_TOO_LARGE", "providers") and "10,000" in error["message"]
    assert (await bulk.walk("/api/admin/providers", "provider_id"))[0] == before, "nothing of it was applied"

    doc = {"providers": [{"id": f"bp{i:05d}", "kind": "ollama"} for i in range(9_000)]}
    imported = await bulk.call("POST", "/api/admin/registry/import", json=doc)
    assert imported.status_code == 200, imported.text
    assert imported.json()["summary"]["providers"] == {"created": 9000, "changed": 0, "unchanged": 0}
    ids, _ = await bulk.walk("/api/admin/providers", "provider_id")
    assert ids == sorted({*before, *(p["id"] for p in doc["providers"])})
    status = (await bulk.call("GET", "/api/admin/registry/status")).json()
    assert status["counts"]["providers"] == len(ids)


LISTS = ["/api/admin/tenants", "/api/admin/providers", "/api/admin/endpoints", "/api/admin/models",
         "/api/admin/users", "/api/admin/tenants/admin/keys", "/api/admin/tenants/admin/models",
         "/api/admin/templates"]
HOSTILE = [("limit", "0"), ("limit", "-1"), ("limit", "1001"), ("limit", "1e3"), ("limit", "ten"), ("limit", " 5"),
           ("limit", "99999999999999999999999"), ("limit", "５"), ("after", "a\x00b"), ("after", "x" * 1025),
           ("after", "\u202eevil"), ("q", "\x1b[31m"), ("q", "q" * 201)]


@pytest.mark.parametrize("path", LISTS)
async def test_every_list_refuses_hostile_paging_naming_the_field(bulk: Bulk, path: str) -> None:
    for name, value in HOSTILE:
        refused = await bulk.call("GET", path, params={name: value})
        assert refused.status_code == 400, (name, value, refused.text)
        error = refused.json()["error"]
        assert (error["code"], error["field"]) == ("VALIDATION_ERROR", name), (value, error)
    twice = await bulk.call("GET", f"{path}?limit=1&limit=2")
    assert twice.status_code == 400 and twice.json()["error"]["field"] == "limit"
    paged = await bulk.call("GET", path, params={"limit": "1", "after": "zzzz-past-every-id"})
    assert paged.status_code == 200 and paged.json() == [] and paged.headers["x-has-more"] == "false"
