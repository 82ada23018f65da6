"""Quota usage ratios as Prometheus gauges, recomputed from the Valkey counters right before each scrape.

`switchyard_quota_usage_ratio{tenant, model, window}` is used / limit of every limit the quotas view
shows a tenant (model "" for a tenant-wide limit, window the quota type; per-key rate limits are not
exported); `embedding_quota_usage_ratio` repeats the limits set on one model whose registry kind is
"embedding" (a tenant-wide limit feeds only the first gauge). Model kinds, and which tenants still
exist, come from a fold of the registry's model and tenant events read from the log past the last
one seen (one indexed query per scrape): the LimitsBook knows no kinds, and the counter projection's
ledger is current only on the replica that leads it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import asyncpg
from prometheus_client import Gauge

from switchyard_gateway.catalog.state import Catalog
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.quota import QuotaStatus
from switchyard_gateway.events import LogFold
from switchyard_gateway.quotas.periods import Keys
from switchyard_gateway.resp import Valkey
from switchyard_gateway.services.quota import views
from switchyard_gateway.services.quota.store import LimitsStore

LABELS = ("tenant", "model", "window")
QUOTA_USAGE = Gauge("switchyard_quota_usage_ratio",
                    "Used / limit of each tenant and tenant x model quota, reservations included", LABELS)
EMBEDDING_QUOTA_USAGE = Gauge("embedding_quota_usage_ratio",
                              "Used / limit of each quota set on an embedding model, reservations included", LABELS)
REGISTRY_TYPES = (subjects.MODEL_REGISTERED, subjects.MODEL_REMOVED, subjects.TENANT_CREATED,
                  subjects.TENANT_REMOVED)

Labels = tuple[str, str, str]          # (tenant, model or "", window)


def ratio(used: float, limit: float) -> float:
    """used / limit; a zero limit counts as full once anything is used."""
    if limit <= 0:
        return 1.0 if used > 0 else 0.0
    return used / limit


def usage_ratios(statuses: Mapping[str, Sequence[QuotaStatus]],
                 kinds: Mapping[str, str]) -> tuple[dict[Labels, float], dict[Labels, float]]:
    """The series of both gauges from each tenant's statuses: every limit, then those on embedding models."""
    every: dict[Labels, float] = {}
    embedding: dict[Labels, float] = {}
    for tenant, items in statuses.items():
        for status in items:
            if status.quota_type.startswith("key_"):
                continue
            labels = (tenant, status.model_id or "", status.quota_type)
            every[labels] = ratio(status.used, status.limit)
            if status.model_id and kinds.get(status.model_id) == "embedding":
                embedding[labels] = every[labels]
    return every, embedding


class UsageRatios:
    """Sets both gauges to the quotas view of every existing tenant with limits; `refresh` runs before a scrape."""

    def __init__(self, pool: asyncpg.Pool, valkey: Valkey, keys: Keys, store: LimitsStore) -> None:
        self.pool, self.valkey, self.keys, self.store = pool, valkey, keys, store
        self.registry = Catalog()          # models and tenants only (REGISTRY_TYPES)
        self._registry_log = LogFold(REGISTRY_TYPES, self.registry.apply)
        self.shown: dict[Gauge, set[Labels]] = {QUOTA_USAGE: set(), EMBEDDING_QUOTA_USAGE: set()}
        self._lock = asyncio.Lock()        # one refresh at a time: the fold and the gauges move in order

    async def refresh(self) -> None:
        """Catch up with the registry, read every tenant's counters in one pipeline, and set the gauges."""
        async with self._lock:
            async with self.pool.acquire() as conn:
                await self._registry_log.catch_up(conn)
            await self.store.catch_up()
            book = self.store.book
            now = datetime.now(UTC)
            tenants = sorted((book.tenants.keys() | book.models.keys()) & self.registry.tenants.keys())
            plans = [(tenant, views.planned(book, self.keys, tenant, "", now)) for tenant in tenants]
            values = await views.read_counters(self.valkey, [item for _, items in plans for item in items])
            statuses, start = {}, 0
            for tenant, items in plans:
                statuses[tenant] = views.statuses(book, tenant, items, values[start:start + len(items)])
                start += len(items)
            kinds = {model_id: model.kind for model_id, model in self.registry.models.items()}
            for gauge, series in zip((QUOTA_USAGE, EMBEDDING_QUOTA_USAGE), usage_ratios(statuses, kinds), strict=True):
                self._show(gauge, series)

    def _show(self, gauge: Gauge, series: dict[Labels, float]) -> None:
        """Set the series, and remove those this refresher showed that are gone (a limit or tenant removed)."""
        for labels in self.shown[gauge] - series.keys():
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)
        for labels, value in series.items():
            gauge.labels(*labels).set(value)
        self.shown[gauge] = set(series)
