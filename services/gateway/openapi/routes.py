"""`GET /openapi.json` (the gateway's OpenAPI 3.1 document) and `GET /docs`, an API reference served from the package.

The document is built on first request from the routes the running gateway serves and kept. The
reference page is Swagger UI (npm `swagger-ui-dist`, Apache-2.0, vendored under `static/vendor/` with its
license), started by our own `docs.js`; its Content-Security-Policy keeps it on the gateway's origin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from litestar import Request, Response, get
from litestar.params import FromPath

from switchyard_gateway.services.gateway.console.routes import SECURITY_HEADERS, serve_file
from switchyard_gateway.services.gateway.api.common import AppDeps
from switchyard_gateway.services.gateway.openapi.document import build

STATIC = Path(__file__).resolve().parent / "static"
DOCS_SECURITY = SECURITY_HEADERS          # the console's: same origin only, no framing
_encode = msgspec.json.Encoder().encode


@get("/openapi.json", sync_to_thread=False)
def openapi_document(request: Request[Any, Any, Any], deps: AppDeps) -> Response[bytes]:
    """The OpenAPI 3.1 document of every route this gateway serves."""
    state = request.app.state
    document = state.get("openapi_document")
    if document is None:
        document = _encode(build(request.app, deps.proxy.routes, anonymous=bool(deps.settings.anonymous_tenant)))
        state.openapi_document = document
    return Response(document, media_type="application/json")


@get("/docs", sync_to_thread=False)
def docs_page(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The API reference (Swagger UI over /openapi.json)."""
    return serve_file(request, "docs.html", STATIC, DOCS_SECURITY)


@get("/docs/{name:path}", sync_to_thread=False, include_in_schema=False)
def docs_file(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[bytes]:
    return serve_file(request, name.lstrip("/"), STATIC, DOCS_SECURITY)


DOCS_ROUTES = [openapi_document, docs_page, docs_file]
