"""The console's routes hand out the package's own files, nothing outside them, under a policy that keeps the page
on its own origin; every file and module the page loads is in the package and in the wheel's package data."""

from __future__ import annotations

import fnmatch
import re
import tomllib

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from switchyard_gateway.services.gateway.console.routes import CONSOLE_ROUTES, STATIC, find_asset

from tests.conftest import REPO


@pytest.fixture(scope="module")
def client():
    with TestClient(Litestar(route_handlers=CONSOLE_ROUTES)) as test_client:
        yield test_client


def test_page_is_served_at_ui_with_a_same_origin_policy(client) -> None:
    for path in ("/ui", "/ui/", "/ui/index.html"):
        reply = client.get(path)
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
        policy = reply.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert "style-src 'self';" in policy and "unsafe-inline" not in policy      # no inline style or script
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert reply.headers["x-frame-options"] == "DENY"
        assert reply.headers["cross-origin-opener-policy"] == "same-origin"
    assert client.get("/ui/js/app.js").headers["content-type"].startswith("text/javascript")


def test_dashboard_points_at_the_console_and_root_is_left_alone(client) -> None:
    reply = client.get("/dashboard", follow_redirects=False)
    assert reply.status_code == 308 and reply.headers["location"] == "/ui"
    assert client.get("/", follow_redirects=False).status_code == 404


def test_unchanged_file_revalidates_with_its_etag(client) -> None:
    first = client.get("/ui/console.css")
    assert first.headers["cache-control"] == "no-cache"
    again = client.get("/ui/console.css", headers={"if-none-match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


@pytest.mark.parametrize("path", ["/ui/%2e%2e/routes.py", "/ui/..%2f__init__.py", "/ui/nope.js",
                                  "/ui/js", "/ui/vendor/uPlot.LICENSE", "/ui/%2fetc%2fpasswd", "/ui/js/app.js%00",
                                  "/ui/%00"])
def test_nothing_outside_the_static_files_is_served(client, path: str) -> None:
    reply = client.get(path)
    assert reply.status_code == 404 and reply.json() == {"error": "Not found"}


def test_a_nul_in_the_name_is_no_file_and_no_error() -> None:
    """A NUL made the path lookup raise ValueError: a 500 with a traceback in the log on every such request."""
    assert find_asset("js/app.js\x00") is None and find_asset("\x00") is None


def test_every_file_the_page_loads_exists_and_is_package_data() -> None:
    index = (STATIC / "index.html").read_text()
    loaded = set(re.findall(r'(?:src|href)="/ui/([^"]+)"', index))
    for module in STATIC.glob("js/*.js"):
        loaded |= {f"js/{name}" for name in re.findall(r'from "\./([\w.]+)"|import\("\./([\w.]+)"\)', module.read_text())
                   for name in name if name}
    assert {"js/app.js", "js/overview.js", "js/tenants.js", "vendor/uPlot.iife.min.js"} <= loaded
    missing = [name for name in loaded if not (STATIC / name).is_file()]
    assert missing == []

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    package = "switchyard_gateway.services.gateway.console"
    assert package in config["packages"]
    patterns = config["package-data"][package]
    files = [p.relative_to(STATIC.parent).as_posix() for p in STATIC.rglob("*") if p.is_file()]
    unshipped = [f for f in files if not any(fnmatch.fnmatch(f, pattern) and f.count("/") == pattern.count("/")
                                             for pattern in patterns)]
    assert unshipped == [], "files a wheel would leave out"
    assert (STATIC / "vendor" / "uPlot-LICENSE.txt").read_text().startswith("The MIT License")


def test_no_asset_names_another_host() -> None:
    """The page's own code fetches paths on its origin only (the browser test records every request as well)."""
    for path in [*STATIC.glob("js/*.js"), STATIC / "index.html", STATIC / "console.css"]:
        text = path.read_text()
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), f"{path.name} names a host"
