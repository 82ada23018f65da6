"""Quota usage ratios: the ratio and its labels, and the scrape hook's bounds (a slow source never fails a scrape)."""

from __future__ import annotations

import asyncio

import structlog

from switchyard_gateway.contracts.quota import QuotaStatus
from switchyard_gateway.kit import service
from switchyard_gateway.kit.service import Runtime, refresh_before_scrape
from switchyard_gateway.services.quota.settings import Settings
from switchyard_gateway.services.quota.metrics import ratio, usage_ratios


def status(quota_type: str, model_id: str | None, limit: float, used: float) -> QuotaStatus:
    return QuotaStatus(quota_type, model_id, limit, used, max(0, limit - used), "day", "2030-01-01T00:00:00Z")


def test_ratio_is_used_over_limit_and_a_zero_limit_is_full_once_used() -> None:
    assert ratio(250, 1000) == 0.25
    assert ratio(1.5, 1.0) == 1.5
    assert ratio(0, 0) == 0.0
    assert ratio(3, 0) == 1.0


def test_embedding_gauge_takes_only_limits_on_embedding_models_and_key_limits_are_left_out() -> None:
    statuses = {"acme": [status("daily", None, 1000, 100), status("key_rpm", None, 10, 5),
                         status("monthly", "embed", 400, 100), status("tpm", "llama3.2", 100, 50),
                         status("budget", "gone", 2.0, 0.5)]}
    every, embedding = usage_ratios(statuses, {"embed": "embedding", "llama3.2": "chat"})
    assert every == {("acme", "", "daily"): 0.1, ("acme", "embed", "monthly"): 0.25,
                     ("acme", "llama3.2", "tpm"): 0.5, ("acme", "gone", "budget"): 0.25}
    assert embedding == {("acme", "embed", "monthly"): 0.25}


async def test_a_scrape_outlasts_a_slow_or_failing_refresh_and_keeps_the_others(monkeypatch) -> None:
    monkeypatch.setattr(service, "BEFORE_SCRAPE_TIMEOUT_S", 0.2)
    deps = Runtime(name="probe", settings=Settings(), log=structlog.get_logger(), nc=None)  # type: ignore[arg-type]
    never, refreshed = asyncio.Event(), []

    async def stuck() -> None:           # a Valkey that never answers
        await never.wait()

    async def broken() -> None:
        raise ConnectionError("valkey refused")

    async def good() -> None:
        refreshed.append(True)

    deps.before_scrape += [stuck, broken, good]
    await asyncio.wait_for(refresh_before_scrape(deps), 5)
    assert refreshed == [True]
