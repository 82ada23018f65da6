"""The admin API under /api/admin/ for the registry: its resources, keys, assignments, templates, export and
import, answered by the registry over NATS (`registry.command.v1`, `registry.query.v1`).

POST creates (409 CONFLICT if the resource exists), PUT updates what the body names
(404 if it does not exist), DELETE removes. Errors are `{"error": {"code", "message", "field"}}`.
"""

from __future__ import annotations

from typing import Any

import msgspec
import yaml
from litestar import Response, Router, delete, get, post, put
from litestar.params import FromPath

from switchyard_gateway.catalog.document import decode_document
from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts import subjects
from switchyard_gateway.kit.natsio import ServiceError, ServiceUnavailable
from switchyard_gateway.services.gateway.api.common import (
    AppDeps, Req, admin_guard, ask, check_bounds, json_object, json_response,
)
from switchyard_gateway.services.gateway.api.paging import list_page
from switchyard_gateway.services.gateway.api.quotas import set_model_limits
from switchyard_gateway.services.gateway.api.users import refuse_in_single_user_mode
from switchyard_gateway.services.gateway.deps import Deps

_reply = msgspec.json.Decoder(m.CommandReply)
_any = msgspec.json.Decoder()
_HIDDEN = ("type", "event_id", "occurred_at", "key_sha256", "password_hash", "mode")


async def run_command(deps: Deps, command: m.Command, status: int = 200) -> Response[bytes]:
    """Send a command to the registry and wait until this gateway's catalog shows its events; a field too long
    or too large is refused here, before the registry is asked (400 naming it)."""
    check_bounds({f: getattr(command, f) for f in command.__struct_fields__})
    reply = _reply.decode(await ask(deps, subjects.REGISTRY_COMMAND, command))
    recorded = reply.recorded
    await deps.state.wait_for({str(e.event_id) for e in recorded})
    body: dict[str, Any] = {"changed": bool(recorded)}
    if reply.key is not None:
        body["key"] = reply.key          # shown once, never stored in plaintext
    if reply.key_id is not None:
        body["key_id"] = reply.key_id
    if recorded:
        body["resource"] = {k: v for k, v in msgspec.to_builtins(recorded[-1]).items() if k not in _HIDDEN}
        body["resource"]["version"] = str(recorded[-1].event_id)
        body["events"] = len(recorded)
    return json_response(body, status if recorded else 200)


async def run_query(deps: Deps, query: m.RegistryQuery) -> Response[bytes]:
    return json_response(await ask(deps, subjects.REGISTRY_QUERY, query))


# what a resource's answer shows beside its fields: sent back in an update (a GET's body, edited), it is ignored
_SHOWN_ONLY = frozenset({"updated_at", "version", "discovered_models", "serving_models", "revoked", "type"})


# the provider-management platform's spellings of our fields (its guide's bodies), per command
SEED_SPELLINGS: dict[type[m.Command], dict[str, str]] = {
    m.RegisterProvider: {"identifier": "provider_id", "name": "display_name"},
    m.ApplyTemplate: {"identifier": "endpoint_id", "name": "display_name", "endpoint": "base_url"},
}
_NO_SECRETS = ("authConfig", "apiKey")       # its ways of giving a key; the registry keeps none


def _spelt_ours(body: dict[str, Any], kind: type[m.Command]) -> dict[str, Any]:
    """The body with the provider-management platform's field names read as ours (`identifier`, `name`, a
    template's `endpoint`); a key given in the body is refused, saying where a key goes instead."""
    for name in _NO_SECRETS:
        if name in body:
            raise ServiceError(400, m.ErrorBody(
                "VALIDATION_ERROR", f"{name}: Switchyard keeps no API key in its registry (its events would carry "
                "it): put the key in an environment variable of the gateway and name that variable with "
                "`api_key_ref` on the endpoint", name))
    spellings = SEED_SPELLINGS.get(kind)
    if not spellings or not any(name in body for name in spellings):
        return body
    out = dict(body)
    for theirs, ours in spellings.items():
        if theirs in out:
            if ours in out:
                raise ServiceError(400, m.ErrorBody("VALIDATION_ERROR", f"give {ours!r} or {theirs!r}, not both",
                                                    theirs))
            out[ours] = out.pop(theirs)
    return out


def _known(body: dict[str, Any], kind: type[m.Command]) -> dict[str, Any]:
    """The body, if every field in it is one the command has (or one its resource only shows): a misspelt field
    would otherwise change nothing and answer 200. 400 naming the first unknown one."""
    body = _spelt_ours(body, kind)
    for name in body:
        if name not in kind.__struct_fields__ and name not in _SHOWN_ONLY:
            raise ServiceError(400, m.ErrorBody("UNKNOWN_FIELD", f"unknown field '{name}'", name))
    return body


