"""The web console in a real browser (headless Chromium, Playwright) against `switchyard up --demo`.

An operator signs in with the keyboard, watches live figures move while calls are made, creates a tenant,
assigns it a model, issues a key (copied from the page) and sees that key's call in the tenant's chart,
sets a limit, resets a breaker that real failing calls opened, and revokes the key; a member sees its own
tenant only. Every request the browser makes is recorded: none may leave the machine. Screenshots at 1280
and 390 px go to the `screenshots` folder (see conftest.py); load times are written beside them.
"""

from __future__ import annotations

import json
import statistics
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from switchyard_gateway.simulator import SimConfig, Simulator

from tests.browser.conftest import new_context, shoot
from tests.conftest import DemoStack, wait_for

WAIT_MS = 20_000                  # for figures that travel gateway -> NATS -> metering -> the page


async def call(demo: DemoStack, key: str, model: str = "llama3.2") -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(f"{demo.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                 json={"model": model, "messages": [{"role": "user", "content": "hi"}]})


async def admin(demo: DemoStack, method: str, path: str, body: object = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.request(method, f"{demo.url}{path}", json=body,
                                    headers={"Authorization": f"Bearer {demo.admin_key}"})


async def figure(page: Any, card: str) -> int:
    return int((await page.text_content(f"#kpi-{card} .value") or "0").replace(",", "").replace("–", "0"))


async def sign_in_with_keyboard(page: Any, key: str) -> None:
    await page.goto("/ui")
    await page.wait_for_selector("#key:focus")            # the key field has focus on arrival
    await page.keyboard.type(key)
    await page.keyboard.press("Enter")


async def load_times(page: Any, runs: int = 7) -> dict[str, float]:
    """Reload the signed-in console (the key is in sessionStorage) and time it: DOMContentLoaded, first
    contentful paint, and the first figures on screen (the page's `console:first-data` mark)."""
    samples: list[dict[str, float]] = []
    for _ in range(runs):
        await page.reload()
        await page.wait_for_function("() => performance.getEntriesByName('console:first-data').length > 0", timeout=WAIT_MS)
        samples.append(await page.evaluate("""() => {
            const nav = performance.getEntriesByType('navigation')[0];
            const paint = performance.getEntriesByName('first-contentful-paint')[0];
            return {dom_content_loaded_ms: nav.domContentLoadedEventEnd, first_paint_ms: paint ? paint.startTime : null,
                    first_data_ms: performance.getEntriesByName('console:first-data')[0].startTime};
        }"""))
    out: dict[str, float] = {}
    for name in samples[0]:
        values = [s[name] for s in samples if s[name] is not None]    # a reload may report no paint entry
        for stat, fn in (("median", statistics.median), ("max", max)):
            if values:
                out[f"{name}_{stat}"] = round(fn(values), 1)
    return out


@dataclass
class OpenBreaker:
    endpoint: str
    sim: Simulator


@pytest.fixture
async def open_breaker(demo: DemoStack) -> AsyncIterator[OpenBreaker]:
    """An endpoint of its own whose breaker real failed calls have opened (its probes fail too: it stays open)."""
    tag = uuid.uuid4().hex[:8]
    model, endpoint, tenant = f"ui-cb-{tag}", f"ui-cb-{tag}", f"ui-cbt-{tag}"
    async with Simulator(SimConfig(models=(model,), tokens=3)) as sim:
        for path, body in (("/providers", {"provider_id": f"ui-cbp-{tag}", "kind": "openai-compatible"}),
                           ("/models", {"model_id": model}),
                           ("/endpoints", {"endpoint_id": endpoint, "provider_id": f"ui-cbp-{tag}",
                                           "base_url": sim.url, "models": [model], "timeout_s": 2.0}),
                           ("/tenants", {"tenant_id": tenant})):
            assert (await admin(demo, "POST", f"/api/admin{path}", body)).status_code == 201
        key = (await admin(demo, "POST", f"/api/admin/tenants/{tenant}/keys", {"name": "cb"})).json()["key"]
        await wait_for(lambda: sim.stats.requests.get("/v1/models"), 10, what="the router's first probe")
        sim.configure(failure_kind="http_500", failure_rate=1.0)

        async def opened() -> bool:
            await call(demo, key, model)
            circuits = (await admin(demo, "GET", "/api/admin/circuits")).json()
            return any(c["endpoint_id"] == endpoint and c["state"] == "open" for c in circuits)

        await wait_for(opened, 20, interval_s=0.2, what="the breaker to open")
        try:
            yield OpenBreaker(endpoint, sim)
        finally:
            await admin(demo, "DELETE", f"/api/admin/endpoints/{endpoint}")


async def test_operator_watches_live_usage_manages_a_tenant_and_resets_a_breaker(
        browser: Any, screenshots: Path, demo: DemoStack, open_breaker: OpenBreaker) -> None:
    context, requests = await new_context(browser, demo.url)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    # Sign in with the keyboard alone; the first visit is timed too (nothing cached).
    await sign_in_with_keyboard(page, demo.admin_key)
    await page.wait_for_function("() => document.querySelector('#kpi-calls .value')?.textContent !== '–'", timeout=WAIT_MS)
    first_visit = await page.evaluate("performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd")
    assert await page.evaluate("sessionStorage.length") == 1, "the key is kept for this tab's session only"
    assert await page.evaluate("localStorage.length") == 0 and "sy_" not in await page.evaluate("document.cookie")
    timings = {"first_visit_dom_content_loaded_ms": round(first_visit, 1), **await load_times(page)}
    (screenshots / "load-times.json").write_text(json.dumps(timings, indent=2) + "\n")
    print(f"\nconsole load times: {timings}\nscreenshots: {screenshots}")

    # Live numbers move while calls are made.
    before = await figure(page, "calls")
    for _ in range(3):
        assert (await call(demo, demo.demo_key)).status_code == 200
    await page.wait_for_function("() => document.querySelectorAll('#feed tbody tr').length >= 3", timeout=WAIT_MS)
    await page.wait_for_function(f"() => Number(document.querySelector('#kpi-calls .value')?.textContent.replace(/,/g, '')) >= {before + 3}",
                                 timeout=WAIT_MS)
    assert await page.text_content("#kpi-rate .value") != "0.0"
    await page.wait_for_function("() => Number(document.querySelector('#usage-chart')?.dataset.total) > 0", timeout=WAIT_MS)
    await shoot(page, screenshots, "overview")

    # Keyboard: from the top of the page, Tab reaches the navigation and Enter opens a page.
    await page.evaluate("document.activeElement.blur()")
    for _ in range(12):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.textContent") == "Tenants":
            break
    await page.keyboard.press("Enter")
    await page.wait_for_function("() => document.activeElement.tagName === 'H1' && document.activeElement.textContent === 'Tenants'")

    # A bad tenant id: the API's own message, in place.
    await page.fill("#tenant-id", "bad id!")
    await page.click("#create-tenant button[type=submit]")
    refused = (await admin(demo, "POST", "/api/admin/tenants", {"tenant_id": "bad id!"})).json()["error"]["message"]
    await page.wait_for_selector("#create-tenant-error .error")
    assert refused in await page.text_content("#create-tenant-error")

    # Create a tenant limited to assigned models, assign one, issue a key and copy it.
    tenant = f"ui-{uuid.uuid4().hex[:8]}"
    await page.fill("#tenant-id", tenant)
    await page.fill("#tenant-name", "Browser test")
    await page.uncheck("#tenant-all")
    await page.click("#create-tenant button[type=submit]")
    await page.wait_for_function(f"() => location.hash === '#/tenants/{tenant}'")
    await page.wait_for_selector("#assign-model option[value='llama3.2']", state="attached")
    await page.select_option("#assign-model", "llama3.2")
    await page.check("#assign-default")
    await page.click("#assign-form button[type=submit]")
    await page.wait_for_selector("#assignments tr[data-model='llama3.2']")
    await page.fill("#key-name", "browser test")
    await page.click("#issue-key button[type=submit]")
    await page.wait_for_selector("dialog[open] #new-key")
    key = await page.input_value("#new-key")
    await page.click("#copy-key")
    assert await page.evaluate("navigator.clipboard.readText()") == key
    await page.click("#key-done")
    await page.wait_for_selector("dialog", state="detached")
    assert key not in await page.content(), "the key is shown once, then gone from the page"

    # The key works, and its call shows in the tenant's chart and usage.
    assert (await call(demo, key)).status_code == 200
    await page.wait_for_function("() => Number(document.querySelector('#tenant-chart')?.dataset.total) > 0", timeout=WAIT_MS)
    await page.wait_for_selector("#period-usage tr[data-model='llama3.2']", timeout=WAIT_MS)

    # A limit, and how much of it is used.
    await page.fill("#limit-daily_tokens", "100000")
    await page.click("#limits-form button[type=submit]")
    await page.wait_for_selector("#quotas tr[data-quota='daily']", timeout=WAIT_MS)
    assert "100,000" in await page.text_content("#quotas tr[data-quota='daily']")
    await shoot(page, screenshots, "tenant")

    # A breaker opened by failed calls: shown open, reset from its card.
    await page.click("a[data-page=endpoints]")
    card = f"[data-endpoint='{open_breaker.endpoint}']"
    await page.wait_for_selector(f"{card}[data-circuit='open']", timeout=WAIT_MS)
    await shoot(page, screenshots, "endpoints-open-breaker")
    await page.click(f"{card} [data-action=reset]")
    await page.wait_for_selector(f"{card}[data-circuit='closed']", timeout=WAIT_MS)
    circuits = (await admin(demo, "GET", "/api/admin/circuits")).json()
    assert next(c for c in circuits if c["endpoint_id"] == open_breaker.endpoint)["state"] == "closed"
    await page.click(f"{card} [data-action=test]")
    await page.wait_for_function(f"() => document.querySelector(\"{card} .result\")?.textContent.includes('Test failed')")

    # Revoke the key (a second click confirms): it stops working at once.
    await page.goto(f"/ui#/tenants/{tenant}")
    row = "#key-list tr[data-revoked='false']"
    await page.click(f"{row} [data-action=revoke]")
    await page.click(f"{row} [data-action=revoke]")
    await page.wait_for_selector("#key-list tr[data-revoked='true']")
    assert (await call(demo, key)).status_code == 401

    # A tenant that does not exist: the error and the way back, no forms to fill in for it.
    await page.goto("/ui#/tenants/no-such-tenant")
    await page.wait_for_selector("#tenant-missing", timeout=WAIT_MS)
    assert "404" in await page.text_content("#tenant-missing")
    assert await page.query_selector("#limits-form") is None and await page.query_selector("#key-list") is None

    # A crafted link whose tenant id holds encoded slashes: once decoded by the server it named another route
    # (saving "the tenant's" limits set a model's). It is no tenant id, and nothing is asked of the API for it.
    asked = len(requests.urls)
    await page.goto("/ui#/tenants/demo%2Fmodels%2Fllama3.2")
    await page.wait_for_selector("main h1:text('No such tenant')", timeout=WAIT_MS)
    assert not [url for url in requests.urls[asked:] if "%2F" in url or "/tenants/demo/" in url]
    assert await page.query_selector("#limits-form") is None

    assert "/api/usage-stream" in requests.paths("/api/usage-stream")
    assert requests.foreign() == [], "the console made requests off this machine"
    assert errors == [], f"script errors on the page: {errors}"
    await context.close()


async def test_member_key_sees_only_its_tenant(browser: Any, screenshots: Path, demo: DemoStack) -> None:
    tenant = f"ui-m-{uuid.uuid4().hex[:8]}"
    assert (await admin(demo, "POST", "/api/admin/tenants", {"tenant_id": tenant})).status_code == 201
    key = (await admin(demo, "POST", f"/api/admin/tenants/{tenant}/keys", {"name": "member"})).json()["key"]
    assert (await admin(demo, "PUT", f"/api/admin/tenants/{tenant}/limits", {"daily_tokens": 50000})).status_code == 200
    context, requests = await new_context(browser, demo.url)
    page = await context.new_page()

    # A wrong key: refused in place with the API's message, nothing kept.
    await sign_in_with_keyboard(page, "sy_not_a_key")
    await page.wait_for_selector(".signin .error")
    assert "Invalid or expired token" in await page.text_content(".signin .error")
    assert await page.evaluate("sessionStorage.length") == 0
    await shoot(page, screenshots, "sign-in-refused")

    await page.fill("#key", key)
    await page.press("#key", "Enter")
    await page.wait_for_selector(".topbar:not([hidden])")
    assert await page.eval_on_selector_all("#nav a", "links => links.map(a => a.textContent)") == ["Overview", "Limits"]

    # Another tenant's call first, then the member's own: only the member's reaches its page.
    await page.wait_for_selector("#live[data-state='live']", timeout=WAIT_MS)
    assert (await call(demo, demo.demo_key)).status_code == 200
    assert (await call(demo, key)).status_code == 200
    await page.wait_for_selector(f"#feed tr[data-tenant='{tenant}']", timeout=WAIT_MS)
    tenants = await page.eval_on_selector_all("#feed tbody tr", "rows => rows.map(r => r.dataset.tenant)")
    assert set(tenants) == {tenant}
    await page.wait_for_function("() => document.querySelector('#kpi-calls .value')?.textContent === '1'", timeout=WAIT_MS)
    assert await page.query_selector("#feed th:text('Tenant')") is None
    await page.wait_for_function("() => Number(document.querySelector('#usage-chart')?.dataset.total) > 0", timeout=WAIT_MS)
    await shoot(page, screenshots, "member-overview")

    await page.goto("/ui#/limits")
    await page.wait_for_selector("#quotas tr[data-quota='daily']", timeout=WAIT_MS)
    assert "50,000" in await page.text_content("#quotas tr[data-quota='daily']")
    await shoot(page, screenshots, "member-limits")

    await page.goto("/ui#/tenants")
    await page.wait_for_selector("main h1:text('Tenants')")
    assert "needs an admin key" in await page.text_content("main")
    assert await page.query_selector("#tenant-list") is None

    # Hashes that are no page: the overview, and no script error (`#/constructor` found Object.prototype's
    # member; a malformed escape threw URIError; either left the page broken).
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    for odd in ("#/constructor", "#/__proto__", "#/toString", "#/%E0%A4%A", "#/limits/%"):
        await page.goto(f"/ui{odd}")
        await page.wait_for_function("() => document.title.endsWith('· Switchyard') && "
                                     "!document.title.startsWith('undefined')", timeout=WAIT_MS)
    assert errors == []
    await page.goto("/ui#/constructor")
    await page.wait_for_selector("#kpi-calls .value", timeout=WAIT_MS)          # the overview, drawn

    # A member's console learns its role from /api/auth/me and touches no admin route at all.
    assert "/api/auth/me" in requests.paths("/api/auth/")
    assert requests.paths("/api/admin/") == []
    assert requests.foreign() == []
    await context.close()
