"""Decisions about users (see `decide`): create, update, remove, and end a session.

Pure: the password arrives already hashed (the handler hashes it off the event loop, after
checking it here with `check_password`), so nothing here is slow or does I/O. A password
that breaks the policy is a 422 (a well-formed body whose value is refused); a username
that is not one is a 400, like any identifier.
"""

from __future__ import annotations

from switchyard_gateway.catalog import rules
from switchyard_gateway.catalog.state import Catalog
from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts.events import Event
from switchyard_gateway.contracts.users import (
    UserCreated, UserPasswordChanged, UserRemoved, UserTokenRevoked, UserUpdated,
)
from switchyard_gateway.services.registry.checks import check, invalid, not_found

UNPROCESSABLE = 422


def check_password(password: str | None) -> None:
    """The password policy (422 with the rule broken); None: no new password."""
    if password is not None:
        problem = rules.password_problem(password)
        if problem:
            raise invalid("VALIDATION_ERROR", problem, "password", UNPROCESSABLE)


def create_user(catalog: Catalog, command: m.CreateUser, password_hash: str) -> list[Event]:
    check(rules.username_problem(command.username), "username", "INVALID_IDENTIFIER")
    check(rules.display_name_problem(command.display_name), "display_name")
    if command.username in catalog.users:
        raise invalid("CONFLICT", f"User '{command.username}' already exists; update it with PUT", "username", 409)
    folded = command.username.casefold()
    alike = next((name for name in catalog.users if name.casefold() == folded), None)
    if alike is not None:       # `Alice` beside `alice`: two sign-ins a person cannot tell apart
        raise invalid("CONFLICT", f"User '{alike}' already exists, a name that differs only in case; choose another "
                      "name", "username", 409)
    _tenant(catalog, command.tenant_id)
    check_password(command.password)
    return [UserCreated(username=command.username, tenant_id=command.tenant_id, role=command.role,
                        display_name=command.display_name, password_hash=password_hash)]


def update_user(catalog: Catalog, command: m.UpdateUser, password_hash: str | None) -> list[Event]:
    user = catalog.users.get(command.username)
    if user is None:
        raise not_found("USER_NOT_FOUND", "User", command.username, "username")
    tenant_id = command.tenant_id if command.tenant_id is not None else user.tenant_id
    role = command.role if command.role is not None else user.role
    display_name = command.display_name if command.display_name is not None else user.display_name
    check(rules.display_name_problem(display_name), "display_name")
    _tenant(catalog, tenant_id)
    events: list[Event] = []
    if (tenant_id, role, display_name) != (user.tenant_id, user.role, user.display_name):
        events.append(UserUpdated(username=user.username, tenant_id=tenant_id, role=role, display_name=display_name))
    if command.password is not None:
        check_password(command.password)
        assert password_hash is not None, "the handler hashes a new password before deciding"
        events.append(UserPasswordChanged(username=user.username, tenant_id=tenant_id, password_hash=password_hash))
    return events


def remove_user(catalog: Catalog, command: m.RemoveUser) -> list[Event]:
    user = catalog.users.get(command.username)
    if user is None:
        raise not_found("USER_NOT_FOUND", "User", command.username, "username")
    return [UserRemoved(username=user.username, tenant_id=user.tenant_id)]


def revoke_token(catalog: Catalog, command: m.RevokeUserToken) -> list[Event]:
    """End a session; ending one already ended (or of a user since removed) records nothing."""
    user = catalog.users.get(command.username)
    if user is None or command.token_id in catalog.sessions_ended:
        return []
    return [UserTokenRevoked(username=user.username, tenant_id=user.tenant_id, token_id=command.token_id,
                             expires_at=command.expires_at)]


def _tenant(catalog: Catalog, tenant_id: str) -> None:
    if tenant_id not in catalog.tenants:
        raise not_found("TENANT_NOT_FOUND", "Tenant", tenant_id, "tenant_id")