def _same_ids(body: dict[str, Any], path: dict[str, Any]) -> None:
    """400 when the body names another id than the URL does (it was silently the URL's): an id is not changed
    by an update, and a key is issued to the tenant its URL names."""
    for name, value in path.items():
        if name in body and body[name] != value and name.endswith("_id"):
            raise ServiceError(400, m.ErrorBody("VALIDATION_ERROR", f"{name}: the body names {body[name]!r} but "
                                                f"the URL {value!r}; leave it out, or make them the same", name))


async def _body(request: Req, kind: type[m.Command], **path: Any) -> m.Command:
    body = _known(await json_object(request), kind)
    _same_ids(body, path)
    return msgspec.convert({**body, **path}, kind)


MERGE_TRIES = 5        # an update read and overlaid again at most this often while other changes come between


async def _update(request: Req, deps: Deps, kind: type[m.Command], query: m.RegistryQuery, **path: Any) \
        -> Response[bytes]:
    """An update: the resource as the registry holds it, overlaid with what the body names, and recorded only if
    the resource is still as it was read (`if_match`: its version): another update between the read and the
    write would otherwise lose its fields to this one's stale copy. Read and overlaid again when one came
    between; a body naming its own `if_match` (a version it read) gets the 409 CHANGED itself."""
    body = _known(await json_object(request), kind)
    _same_ids(body, path)
    for attempt in range(MERGE_TRIES):
        current = _any.decode(await ask(deps, subjects.REGISTRY_QUERY, query))
        command = msgspec.convert({**current, **body, **path, "mode": "update",
                                   "if_match": body.get("if_match", current.get("version"))}, kind)
        try:
            return await run_command(deps, command)
        except ServiceError as exc:
            if exc.body.code != "CHANGED" or "if_match" in body or attempt == MERGE_TRIES - 1:
                raise
    raise AssertionError("unreachable")


def _crud(resource: str, id_field: str, register: type[m.Command], remove: type[m.Command],
          any_id: bool = False) -> list[Any]:
    """List, get, create, update and delete one kind of resource. With `any_id` the id in the URL may hold
    slashes (model ids such as `/models/x.gguf`, sent as is or percent-encoded) and is read whole."""
    item = "{item_id:path}" if any_id else "{item_id:str}"

    def ident(request: Req, matched: Any) -> str:
        if not any_id:
            return matched
        return request.scope["raw_path"].decode().split(f"/{resource}/", 1)[1]

    @get(f"/{resource}", name=f"list_{resource}")
    async def list_(request: Req, deps: AppDeps) -> Response[bytes]:
        return await list_page(request, deps, resource)  # type: ignore[arg-type]

    @get(f"/{resource}/{item}", name=f"get_{resource}")
    async def get_(request: Req, deps: AppDeps, item_id: FromPath[Any]) -> Response[bytes]:
        return await run_query(deps, m.RegistryQuery(resource, id=ident(request, item_id)))  # type: ignore[arg-type]

    @post(f"/{resource}", name=f"create_{resource}")
    async def create(request: Req, deps: AppDeps) -> Response[bytes]:
        return await run_command(deps, await _body(request, register, mode="create"), status=201)

    @put(f"/{resource}/{item}", name=f"update_{resource}")
    async def update(request: Req, deps: AppDeps, item_id: FromPath[Any]) -> Response[bytes]:
        key = ident(request, item_id)
        query = m.RegistryQuery(resource, id=key)  # type: ignore[arg-type]
        return await _update(request, deps, register, query, **{id_field: key})

    @delete(f"/{resource}/{item}", name=f"delete_{resource}", status_code=200)
    async def remove_(request: Req, deps: AppDeps, item_id: FromPath[Any]) -> Response[bytes]:
        return await run_command(deps, msgspec.convert({id_field: ident(request, item_id)}, remove))

    return [list_, get_, create, update, remove_]


@post("/tenants/{tenant_id:str}/keys")
async def issue_key(request: Req, deps: AppDeps, tenant_id: FromPath[str]) -> Response[bytes]:
    """A new key; refused in single-user mode, which accepts SWITCHYARD_API_KEY alone (409 `SINGLE_USER_MODE`)."""
    refuse_in_single_user_mode(deps, "a key issued here would never be accepted")
    return await run_command(deps, await _body(request, m.IssueKey, tenant_id=tenant_id), status=201)


