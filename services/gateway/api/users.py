"""The admin API for users, `/api/admin/users`: create, list, read, update and remove, answered by the registry.

A password goes to the registry once, in the command that sets it, and is hashed there; no answer
ever carries a password or its hash. Answers show a user as the registry holds it: username,
tenant, role, display name, and when its password was last set. Bodies are read by `json_object`, like every
admin route's: one nested too deeply is a 400 `INVALID_JSON`, not a crash.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Response, Router, delete, get, post, put
from litestar.params import FromPath, FromQuery

from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.events import Role
from switchyard_gateway.services.gateway.api.common import AppDeps, Req, admin_guard, ask, json_object, json_response
from switchyard_gateway.services.gateway.api.paging import list_page
from switchyard_gateway.services.gateway.deps import Deps
from switchyard_gateway.kit.natsio import ServiceError

_reply = msgspec.json.Decoder(m.CommandReply)


class UserCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):     # `rol` was a member, silently
    username: m.Username
    password: m.Password
    tenant_id: str
    role: Role = "member"
    display_name: m.DisplayName = ""


class UserUpdate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Any of the fields; a field left out keeps its value. A new password ends the user's sessions."""

    tenant_id: str | None = None
    role: Role | None = None
    display_name: m.DisplayName | None = None
    password: m.Password | None = None
    username: str | None = None               # a GET's answer, edited and sent back: the URL's, or a 400
    password_changed_at: str | None = None    # shown only: ignored
    version: str | None = None


async def _run(deps: Deps, command: m.Command, username: str, status: int = 200) -> Response[bytes]:
    """Send a user command, wait until this gateway's catalog shows it, answer with the user as it stands."""
    reply = _reply.decode(await ask(deps, subjects.REGISTRY_COMMAND, command))
    recorded = reply.recorded
    await deps.state.wait_for({str(e.event_id) for e in recorded})
    body: dict[str, Any] = {"changed": bool(recorded)}
    if username in deps.catalog.users:
        body["user"] = msgspec.json.decode(await ask(deps, subjects.REGISTRY_QUERY,
                                                     m.RegistryQuery("users", id=username)))
    return json_response(body, status if recorded else 200)


@get("/users")
async def list_users(request: Req, deps: AppDeps, tenant_id: FromQuery[str | None] = None) -> Response[bytes]:
    """A page of the users (of one tenant, with `tenant_id`); `limit`, `after` and `q` as every list takes."""
    return await list_page(request, deps, "users", tenant_id)


@get("/users/{username:str}")
async def get_user(deps: AppDeps, username: FromPath[str]) -> Response[bytes]:
    return json_response(await ask(deps, subjects.REGISTRY_QUERY, m.RegistryQuery("users", id=username)))


def refuse_in_single_user_mode(deps: AppDeps, why: str) -> None:
    """409 `SINGLE_USER_MODE` for what single-user mode could never use (a user, a key)."""
    if deps.auth.mode != "multi-tenant":
        raise ServiceError(409, m.ErrorBody("SINGLE_USER_MODE", f"single-user mode has one key (SWITCHYARD_API_KEY) "
                                            f"and no users: {why}"))


@post("/users")
async def create_user(request: Req, deps: AppDeps) -> Response[bytes]:
    """A new user; refused in single-user mode, where no user could ever sign in (409 `SINGLE_USER_MODE`)."""
    refuse_in_single_user_mode(deps, "a user made here could never sign in")
    data = msgspec.convert(await json_object(request), UserCreate)
    command = m.CreateUser(username=data.username, tenant_id=data.tenant_id, password=data.password,
                           role=data.role, display_name=data.display_name)
    return await _run(deps, command, data.username, status=201)


@put("/users/{username:str}")
async def update_user(request: Req, deps: AppDeps, username: FromPath[str]) -> Response[bytes]:
    data = msgspec.convert(await json_object(request), UserUpdate)
    if data.username is not None and data.username != username:
        raise ServiceError(400, m.ErrorBody("VALIDATION_ERROR", f"username: the body names {data.username!r} but the "
                                            f"URL {username!r}; a user is renamed by creating anew", "username"))
    command = m.UpdateUser(username=username, tenant_id=data.tenant_id, role=data.role,
                           display_name=data.display_name, password=data.password)
    return await _run(deps, command, username)


@delete("/users/{username:str}", status_code=200)
async def remove_user(deps: AppDeps, username: FromPath[str]) -> Response[bytes]:
    return await _run(deps, m.RemoveUser(username=username), username)


ROUTES = [Router(path="/api/admin", guards=[admin_guard],
                 route_handlers=[list_users, get_user, create_user, update_user, remove_user])]
