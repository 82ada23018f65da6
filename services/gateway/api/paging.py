"""The admin API's lists, a page at a time: `limit`, `after` and `q` read and checked, the registry's page answered
as a JSON array with the way to the next page in headers.

A list answer is one NATS message from the registry, so no list is answered whole: a page holds at most `limit`
items (`DEFAULT_LIMIT` when not given, `MAX_LIMIT` at most) in id order, and fewer when more would not fit one
message. The body stays the JSON array the admin API always answered (a client that knows nothing of paging gets
the first page); the headers say whether more follow and how to ask for them:

    X-Has-More: true
    X-Next-After: bt00499            the last id of this page, percent-encoded: send it back as `after`
    X-Total-Count: 7002              how many items match (with `q`: those that match it)
    Link: </api/admin/tenants?limit=500&after=bt00499>; rel="next"
"""

from __future__ import annotations

import unicodedata
from typing import Any
from urllib.parse import quote, urlencode

import msgspec
from litestar import Response

from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.services.gateway.api.common import Req, ask
from switchyard_gateway.services.gateway.deps import Deps

DEFAULT_LIMIT = 500         # items of a page asked without `limit`
MAX_LIMIT = 1000            # the most a page may be asked for; the registry also stops at one NATS message
MAX_AFTER_CHARS = 1024      # longer than any id (a model id is at most 512 characters)
MAX_Q_CHARS = 200           # as long as a display name
_page = msgspec.json.Decoder(m.RegistryPage)


def _refused(field: str, message: str) -> ServiceError:
    return ServiceError(400, m.ErrorBody("VALIDATION_ERROR", f"{field}: {message}", field))


def _one(request: Req, name: str) -> str | None:
    """A query parameter given at most once (twice is a 400: which one was meant cannot be known)."""
    values = request.query_params.getall(name, [])
    if len(values) > 1:
        raise _refused(name, "give it once")
    return values[0] if values else None


def _text(request: Req, name: str, max_chars: int) -> str | None:
    value = _one(request, name)
    if not value:
        return None
    if len(value) > max_chars:
        raise _refused(name, f"at most {max_chars} characters")
    hidden = next((ch for ch in value if unicodedata.category(ch).startswith("C")), None)
    if hidden is not None:
        raise _refused(name, f"no id or name holds the control or format character U+{ord(hidden):04X}")
    return value


def read_limit(request: Req) -> int:
    """`limit`: a whole number from 1 to MAX_LIMIT; DEFAULT_LIMIT when not given."""
    raw = _one(request, "limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 7) or not 1 <= int(raw) <= MAX_LIMIT:
        raise _refused("limit", f"a whole number from 1 to {MAX_LIMIT} (the items of one page), not {raw[:40]!r}")
    return int(raw)


def list_query(request: Req, resource: m.Resource, tenant_id: str | None = None) -> m.RegistryQuery:
    """The registry query for one page of a list, from the request's `limit`, `after` and `q`."""
    return m.RegistryQuery(resource, tenant_id=tenant_id, limit=read_limit(request),
                           after=_text(request, "after", MAX_AFTER_CHARS), q=_text(request, "q", MAX_Q_CHARS))


def page_response(request: Req, query: m.RegistryQuery, page: m.RegistryPage) -> Response[bytes]:
    """The page's items as a JSON array; `X-Has-More`, `X-Total-Count`, and for a page with more after it
    `X-Next-After` and a `Link` to the next page (the same query, `after` its last id)."""
    headers = {"x-has-more": "true" if page.has_more else "false", "x-total-count": str(page.total)}
    if page.has_more and page.next_after is not None:
        headers["x-next-after"] = quote(page.next_after, safe="")
        params: dict[str, Any] = {"limit": query.limit, "after": page.next_after}
        if query.q:
            params["q"] = query.q
        kept = {k: v for k, v in request.query_params.items() if k not in ("limit", "after", "q")}
        path = request.scope["raw_path"].decode()
        headers["link"] = f'<{path}?{urlencode({**kept, **params}, quote_via=quote)}>; rel="next"'
    return Response(encode(page.items), media_type="application/json", headers=headers)


async def list_page(request: Req, deps: Deps, resource: m.Resource, tenant_id: str | None = None) \
        -> Response[bytes]:
    """One page of a registry list, asked of the registry."""
    query = list_query(request, resource, tenant_id)
    page = _page.decode(await ask(deps, subjects.REGISTRY_QUERY, query))
    return page_response(request, query, page)
