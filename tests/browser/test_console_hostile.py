"""The web console against a busy and hostile world, in a real browser (headless Chromium, Playwright) against
`switchyard up --demo`: many models with usage, a navigation that outruns a page's module, a key revoked while
the show-once dialog is open, keys no header can carry, upstream text with bidirectional controls and no spaces,
odd figures, and the page's own security policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from switchyard_gateway.simulator import SimConfig, Simulator

from tests.browser.conftest import new_context, shoot
from tests.browser.test_console import WAIT_MS, admin, call, sign_in_with_keyboard
from tests.conftest import DemoStack, wait_for

TOP_SERIES = 6                    # charts.js: series charted by name, the rest summed
RLO, PDF = "\u202e", "\u202c"
VIOLATIONS = """window.__violations = [];
document.addEventListener('securitypolicyviolation', (e) => window.__violations.push(e.violatedDirective));"""


def api_path(request: Any) -> str:
    path = urlsplit(request.url).path
    return path if path.startswith("/api/") and path != "/api/usage-stream" else ""


@dataclass
class ManyModels:
    models: tuple[str, ...]
    tenant: str


@pytest.fixture
async def many_models(demo: DemoStack) -> AsyncIterator[ManyModels]:
    """Twelve models of one endpoint, each with a call of its own (a different number of tokens each)."""
    tag = uuid.uuid4().hex[:8]
    models = tuple(f"ui-many-{tag}-{i:02d}" for i in range(12))
    provider, endpoint, tenant = f"ui-mp-{tag}", f"ui-me-{tag}", f"ui-mt-{tag}"
    async with Simulator(SimConfig(models=models, tokens=3)) as sim:
        assert (await admin(demo, "POST", "/api/admin/providers",
                            {"provider_id": provider, "kind": "openai-compatible"})).status_code == 201
        for model in models:
            assert (await admin(demo, "POST", "/api/admin/models", {"model_id": model})).status_code == 201
        assert (await admin(demo, "POST", "/api/admin/endpoints", {"endpoint_id": endpoint, "provider_id": provider,
                                                                   "base_url": sim.url, "models": list(models)})).status_code == 201
        assert (await admin(demo, "POST", "/api/admin/tenants", {"tenant_id": tenant})).status_code == 201
        key = (await admin(demo, "POST", f"/api/admin/tenants/{tenant}/keys", {"name": "many"})).json()["key"]
        for model in models:
            await wait_for(lambda m=model: _ok(call(demo, key, m)), 10, what=f"a call to {model}")

        async def recorded() -> bool:
            counts = (await admin(demo, "GET", f"/api/token_counts?tenant_id={tenant}")).json()
            return len(counts["breakdown"]) == len(models)

        await wait_for(recorded, 20, what="every model's call in the usage log")
        try:
            yield ManyModels(models, tenant)
        finally:
            await admin(demo, "DELETE", f"/api/admin/endpoints/{endpoint}")


async def _ok(reply: Any) -> bool:
    return (await reply).status_code == 200


async def test_overview_asks_for_a_few_series_two_at_a_time_and_drops_them_when_left(
        browser: Any, screenshots: Path, demo: DemoStack, many_models: ManyModels) -> None:
    """With 400 models the Overview asked /api/stats 814 times before its first figures (one per model, every
    refresh, never cancelled): the browser's 6 connections were held, other pages queued behind them."""
    context, _ = await new_context(browser, demo.url)
    page = await context.new_page()
    open_now: set[Any] = set()
    peak = [0]
    stats: list[dict] = []

    def opened(request: Any) -> None:
        if api_path(request):
            open_now.add(request)
            peak[0] = max(peak[0], len(open_now))
        if api_path(request) == "/api/stats":
            stats.append(json.loads(request.post_data or "{}"))

    page.on("request", opened)
    page.on("requestfinished", lambda r: open_now.discard(r))
    page.on("requestfailed", lambda r: open_now.discard(r))
    await sign_in_with_keyboard(page, demo.admin_key)
    await page.wait_for_function("() => (document.querySelector('#usage-chart')?.dataset.groups || '')"
                                 ".endsWith('other models')", timeout=WAIT_MS)
    groups = (await page.get_attribute("#usage-chart", "data-groups") or "").split(",")
    assert len(groups) == TOP_SERIES + 1, "the busiest models by name, the rest as one series"
    assert "rest" in (await page.text_content("#usage-chart .chart-summary") or "")
    everyone = [body for body in stats if "model" not in body]
    assert everyone and len(stats) - len(everyone) <= TOP_SERIES * len(everyone)
    assert len(stats) < len(many_models.models), "not one request per model"
    assert peak[0] <= 2, f"{peak[0]} API requests open at once"
    await shoot(page, screenshots, "overview-many-models")

    # Metering stops answering mid-refresh: the page is left, and its requests with it.
    held: list[Any] = []
    dropped: list[Any] = []
    page.on("requestfailed", lambda r: dropped.append(r) if api_path(r) == "/api/stats" else None)
    await page.route("**/api/stats", lambda route: held.append(route))
    await page.click("[aria-label=Range] button[data-value=day]")
    await wait_for(lambda: held or None, 10, what="the refresh's requests, held")
    await page.click("a[data-page=tenants]")
    await page.wait_for_selector("#tenant-list", timeout=WAIT_MS)
    await wait_for(lambda: len(dropped) >= len(held) or None, 10, what="the left page's requests aborted")
    await page.unroute("**/api/stats")
    for route in held:
        with contextlib.suppress(Exception):           # aborted by the page already
            await route.continue_()
    await context.close()