@get("/tenants/{tenant_id:str}/keys")
async def list_keys(request: Req, deps: AppDeps, tenant_id: FromPath[str]) -> Response[bytes]:
    if tenant_id not in deps.catalog.tenants:          # as issuing one answers: not an empty list
        raise ServiceError(404, m.ErrorBody("TENANT_NOT_FOUND", f"Tenant '{tenant_id}' not found", "tenant_id"))
    return await list_page(request, deps, "keys", tenant_id)


@delete("/keys/{key_id:str}", status_code=200)
async def revoke_key(deps: AppDeps, key_id: FromPath[str]) -> Response[bytes]:
    return await run_command(deps, m.RevokeKey(key_id=key_id))


@post("/tenants/{tenant_id:str}/models")
async def assign_model(request: Req, deps: AppDeps, tenant_id: FromPath[str]) -> Response[bytes]:
    return await run_command(deps, await _body(request, m.AssignModel, tenant_id=tenant_id, mode="create"), 201)


@get("/tenants/{tenant_id:str}/models")
async def list_assignments(request: Req, deps: AppDeps, tenant_id: FromPath[str]) -> Response[bytes]:
    return await list_page(request, deps, "assignments", tenant_id)


def assigned_model(request: Req, tenant_id: str) -> str:
    """The model id of a `/tenants/{tenant_id}/models/{model_id}` path, read whole: ids such as `org/model:q4`
    hold slashes, sent as they are or percent-encoded (the HTTP server decodes the path before routing)."""
    return request.scope["raw_path"].decode().split(f"/tenants/{tenant_id}/models/", 1)[1]


@get("/tenants/{tenant_id:str}/models/{model_id:path}")
async def get_assignment(request: Req, deps: AppDeps, tenant_id: FromPath[str]) -> Response[bytes]:
    return await run_query(deps, m.RegistryQuery("assignments", id=f"{tenant_id}/{assigned_model(request, tenant_id)}"))


@put("/tenants/{tenant_id:str}/models/{model_id:path}")
async def update_assignment(request: Req, deps: AppDeps, tenant_id: FromPath[str]) -> Response[bytes]:
    """Change an assignment, or (`.../models/{model_id}/limits`) the limits of that model for the tenant."""
    model_id = assigned_model(request, tenant_id)
    if model_id.endswith("/limits") and deps.catalog.resolve_model(model_id) is None:
        return await set_model_limits(request, deps, tenant_id, model_id.removesuffix("/limits"))
    query = m.RegistryQuery("assignments", id=f"{tenant_id}/{model_id}")
    return await _update(request, deps, m.AssignModel, query, tenant_id=tenant_id, model_id=model_id)


@delete("/tenants/{tenant_id:str}/models/{model_id:path}", status_code=200)
async def unassign_model(request: Req, deps: AppDeps, tenant_id: FromPath[str]) -> Response[bytes]:
    return await run_command(deps, m.UnassignModel(tenant_id=tenant_id, model_id=assigned_model(request, tenant_id)))


# --- templates ---------------------------------------------------------------------------------


@get(["/templates", "/provider-templates"])
async def list_templates(request: Req, deps: AppDeps) -> Response[bytes]:
    return await list_page(request, deps, "templates")


@get(["/templates/{name:str}", "/provider-templates/{name:str}"])
async def get_template(deps: AppDeps, name: FromPath[str]) -> Response[bytes]:
    return await run_query(deps, m.RegistryQuery("templates", id=name))


@post(["/templates/{name:str}/apply", "/provider-templates/{name:str}/apply"])
async def apply_template(request: Req, deps: AppDeps, name: FromPath[str]) -> Response[bytes]:
    """`{"endpoint_id", "provider_id"?, "display_name"?, "customizations": {"base_url", "api_key_ref",
    "models", "priority", "weight", "max_concurrent", "timeout_s"}}` (customisations may also sit at the top)."""
    data = await json_object(request)
    custom = data.pop("customizations", None)
    custom = {} if custom is None else custom        # 0, false, [] and "" are no object either
    if not isinstance(custom, dict):
        raise ServiceError(400, m.ErrorBody("VALIDATION_ERROR", "customizations must be an object", "customizations"))
    fields = _known({**data, **custom}, m.ApplyTemplate)        # a misspelt customization was silently dropped
    return await run_command(deps, msgspec.convert({**fields, "template": name}, m.ApplyTemplate), 201)


# --- export and import ---------------------------------------------------------------------------


