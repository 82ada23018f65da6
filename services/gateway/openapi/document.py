"""The gateway's OpenAPI 3.1 document, generated from the routes it serves and the msgspec types they speak.

Routes are found, never listed by hand: every Litestar route (admin, monitoring, Ollama listings, the
console, and whatever is added later) and every inference route the RSGI hot path serves. Request and
answer schemas come from `operations.OPERATIONS` (msgspec JSON Schema, which is JSON Schema 2020-12, the
dialect OpenAPI 3.1 uses); each operation's `default` answer is its door's error shape, so a client or a
fuzzer can check every error body too.
"""

from __future__ import annotations

import copy
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import msgspec
from litestar import Litestar
from litestar.routes import HTTPRoute

from switchyard_gateway.services.gateway.edge.errors import shape_for
from switchyard_gateway.services.gateway.openapi.operations import ERRORS, OPERATIONS, SPLIT, Operation

REF = "#/components/schemas/{name}"
SSE = "text/event-stream"
SECURED = [{"bearerAuth": []}, {"apiKeyHeader": []}]
TAG_ORDER = ("OpenAI", "Anthropic", "Ollama", "Monitoring", "Admin", "Documentation")
_TAGS = (("/v1/messages", "Anthropic"), ("/v1/", "OpenAI"), ("/api/admin/", "Admin"),
         ("/openapi.json", "Documentation"), ("/docs", "Documentation"))


def _version() -> str:
    try:
        return version("switchyard-gateway")
    except PackageNotFoundError:
        return "0"


def _tag(path: str) -> str:
    for prefix, tag in _TAGS:
        if path.startswith(prefix):
            return tag
    return "Ollama" if shape_for(path) == "ollama" else "Monitoring"


@dataclass(frozen=True)
class Found:
    """What a served route's handler declares: its docstring, path parameters, media type, the body it reads
    (`data`) and the answer it returns when they are typed, and its status."""

    doc: str = ""
    params: tuple[str, ...] = ()
    media_type: str = "application/json"
    request: Any = None
    response: Any = None
    status: int = 200


def routes(app: Litestar, inference_paths: Iterable[str]) -> dict[tuple[str, str], Found]:
    """(method, path) -> what its handler declares, for every route served."""
    found: dict[tuple[str, str], Found] = {}
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if handler.include_in_schema is False:
                continue
            for method in sorted(handler.http_methods - {"OPTIONS"}):
                declared = getattr(handler.media_type, "value", handler.media_type) or "application/json"
                signature = handler.parsed_fn_signature
                data = signature.parameters.get("data")
                found[(method, route.path_format)] = Found(
                    (handler.fn.__doc__ or "").strip(), tuple(route.path_parameters),
                    str(declared).split(";", 1)[0].strip(), _typed(data.annotation if data else None),
                    _typed(signature.return_type.annotation), handler.status_code or 200)
    for key, spelled in SPLIT.items():
        if (split := found.pop(key, None)) is not None:
            found.update({(method, path): Found(split.doc, tuple(re.findall(r"{(\w+)}", path)), split.media_type)
                          for method, path in spelled})
    for path in inference_paths:
        found.setdefault(("POST", path), Found())
    return dict(sorted(found.items(), key=lambda item: (item[0][1], item[0][0])))


def _typed(annotation: Any) -> Any:
    """The msgspec Struct an annotation names (`X`, `X | None`, `Response[bytes] | X`), else None."""
    arms = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else (annotation,)
    structs = [arm for arm in arms if isinstance(arm, type) and issubclass(arm, msgspec.Struct)]
    return structs[0] if len(structs) == 1 else None


def build(app: Litestar, inference_paths: Iterable[str], *, anonymous: bool = False) -> dict[str, Any]:
    """The whole document. `anonymous`: calls to the doors may come without a key (an anonymous tenant is set)."""
    found = routes(app, inference_paths)
    ops = {key: OPERATIONS.get(key) or _generic(route) for key, route in found.items()}
    types = sorted({t for op in ops.values() for t in (op.request, op.response, *_each(op.events))
                    if t not in (None, str)} | set(ERRORS.values()), key=repr)
    schemas, components = msgspec.json.schema_components(types, ref_template=REF)
    by_type = dict(zip(types, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for (method, path), route in found.items():
        paths.setdefault(path, {})[method.lower()] = _operation(method, path, list(route.params), ops[(method, path)],
                                                                by_type, components, anonymous)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Switchyard", "version": _version(),
                 "description": "An AI model gateway: the OpenAI, Anthropic and Ollama APIs in front of many model "
                                "servers, with admin and monitoring routes. Errors come in each door's own shape."},
        "tags": [{"name": name} for name in TAG_ORDER],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "A Switchyard key or JWT"},
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


