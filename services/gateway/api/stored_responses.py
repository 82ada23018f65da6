"""Kept Responses read back and deleted, as OpenAI serves its stored ones: `GET /v1/responses/{id}`,
`DELETE /v1/responses/{id}` and `GET /v1/responses/{id}/input_items`, over what pipeline/stored_items.py keeps.

Each takes any key, as the Responses door does, and sees only its own tenant's Responses: another tenant's id, one
answered with `store: false`, deleted, past `SWITCHYARD_RESPONSES_STORE_TTL_S` or never written by the door (not of
its `resp_<hex>` form: no lookup) is a 404 alike, in OpenAI's error shape; with the TTL 0, every id is. A Response is
answered as it was (its `store: true` too); a stream of it (`stream=true`, which OpenAI serves for background
responses) is a 400: nothing runs in the background here. `input_items` lists the items the Response was made from
(the items of the Responses it continued, oldest first, then its own input; each with an id), a page at a time as
OpenAI pages them: `limit` 1-100 (20), `order` `desc` (newest first, the default) or `asc`, `after` or `before` an
item's id; a value out of those is a 400 naming it. Deleting a Response deletes its output items too; a Response
that continued it can then no longer be continued or listed (its conversation has lost a turn), and says so.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response, delete, get
from litestar.params import FromPath

from switchyard_gateway.services.gateway.edge.errors import BadRequest, GatewayError
from switchyard_gateway.services.gateway.pipeline.stored_names import ITEM_ID, RESPONSE_ID, unkept
from switchyard_gateway.services.gateway.translate.responses_wire import ResponseDeleted

if TYPE_CHECKING:
    from switchyard_gateway.services.gateway.pipeline.stored_items import StoredItems

Req = Request[Any, Any, Any]
LIMIT = re.compile(r"[0-9]{1,3}")
MAX_LIMIT = 100
DEFAULT_LIMIT = 20
_encode = msgspec.json.Encoder().encode


class _Identified(msgspec.Struct):
    id: str | None = None


_item_id = msgspec.json.Decoder(_Identified).decode


class ResponseNotFound(GatewayError):
    """404: no Response of that id is kept for the caller's tenant (whoever else may have one), or (`lost`) one of
    the Responses it continued is not, and the items it was made from cannot be listed."""

    status, kind, code = 404, "invalid_request_error", "not_found"

    def __init__(self, response_id: str, lost: str | None = None, why: str | None = None) -> None:
        what = "Input items" if lost is not None and lost != response_id else "Response"
        super().__init__(f"{what} not found: {why or unkept(response_id, lost)}", param="response_id")


def _kept(request: Req, response_id: str) -> tuple[StoredItems, str]:
    """The keeper and the caller's tenant, for an id the door could have written; 404 otherwise (no lookup)."""
    deps = request.app.state.deps
    key = deps.auth.authenticate(request.headers, anonymous=True)
    items = deps.proxy.items
    if items is None:
        raise ResponseNotFound(response_id, why="this gateway keeps no responses (SWITCHYARD_RESPONSES_STORE_TTL_S "
                                                "is 0)")
    if not RESPONSE_ID.fullmatch(response_id):
        raise ResponseNotFound(response_id)
    return items, key.tenant_id


def _json(data: bytes) -> Response[bytes]:
    return Response(data, media_type="application/json")


@get("/v1/responses/{response_id:str}")
async def retrieve_response(request: Req, response_id: FromPath[str]) -> Response[bytes]:
    """A kept Response, as it was answered (OpenAI's `responses.retrieve`)."""
    items, tenant_id = _kept(request, response_id)
    stream = request.query_params.get("stream")
    if stream not in (None, "false", "true"):
        raise BadRequest("Invalid 'stream': true or false", param="stream", code="invalid_value")
    if stream == "true":
        raise BadRequest("Invalid 'stream': a kept Response is read whole here; streaming one is for background "
                         "responses, which this gateway does not run", param="stream", code="unsupported_parameter")
    answered = await items.response(tenant_id, response_id)
    if answered is None:
        raise ResponseNotFound(response_id)
    return _json(answered)


@delete("/v1/responses/{response_id:str}", status_code=200)
async def delete_response(request: Req, response_id: FromPath[str]) -> Response[bytes]:
    """Delete a kept Response and its output items (OpenAI's `responses.delete`)."""
    items, tenant_id = _kept(request, response_id)
    if not await items.delete(tenant_id, response_id):
        raise ResponseNotFound(response_id)
    return _json(_encode(ResponseDeleted(response_id)))


@get("/v1/responses/{response_id:str}/input_items")
async def list_input_items(request: Req, response_id: FromPath[str]) -> Response[bytes]:
    """The items a kept Response was made from, a page at a time (OpenAI's `responses.input_items.list`)."""
    items, tenant_id = _kept(request, response_id)
    limit, order, after, before = page_asked(request.query_params)
    listed, lost = await items.input_items(tenant_id, response_id)
    if listed is None:
        raise ResponseNotFound(response_id, lost)
    return _json(page(listed, limit, order, after, before))


def page_asked(params: Any, takes_before: bool = True) -> tuple[int, str, str | None, str | None]:
    """`limit`, `order`, `after` and (where a list takes it) `before` as OpenAI takes them; a 400 naming the first
    one out of its range."""
    limit = params.get("limit", str(DEFAULT_LIMIT))
    if not LIMIT.fullmatch(limit) or not 1 <= int(limit) <= MAX_LIMIT:
        raise BadRequest(f"Invalid 'limit': an integer from 1 to {MAX_LIMIT}", param="limit", code="invalid_value")
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequest("Invalid 'order': 'asc' or 'desc'", param="order", code="invalid_value")
    after, before = params.get("after"), params.get("before") if takes_before else None
    for name, value in (("after", after), ("before", before)):
        if value is not None and not ITEM_ID.fullmatch(value):
            raise BadRequest(f"Invalid '{name}': an item's id, as the list gives them", param=name,
                             code="invalid_value")
    if after is not None and before is not None:
        raise BadRequest("Invalid 'before': give 'after' or 'before', not both", param="before", code="invalid_value")
    return int(limit), order, after, before


def page(items: list[msgspec.Raw], limit: int, order: str, after: str | None, before: str | None) -> bytes:
    """OpenAI's list object of `limit` of the items (oldest first) in `order`: the first ones, those right after the
    item `after`, or those right before the item `before` (a 400 naming the parameter when no item has that id)."""
    listed = [(_item_id(raw).id, raw) for raw in items]
    if order == "desc":
        listed.reverse()
    if after is not None:
        start = _position(listed, "after", after) + 1
        shown, more = listed[start:start + limit], start + limit < len(listed)
    elif before is not None:
        end = _position(listed, "before", before)
        shown, more = listed[max(0, end - limit):end], end > limit
    else:
        shown, more = listed[:limit], limit < len(listed)
    return _encode({"object": "list", "data": [raw for _, raw in shown],
                    "first_id": shown[0][0] if shown else None, "last_id": shown[-1][0] if shown else None,
                    "has_more": more})


def _position(listed: list[tuple[str | None, msgspec.Raw]], name: str, item_id: str) -> int:
    at = next((number for number, (listed_id, _) in enumerate(listed) if listed_id == item_id), None)
    if at is None:
        raise BadRequest(f"Invalid '{name}': no item '{item_id}' among this response's input items", param=name,
                         code="invalid_value")
    return at


STORED_RESPONSE_ROUTES = [retrieve_response, delete_response, list_input_items]
