"""Quota usage ratios on the quota service's /metrics: equal to the quotas view, gone with their limit or tenant.

Real calls through the demo's gateway, settled by the demo's quota service, scraped from its port
(the ratio and the scrape hook on their own: tests/unit/test_quota_metrics.py).
"""

from __future__ import annotations

import re

import httpx
from prometheus_client.parser import text_string_to_metric_families

from switchyard_gateway.cli.bootstrap import DEMO_EMBED_MODEL
from tests.conftest import DemoStack, wait_for
from tests.e2e.test_quota_e2e import PROMPT, admin, new_tenant, set_limits, settled

GAUGES = ("switchyard_quota_usage_ratio", "embedding_quota_usage_ratio")


# --- on the demo stack ----------------------------------------------------------------------------


def quota_metrics_url(demo: DemoStack) -> str:
    ports = dict(re.findall(r"(\w+) :(\d+)", demo.output().split("services:", 1)[1].split(";", 1)[0]))
    return f"http://127.0.0.1:{ports['quota']}/metrics"


async def scrape(http: httpx.AsyncClient, url: str, tenant: str) -> dict[str, dict[tuple[str, str], float]]:
    """The tenant's series of both gauges: gauge -> (model, window) -> value."""
    text = (await http.get(url)).text
    found: dict[str, dict[tuple[str, str], float]] = {name: {} for name in GAUGES}
    for family in text_string_to_metric_families(text):
        if family.name in GAUGES:
            for sample in family.samples:
                if sample.labels["tenant"] == tenant:
                    found[family.name][(sample.labels["model"], sample.labels["window"])] = sample.value
    return found


async def test_quota_metrics_equal_the_quotas_view_and_lose_removed_limits_and_tenants(
        demo: DemoStack, urls) -> None:
    tenant, key = new_tenant(demo)
    assert set_limits(demo, tenant, daily_tokens=100_000).status_code == 200
    assert set_limits(demo, tenant, DEMO_EMBED_MODEL, daily_tokens=5_000, monthly_requests=40).status_code == 200
    assert set_limits(demo, tenant, "llama3.2", monthly_tokens=50_000).status_code == 200
    headers = {"Authorization": f"Bearer {key}"}
    url = quota_metrics_url(demo)
    async with httpx.AsyncClient(timeout=15) as http:
        chat = await http.post(f"{demo.url}/v1/chat/completions", headers=headers, json={
            "model": "llama3.2", "max_tokens": 16, "messages": [{"role": "user", "content": PROMPT}]})
        embedded = await http.post(f"{demo.url}/v1/embeddings", headers=headers,
                                   json={"model": DEMO_EMBED_MODEL, "input": PROMPT})
        assert chat.status_code == 200 and embedded.status_code == 200, (chat.text, embedded.text)
        await settled(demo, urls, tenant, 2)
        view = (await http.get(f"{demo.url}/api/v1/tenant-models/quotas", headers=headers)).json()["quotas"]
        every = {(q["model_id"] or "", q["quota_type"]): q["used"] / q["limit"] for q in view}
        assert set(every) == {("", "daily"), (DEMO_EMBED_MODEL, "daily"), (DEMO_EMBED_MODEL, "requests"),
                              ("llama3.2", "monthly")}
        assert all(0 < value < 1 for value in every.values())        # both calls are counted
        embedding = {labels: value for labels, value in every.items() if labels[0] == DEMO_EMBED_MODEL}

        async def shown(expected: dict[str, dict[tuple[str, str], float]]) -> bool:
            return await scrape(http, url, tenant) == expected

        await wait_for(lambda: shown({GAUGES[0]: every, GAUGES[1]: embedding}), timeout_s=10,
                       what="the quotas view on /metrics")

        assert set_limits(demo, tenant, DEMO_EMBED_MODEL, daily_tokens=None).status_code == 200
        del every[(DEMO_EMBED_MODEL, "daily")], embedding[(DEMO_EMBED_MODEL, "daily")]
        await wait_for(lambda: shown({GAUGES[0]: every, GAUGES[1]: embedding}), timeout_s=10,
                       what="the removed limit's series gone")

        removed = await http.delete(f"{demo.url}/api/admin/tenants/{tenant}", headers=admin(demo))
        assert removed.status_code == 200, removed.text
        await wait_for(lambda: shown({GAUGES[0]: {}, GAUGES[1]: {}}), timeout_s=10,
                       what="the removed tenant's series gone")