def _each(types: Any) -> tuple[Any, ...]:
    return types if isinstance(types, tuple) else (types,)


def _generic(route: Found) -> Operation:
    """A route the table does not name: its docstring's first line, the body and answer its handler's types
    declare, or any answer of its declared media type."""
    json = route.media_type == "application/json"
    return Operation(route.doc.splitlines()[0] if route.doc else "", route.request,
                     route.response if json else str, route.status, content_type=route.media_type)


def _operation(method: str, path: str, params: list[str], op: Operation, by_type: dict[Any, Any],
               components: dict[str, Any], anonymous: bool) -> dict[str, Any]:
    request_id = {"x-request-id": {"description": "The request's id (the client's own when it sent one)",
                                   "schema": {"type": "string"}}}
    answer: dict[str, Any] = {"description": op.summary or "The answer", "headers": request_id}
    if method != "HEAD" and op.status != 101:          # 101: the connection becomes a WebSocket, no body
        answer["content"] = {}
        for content_type in filter(None, (op.content_type, op.streams)):
            if content_type == SSE:
                kinds = [by_type[t] for t in _each(op.events)]
                schema = _event(kinds[0] if len(kinds) == 1 else {"anyOf": kinds}) if kinds else {"type": "string"}
            elif content_type in ("application/json", "application/yaml"):
                schema = by_type.get(op.response, {})
            else:
                schema = {"type": "string"}
            answer["content"][content_type] = {"schema": schema}
    shape = shape_for(path)
    out: dict[str, Any] = {
        "operationId": f"{method.lower()}_{re.sub(r'[^A-Za-z0-9]+', '_', path).strip('_') or 'root'}",
        "summary": op.summary, "tags": [_tag(path)],
        "responses": {
            **{str(status): answer for status in (op.status, *op.also)},
            "default": {"description": f"An error, in the {shape} shape", "headers": request_id,
                        "content": {"application/json": {"schema": by_type[ERRORS[shape]]}}},
        },
    }
    parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
                  for name in params]
    for name, kind in op.query.items():
        parameters.append({"name": name, "in": "query", "required": False,
                           "schema": msgspec.json.schema(kind)})
    if parameters:
        out["parameters"] = parameters
    if op.request is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": _body(op, by_type, components, params)}}}
    if op.auth != "none":
        out["security"] = [*SECURED, {}] if op.auth == "door" and anonymous else SECURED
    return out


def _event(data: dict[str, Any]) -> dict[str, Any]:
    """One server-sent event whose `data` is JSON of the given schema, or the `[DONE]` that ends an OpenAI stream."""
    return {"type": "object", "required": ["data"], "properties": {
        "event": {"type": "string"}, "id": {"type": "string"}, "retry": {"type": "integer"},
        "data": {"anyOf": [{"const": "[DONE]"},
                           {"type": "string", "contentMediaType": "application/json", "contentSchema": data}]},
    }}


def _body(op: Operation, by_type: dict[Any, Any], components: dict[str, Any], params: list[str]) -> dict[str, Any]:
    """A request body's schema: the type's own, without what the route fills itself (path parameters, the
    command's tag and mode)."""
    schema = by_type[op.request]
    ref = schema.get("$ref", "")
    if not ref:
        return schema
    own = copy.deepcopy(components[ref.rsplit("/", 1)[1]])
    drop = {*op.drop, *params, "command"}
    if not drop & set(own.get("properties", {})):
        return schema
    own["properties"] = {k: v for k, v in own.get("properties", {}).items() if k not in drop}
    own["required"] = [k for k in own.get("required", ()) if k not in drop]
    if not own["required"]:
        del own["required"]
    return own