async def test_a_page_whose_module_arrives_after_a_newer_navigation_is_not_drawn(browser: Any, demo: DemoStack) -> None:
    """`#/endpoints` then at once `#/overview`: endpoints.js, arriving last, drew the Endpoints under the Overview's
    hash and dropped the Overview's cleanup, so a hidden Overview went on asking for figures."""
    context, _ = await new_context(browser, demo.url)
    page = await context.new_page()
    stats: list[str] = []
    page.on("request", lambda r: stats.append(r.post_data or "") if api_path(r) == "/api/stats" else None)
    arrived: list[str] = []

    async def late(route: Any) -> None:
        await page.wait_for_timeout(600)               # a slow network
        await route.continue_()
        arrived.append(route.request.url)

    await page.route("**/ui/js/endpoints.js", late)
    await sign_in_with_keyboard(page, demo.admin_key)
    await page.wait_for_function("() => document.querySelector('#kpi-calls .value')?.textContent !== '–'",
                                 timeout=WAIT_MS)
    await page.evaluate("() => { location.hash = '#/endpoints'; }")
    await page.wait_for_function("() => document.title.startsWith('Endpoints')")     # its module on the way
    await page.evaluate("() => { location.hash = '#/overview'; }")
    await wait_for(lambda: arrived or None, 10, what="endpoints.js, late")
    await page.wait_for_timeout(300)                   # the module evaluated, had it been drawn
    assert await page.text_content("main h1") == "Overview"
    assert await page.query_selector("#endpoint-list") is None

    await page.click("a[data-page=tenants]")
    await page.wait_for_selector("#tenant-list", timeout=WAIT_MS)
    before = len(stats)
    for _ in range(2):
        assert (await call(demo, demo.demo_key)).status_code == 200
    await page.wait_for_timeout(3000)                  # an Overview still listening asks 1.2 s after the calls
    assert stats[before:] == [], "a page no longer shown asked for figures"
    await context.close()


async def test_sign_out_on_a_refused_key_takes_the_show_once_dialog_with_it(browser: Any, demo: DemoStack) -> None:
    tenant = f"ui-d-{uuid.uuid4().hex[:8]}"
    assert (await admin(demo, "POST", "/api/admin/tenants", {"tenant_id": tenant})).status_code == 201
    second = (await admin(demo, "POST", "/api/admin/tenants/admin/keys", {"name": "second", "role": "admin"})).json()
    context, _ = await new_context(browser, demo.url)
    page = await context.new_page()
    await page.goto(f"/ui#/tenants/{tenant}")
    await page.fill("#key", second["key"])
    await page.press("#key", "Enter")
    await page.wait_for_selector("#live[data-state='live']", timeout=WAIT_MS)
    await page.fill("#key-name", "issued just before sign-out")
    await page.click("#issue-key button[type=submit]")
    await page.wait_for_selector("dialog[open] #new-key")
    secret = await page.input_value("#new-key")

    assert (await admin(demo, "DELETE", f"/api/admin/keys/{second['key_id']}")).status_code == 200

    async def signed_out() -> bool:                    # the stream checks the key again at each push
        await call(demo, demo.demo_key)
        return await page.query_selector("#key") is not None

    await wait_for(signed_out, 30, interval_s=0.5, what="the console to sign out")
    assert await page.query_selector("dialog") is None
    assert secret not in await page.content()
    await context.close()


