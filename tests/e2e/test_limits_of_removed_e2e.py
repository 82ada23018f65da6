"""End to end on the demo stack: a tenant or model removed through the admin API takes its limits with it, so one
created again under the same id starts without them (a tenant without its usage either), and limits set afterwards
are enforced."""

from __future__ import annotations

import uuid

import httpx

from tests.conftest import DemoStack, wait_for


def admin(demo: DemoStack) -> dict[str, str]:
    return {"Authorization": f"Bearer {demo.admin_key}"}


async def api(demo: DemoStack, method: str, path: str, body: object = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.request(method, f"{demo.url}/api/admin{path}", json=body, headers=admin(demo))


async def new_key(demo: DemoStack, tenant: str) -> str:
    issued = await api(demo, "POST", f"/tenants/{tenant}/keys", {"role": "member"})
    assert issued.status_code == 201, issued.text
    return issued.json()["key"]


async def call(demo: DemoStack, key: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(f"{demo.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                 json={"model": "llama3.2", "max_tokens": 8,
                                       "messages": [{"role": "user", "content": "hello there"}]})


async def limits_of(demo: DemoStack, tenant: str) -> dict:
    shown = await api(demo, "GET", f"/tenants/{tenant}/limits")
    assert shown.status_code == 200, shown.text
    return shown.json()


async def test_a_tenant_created_again_under_a_removed_ones_id_starts_without_its_limits(demo: DemoStack) -> None:
    tenant = f"reuse-{uuid.uuid4().hex[:8]}"
    assert (await api(demo, "POST", "/tenants", {"tenant_id": tenant})).status_code == 201
    assert (await api(demo, "PUT", f"/tenants/{tenant}/limits", {"monthly_requests": 2})).status_code == 200
    key = await new_key(demo, tenant)
    assert [(await call(demo, key)).status_code for _ in range(3)] == [200, 200, 402]

    await wait_for(lambda: _requests_counted(demo, tenant, 2), timeout_s=10, what="the two calls counted")
    assert (await api(demo, "DELETE", f"/tenants/{tenant}")).status_code == 200
    assert (await api(demo, "GET", f"/tenants/{tenant}/limits")).status_code == 404
    assert (await api(demo, "POST", "/tenants", {"tenant_id": tenant})).status_code == 201
    empty = {"tenant_id": tenant, "limits": {}, "models": {}}
    await wait_for(lambda: _shows(demo, tenant, empty), timeout_s=10, what="no limits for the tenant created again")
    key = await new_key(demo, tenant)
    served = await call(demo, key)
    assert served.status_code == 200, served.text

    # its counters started from nothing too: of two requests a month it has used the one above, not the removed
    # tenant's two as well
    assert (await api(demo, "PUT", f"/tenants/{tenant}/limits", {"monthly_requests": 2})).status_code == 200
    await wait_for(lambda: _requests_counted(demo, tenant, 1), timeout_s=10, what="the call counted")
    assert (await call(demo, key)).status_code == 200
    refused = await call(demo, key)
    assert refused.status_code == 402, refused.text
    assert refused.json()["error"]["quota_type"] == "requests" and refused.json()["error"]["limit"] == 2
    assert refused.json()["error"]["used"] == 2
    assert (await limits_of(demo, tenant))["limits"] == {"monthly_requests": 2}
    await api(demo, "DELETE", f"/tenants/{tenant}")


async def test_removing_a_model_removes_every_tenants_limits_of_it(demo: DemoStack) -> None:
    tag = uuid.uuid4().hex[:8]
    model, tenant = f"gone-{tag}", f"t-{tag}"
    assert (await api(demo, "POST", "/models", {"model_id": model})).status_code == 201
    assert (await api(demo, "POST", "/tenants", {"tenant_id": tenant})).status_code == 201
    try:
        for limited in (model, "llama3.2"):
            put = await api(demo, "PUT", f"/tenants/{tenant}/models/{limited}/limits", {"daily_tokens": 500})
            assert put.status_code == 200, put.text
        assert set((await limits_of(demo, tenant))["models"]) == {model, "llama3.2"}
        assert (await api(demo, "DELETE", f"/models/{model}")).status_code == 200
        kept = {"tenant_id": tenant, "limits": {}, "models": {"llama3.2": {"daily_tokens": 500}}}
        await wait_for(lambda: _shows(demo, tenant, kept), timeout_s=10, what="the removed model's limits gone")
        assert (await api(demo, "POST", "/models", {"model_id": model})).status_code == 201
        assert (await limits_of(demo, tenant)) == kept                 # registered again: nothing comes back
    finally:
        await api(demo, "DELETE", f"/tenants/{tenant}")
        await api(demo, "DELETE", f"/models/{model}")


async def _shows(demo: DemoStack, tenant: str, expected: dict) -> bool:
    return await limits_of(demo, tenant) == expected


async def _requests_counted(demo: DemoStack, tenant: str, requests: int) -> bool:
    async with httpx.AsyncClient(timeout=30) as client:
        usage = await client.get(f"{demo.url}/api/v1/tenant-models/usage", headers=admin(demo),
                                 params={"period": "month", "tenant_id": tenant})
    assert usage.status_code == 200, usage.text
    return usage.json()["usage"]["requests"] == requests
