"""The web console's routes: the page at `/ui`, its files under `/ui/` from inside the package, `/dashboard` pointing there.

The console is plain HTML, CSS and JavaScript (with uPlot vendored for charts) that reads the admin and
monitoring APIs from the browser with the key the user signs in with; the server side only hands out
files. Each file is read once and kept with its ETag until its modification time changes, so a
reinstall or an edit is served without a restart. The Content-Security-Policy lets the page talk to its
own origin only: nothing it loads or sends leaves the gateway, and no inline script or style runs (the page
sets what it styles from script through the CSSOM); no other page may frame it or share its window.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litestar import Request, Response, get
from litestar.params import FromPath
from litestar.response import Redirect

STATIC = Path(__file__).resolve().parent / "static"
INDEX = "index.html"
MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
               ".txt": "text/plain", ".png": "image/png"}       # Litestar adds "; charset=utf-8" to text types
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
                               "style-src 'self'; script-src 'self'; object-src 'none'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",            # frame-ancestors for browsers that read only this
    "cross-origin-opener-policy": "same-origin",     # a page that opened this one gets no handle on it
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",          # revalidate with the ETag: an upgrade is seen at the next load
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    etag: str
    media_type: str
    mtime_ns: int


_assets: dict[Path, Asset] = {}


def find_asset(name: str, folder: Path = STATIC) -> Asset | None:
    """The file `name` under a static folder (never outside it), read or taken from the cache."""
    try:
        path = (folder / (name or INDEX)).resolve()
        if not path.is_relative_to(folder) or path.suffix not in MEDIA_TYPES:
            return None
        mtime_ns = path.stat().st_mtime_ns
    except (OSError, ValueError):           # ValueError: a NUL in the name (`/ui/js/app.js%00`)
        return None
    cached = _assets.get(path)
    if cached is None or cached.mtime_ns != mtime_ns:
        body = path.read_bytes()
        cached = Asset(body, '"' + hashlib.sha256(body).hexdigest()[:20] + '"', MEDIA_TYPES[path.suffix], mtime_ns)
        _assets[path] = cached
    return cached


def serve_file(request: Request[Any, Any, Any], name: str, folder: Path = STATIC,
               security: dict[str, str] = SECURITY_HEADERS) -> Response[bytes]:
    """A static file with its ETag (304 when the client has it), or 404."""
    asset = find_asset(name, folder)
    if asset is None:
        return Response(b'{"error": "Not found"}', status_code=404, media_type="application/json")
    headers = {**security, "etag": asset.etag}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(b"", status_code=304, headers=headers)
    return Response(asset.body, headers=headers, media_type=asset.media_type)


@get("/dashboard", include_in_schema=False)
async def to_console() -> Redirect:
    return Redirect(path="/ui", status_code=308)


@get("/ui", include_in_schema=False)
async def console_page(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The page, at `/ui` and `/ui/`."""
    return serve_file(request, INDEX)


@get("/ui/{name:path}", include_in_schema=False)
async def console_file(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[bytes]:
    """The page's files under `/ui/`."""
    return serve_file(request, name.lstrip("/"))


CONSOLE_ROUTES = [to_console, console_page, console_file]