@pytest.mark.parametrize(("key", "shown"), [("sy_ключ", "“к” (U+043A)"), ("sy_\U0001F511", "“\U0001F511” (U+1F511)"),
                                            ("sy_abc\u2014def", "“\u2014” (U+2014)"), ("sy_a\u200bb", "U+200B")])
async def test_a_key_no_header_can_carry_is_named_as_such(browser: Any, demo: DemoStack, key: str, shown: str) -> None:
    """fetch() refuses such a header, and the console said that the gateway could not be reached."""
    context, requests = await new_context(browser, demo.url)
    page = await context.new_page()
    await page.goto("/ui")
    await page.fill("#key", key)
    await page.press("#key", "Enter")
    await page.wait_for_selector(".signin .error")
    message = await page.text_content(".signin .error") or ""
    assert shown in message and "a character no key has" in message and "cannot be reached" not in message
    assert requests.paths("/api/") == [] and await page.evaluate("sessionStorage.length") == 0
    await context.close()


async def test_upstream_text_is_isolated_and_wrapped_and_figures_read_plainly(
        browser: Any, screenshots: Path, demo: DemoStack) -> None:
    """A right-to-left override in an upstream's error reversed the console's own words after it; 5,000 characters
    without a space made an endpoint card 45,000 px wide; a budget read "$5.5e-7" and a month's reset "in 599 h"."""
    context, _ = await new_context(browser, demo.url)
    await context.add_init_script(VIOLATIONS)
    page = await context.new_page()
    answered = await page.goto("/ui")
    assert answered is not None and "unsafe-inline" not in answered.headers["content-security-policy"]
    assert answered.headers["x-frame-options"] == "DENY"
    error = f"HTTP 500 from /v1/models: {RLO}gnp.exe " + "E" * 450
    version = f"{RLO}1." + "9" * 97

    async def tested(route: Any) -> None:
        failed = "ollama-1" in route.request.url
        await route.fulfill(json={"success": not failed, "latency_ms": 2.0, "status": 500 if failed else 200,
                                  "models": [] if failed else ["llama3.2"], "error": error if failed else None,
                                  "version": "" if failed else version})

    await page.route("**/api/admin/endpoints/*/test", tested)
    await page.fill("#key", demo.admin_key)
    await page.press("#key", "Enter")
    await page.goto("/ui#/endpoints")
    for endpoint in ("ollama-1", "vllm-1"):
        await page.click(f"[data-endpoint='{endpoint}'] [data-action=test]")
        await page.wait_for_selector(f"[data-endpoint='{endpoint}'] .result bdi")
    for endpoint, text in (("ollama-1", error), ("vllm-1", version)):
        isolated = await page.eval_on_selector(f"[data-endpoint='{endpoint}'] .result", """r => ({
            bdi: r.querySelector('bdi').textContent, isolation: getComputedStyle(r.querySelector('bdi')).unicodeBidi,
            after: r.textContent.slice(r.textContent.indexOf(r.querySelector('bdi').textContent) +
                                       r.querySelector('bdi').textContent.length)})""")
        assert isolated == {"bdi": text, "isolation": "isolate", "after": "."}
    await shoot(page, screenshots, "endpoints-hostile-results")         # nothing scrolls sideways at either width

    # A long display name without a space, a limit reset weeks away, a budget well under a cent.
    tenant = f"ui-f-{uuid.uuid4().hex[:8]}"
    assert (await admin(demo, "POST", "/api/admin/tenants", {"tenant_id": tenant, "display_name": "Z" * 200})).status_code == 201
    assert (await admin(demo, "PUT", f"/api/admin/tenants/{tenant}/limits",
                        {"monthly_tokens": 1000, "budget_usd": 0.00000055, "budget_period": "month"})).status_code == 200
    await page.goto(f"/ui#/tenants/{tenant}")
    await page.wait_for_selector("#quotas tr[data-quota='budget']", timeout=WAIT_MS)
    assert "$0.00000055" in (await page.text_content("#quotas tr[data-quota='budget']") or "")
    assert "e-" not in (await page.text_content("#quotas") or "")
    quotas = (await admin(demo, "GET", f"/api/v1/tenant-models/quotas?tenant_id={tenant}")).json()["quotas"]
    monthly = next(q for q in quotas if q["quota_type"] == "monthly")
    resets = await page.text_content("#quotas tr[data-quota='monthly'] td:last-child") or ""
    hours = (datetime.fromisoformat(monthly["reset_time"].replace("Z", "+00:00")) - datetime.now(UTC)).total_seconds() / 3600
    assert re.fullmatch(r"in \d+ days" if hours > 49 else r"in \d+ (h|min)", resets), resets
    assert await page.eval_on_selector("#quotas .bar > span", "s => s.style.width") == "0%"
    await page.wait_for_selector(f"main h1:text('{tenant}')")
    await shoot(page, screenshots, "tenant-long-name")
    assert await page.evaluate("window.__violations") == [], "the page broke its own Content-Security-Policy"
    await context.close()


