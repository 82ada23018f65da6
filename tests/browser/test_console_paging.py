"""The console's tenants page over thousands of tenants: a hundred at a time from the gateway, more on a click, and
found by a filter the gateway applies (the page once fetched every tenant, and with 7,000 the list answered 500)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from switchyard_gateway.kit.stack import StackUrls
from tests.browser.conftest import new_context, shoot
from tests.browser.test_console import WAIT_MS, sign_in_with_keyboard
from tests.browser.test_console_hostile import DRAWN_FOR
from tests.e2e.test_admin_paging import Bulk, private_up, tenants

COUNT = 3000


@pytest.fixture(scope="module")
async def thousands(urls: StackUrls) -> AsyncIterator[Bulk]:
    async with private_up(urls, "console_paging") as running:
        imported = await running.call("POST", "/api/admin/registry/import", json=tenants(COUNT))
        assert imported.status_code == 200, imported.text
        yield running


async def test_thousands_of_tenants_show_a_page_at_a_time_and_are_found_by_the_gateway(
        browser: Any, thousands: Bulk, screenshots) -> None:
    total = COUNT + 1                                   # and the operators' tenant
    context, recorded = await new_context(browser, thousands.url)
    page = await context.new_page()
    await sign_in_with_keyboard(page, thousands.admin_key)
    await page.goto("/ui#/tenants")
    await page.wait_for_selector("#tenant-list", timeout=WAIT_MS)

    async def rows() -> list[str]:
        return await page.eval_on_selector_all("#tenant-list tbody tr", "rs => rs.map(r => r.dataset.tenant)")

    async def filtered(value: str) -> None:
        await page.fill("#tenant-filter", value)
        await page.wait_for_function(DRAWN_FOR, arg=value, timeout=WAIT_MS)

    assert await rows() == ["admin", *(f"bt{i:05d}" for i in range(99))]
    assert (await page.text_content("#tenant-count") or "").startswith(f"100 of {total:,} tenants")
    await page.click("#tenant-more")
    await page.wait_for_function("() => document.querySelectorAll('#tenant-list tbody tr').length === 200")
    assert (await rows())[100:] == [f"bt{i:05d}" for i in range(99, 199)]

    await filtered("bulk tenant 2999")                  # a display name, found by the gateway
    assert await rows() == ["bt02999"]
    assert (await page.text_content("#tenant-count") or "").startswith(f"1 of 1 matching ({total:,} tenants)")
    await filtered("bt0150")
    assert await rows() == [f"bt0150{i}" for i in range(10)]
    await shoot(page, screenshots, "tenants-thousands-filtered")

    asked = [u for u in recorded.urls if "/api/admin/tenants" in u]
    assert asked and all("limit=100" in u for u in asked), "no request asked for every tenant"
    await context.close()