@get("/registry/export")
async def registry_export(request: Req, deps: AppDeps) -> Response[bytes]:
    """The registry as a `switchyard.yaml` document: JSON, or YAML with `?format=yaml`."""
    raw = await ask(deps, subjects.REGISTRY_QUERY, m.RegistryQuery("export"))
    if request.query_params.get("format") == "yaml":
        return Response(yaml.safe_dump(_any.decode(raw), sort_keys=False).encode(), media_type="application/yaml")
    return Response(raw, media_type="application/json")


IMPORT_WAIT_S = 60.0            # how long an import is waited for: the registry refuses one it could not apply by then
MAX_IMPORT_RESOURCES = 10_000   # resources one import may hold (about 5 s of the registry's time, which holds every
                                # other change meanwhile); a larger document is refused before the registry is asked
IMPORTED = ("providers", "models", "endpoints", "tenants")


def _resources(doc: dict[str, Any]) -> dict[str, int]:
    """How many resources of each kind a document lists (a tenant's model assignments as `assignments`)."""
    counts = {kind: len(doc[kind]) for kind in IMPORTED if isinstance(doc.get(kind), list)}
    tenants = doc.get("tenants") if isinstance(doc.get("tenants"), list) else []
    counts["assignments"] = sum(len(t["models"]) for t in tenants
                                if isinstance(t, dict) and isinstance(t.get("models"), list))
    return counts


@post("/registry/import", status_code=200)
async def registry_import(request: Req, deps: AppDeps) -> Response[bytes]:
    """Apply a document (JSON or YAML, the export's shape), all or nothing; every problem is reported. The answer
    counts what changed per kind (`created`, `changed`, `unchanged`), never lists it: it always fits."""
    text = (await request.body()).decode("utf-8", errors="replace")
    try:
        doc = decode_document(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise ServiceError(400, m.ErrorBody("VALIDATION_ERROR", f"not valid JSON or YAML: {exc}")) from None
    except RecursionError:
        raise ServiceError(400, m.ErrorBody("INVALID_JSON", "the document is nested too deeply to read")) from None
    if not isinstance(doc, dict):
        raise ServiceError(400, m.ErrorBody("VALIDATION_ERROR", "expected an object with providers, endpoints, "
                                            "models and tenants"))
    counts = _resources(doc)
    if (total := sum(counts.values())) > MAX_IMPORT_RESOURCES:
        largest = max(counts, key=lambda kind: counts[kind])
        raise ServiceError(413, m.ErrorBody("PAYLOAD_TOO_LARGE", (
            f"the document lists {total:,} resources; one import applies at most {MAX_IMPORT_RESOURCES:,}: import "
            "it in parts (each is applied whole, and what a part already holds is left unchanged); nothing was "
            "applied"), largest))
    command = m.ImportConfig(config=doc, summary=True)
    check_bounds({f: getattr(command, f) for f in command.__struct_fields__})
    try:
        raw = await ask(deps, subjects.REGISTRY_COMMAND, command, IMPORT_WAIT_S)
    except ServiceUnavailable:
        raise ServiceError(504, m.ErrorBody("IMPORT_UNCONFIRMED", (
            f"the registry did not answer within {IMPORT_WAIT_S:.0f} s, so whether the document was applied is not "
            "known (it is applied whole or not at all): GET /api/admin/registry/export or the lists show which; "
            "importing it again is safe, as what it already holds is left unchanged"))) from None
    summary = _reply.decode(raw).summary or m.ImportSummary()
    if summary.last_event_id is not None:
        await deps.state.wait_for({summary.last_event_id}, timeout_s=10.0)
    kinds = {kind: msgspec.to_builtins(summary.kinds.get(kind, m.KindCounts()))
             for kind in (*IMPORTED, "assignments")}
    return json_response({"changed": summary.events > 0, "events": summary.events, "summary": kinds})


admin_router = Router(
    path="/api/admin",
    guards=[admin_guard],
    route_handlers=[
        *_crud("tenants", "tenant_id", m.CreateTenant, m.RemoveTenant),
        *_crud("providers", "provider_id", m.RegisterProvider, m.RemoveProvider),
        *_crud("endpoints", "endpoint_id", m.RegisterEndpoint, m.RemoveEndpoint),
        *_crud("models", "model_id", m.RegisterModel, m.RemoveModel, any_id=True),
        issue_key, list_keys, revoke_key, assign_model, list_assignments, get_assignment, update_assignment,
        unassign_model, list_templates, get_template, apply_template, registry_export, registry_import,
    ],
)

ROUTES = [admin_router]