# the tenants page has drawn the gateway's answer for the filter `q`: its count names it, or nothing matched it
DRAWN_FOR = ("q => { const c = document.querySelector('#tenant-count');"
             " return c ? c.dataset.q === q : !!q && document.querySelector('main').textContent.includes('No tenant matches'); }")


async def test_many_tenants_are_paged_and_found_by_the_filter(browser: Any, demo: DemoStack) -> None:
    """Every tenant was one row of one table: a thousand of them were a page to scroll, and one tenant found only
    by the browser's own search. Now a hundred at a time, more on a click, and a filter over ids and names."""
    tag = uuid.uuid4().hex[:6]
    ids = [f"ui-pg-{tag}-{i:03d}" for i in range(120)]
    needle = f"ui-pg-{tag}-needle"
    bodies = [{"tenant_id": t, "display_name": f"Paged {i}"} for i, t in enumerate(ids)]
    bodies.append({"tenant_id": needle, "display_name": f"Needle Corp {tag}"})
    for start in range(0, len(bodies), 20):
        replies = await asyncio.gather(*(admin(demo, "POST", "/api/admin/tenants", b) for b in bodies[start:start + 20]))
        assert all(r.status_code == 201 for r in replies), [r.text for r in replies if r.status_code != 201]
    try:
        async def listed() -> bool:
            return needle in {t["tenant_id"] for t in (await admin(demo, "GET", "/api/admin/tenants")).json()}
        await wait_for(listed, 15, what="the new tenants listed")
        total = int((await admin(demo, "GET", "/api/admin/tenants")).headers["x-total-count"])
        context, _ = await new_context(browser, demo.url)
        page = await context.new_page()
        await sign_in_with_keyboard(page, demo.admin_key)
        await page.goto("/ui#/tenants")
        await page.wait_for_selector("#tenant-list")

        async def rows() -> list[str]:
            return await page.eval_on_selector_all("#tenant-list tbody tr", "rs => rs.map(r => r.dataset.tenant)")

        async def filtered(value: str) -> None:
            """Type into the filter and wait until the gateway's answer to it is drawn."""
            await page.fill("#tenant-filter", value)
            await page.wait_for_function(DRAWN_FOR, arg=value.strip(), timeout=WAIT_MS)
        assert len(await rows()) == min(100, total)
        assert (await page.text_content("#tenant-count") or "").startswith(f"{min(100, total):,} of {total:,} tenants")

        await filtered(tag)
        first = await rows()
        assert len(first) == 100 and set(first) <= set(ids) | {needle}
        assert (await page.text_content("#tenant-more") or "").strip() == "Show 21 more"
        await page.click("#tenant-more")
        await page.wait_for_function("() => document.querySelectorAll('#tenant-list tbody tr').length === 121")
        assert set(await rows()) == set(ids) | {needle} and await page.query_selector("#tenant-more") is None

        await filtered(f"NEEDLE corp {tag}")        # a display name, any case
        assert await rows() == [needle]
        await filtered(f"{tag}-none")
        assert await page.query_selector("#tenant-list") is None
        assert "No tenant matches" in (await page.text_content("main") or "")
        await filtered("")
        assert len(await rows()) == min(100, total)
        await context.close()
    finally:
        for start in range(0, len(bodies), 20):
            await asyncio.gather(*(admin(demo, "DELETE", f"/api/admin/tenants/{b['tenant_id']}")
                                   for b in bodies[start:start + 20]))
