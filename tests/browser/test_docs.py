"""The API reference at /docs in the distribution's Chromium: Swagger UI draws every operation of the gateway's
own /openapi.json, with nothing loaded from off the machine and nothing the page's policy refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.browser.conftest import new_context
from tests.conftest import DemoStack


async def test_docs_page_draws_every_operation_from_the_gateway_alone(browser: Any, screenshots: Path,
                                                                       demo: DemoStack) -> None:
    context, requests = await new_context(browser, demo.url)
    page = await context.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    try:
        await page.goto("/docs")
        await page.wait_for_selector(".opblock", timeout=30_000)
        documented = sum(len(methods) for methods in (await (await context.request.get("/openapi.json")).json())
                         ["paths"].values())
        assert await page.locator(".opblock").count() == documented
        for tag in ("OpenAI", "Anthropic", "Ollama", "Monitoring", "Admin"):
            assert await page.locator(f"h3.opblock-tag >> text={tag}").count() == 1, tag
        await page.screenshot(path=str(screenshots / "docs-1280.png"))
    finally:
        await context.close()
    assert problems == [], problems
    assert requests.foreign() == [], "the reference made requests off this machine"
    assert set(requests.paths("/")) <= {"/docs", "/docs/docs.js", "/docs/vendor/swagger-ui-bundle.js",
                                        "/docs/vendor/swagger-ui.css", "/openapi.json"}
