"""Browser fixtures: the distribution's Chromium driven by Playwright for Python, every request recorded.

No browser is downloaded: Playwright launches the system Chromium (`/usr/bin/chromium`, Debian's package;
another path with SWITCHYARD_CHROMIUM). Without it, or without the `playwright` package, the browser tests
skip and say why. Screenshots go to SWITCHYARD_SCREENSHOTS, by default
`<system temp dir>/switchyard-browser-tests/screenshots`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
WIDTHS = (1280, 390)


def find_chromium() -> str | None:
    candidates = [os.environ.get("SWITCHYARD_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                  shutil.which("chromium-browser")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip("no Chromium found (/usr/bin/chromium): install Debian's package `chromium` "
                    "(.ci/run does) or set SWITCHYARD_CHROMIUM")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        pytest.skip("the `playwright` package is not installed: pip install -e '.[test]'")
    return path


@pytest.fixture(scope="session")
def screenshots() -> Path:
    folder = Path(os.environ.get("SWITCHYARD_SCREENSHOTS")
                  or Path(tempfile.gettempdir()) / "switchyard-browser-tests" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
async def browser(chromium_path: str) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        running = await playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            yield running
        finally:
            await running.close()


class Recorder:
    """Every request a browser context made, to check that none left the machine."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def __call__(self, request: Any) -> None:
        self.urls.append(request.url)

    def foreign(self) -> list[str]:
        """Requests to anything but a loopback host (data: and blob: URLs stay in the page)."""
        out = []
        for url in self.urls:
            parts = urlsplit(url)
            if parts.scheme in ("data", "blob", "about"):
                continue
            if parts.hostname not in LOOPBACK:
                out.append(url)
        return out

    def paths(self, prefix: str) -> list[str]:
        return [urlsplit(u).path for u in self.urls if urlsplit(u).path.startswith(prefix)]


async def new_context(browser: Any, base_url: str) -> tuple[Any, Recorder]:
    context = await browser.new_context(base_url=base_url, viewport={"width": WIDTHS[0], "height": 900})
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base_url)
    recorder = Recorder()
    context.on("request", recorder)
    return context, recorder


async def shoot(page: Any, folder: Path, name: str) -> list[Path]:
    """A full-page screenshot at each width; at the narrow one nothing may scroll sideways."""
    taken = []
    for width in WIDTHS:
        await page.set_viewport_size({"width": width, "height": 900})
        await page.evaluate("window.scrollTo(0, 0)")
        await page.wait_for_timeout(150)           # one layout and the chart's resize
        overflow = await page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{name} scrolls sideways by {overflow} px at {width} px wide"
        path = folder / f"{name}-{width}.png"
        await page.screenshot(path=str(path), full_page=True)
        taken.append(path)
    await page.set_viewport_size({"width": WIDTHS[0], "height": 900})
    return taken
