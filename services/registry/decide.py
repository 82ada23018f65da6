"""Validate a registry command against the current catalog and decide the events it becomes.

Pure: no I/O. An unchanged resource yields no events, so bootstrapping twice is a no-op.
Register commands upsert by default; `mode="create"` refuses an existing resource (409),
`mode="update"` a missing one (404).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import msgspec

from switchyard_gateway.catalog import rules
from switchyard_gateway.catalog.state import KEY_PREFIX, Catalog, hash_key, key_id_of
from switchyard_gateway.contracts import events as ev
from switchyard_gateway.contracts import messages as m
from switchyard_gateway.catalog import document as config_file
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.contracts.routing import ModelWarmed
from switchyard_gateway.services.registry import decide_models, decide_users
from switchyard_gateway.services.registry.checks import (
    OPERATORS, Decision, check, check_duplicates, check_identifier, check_mode, check_model_name, fields_of, invalid,
    not_found, same,
)


def decide(catalog: Catalog, command: m.Command, password_hash: str | None = None,
           check_cycles: bool = True) -> Decision:
    """(events, plaintext key or None, key id or None) for a command, or raise ServiceError.

    `password_hash` is the hash of the password a user command carries, made by the caller beforehand;
    `check_cycles=False` leaves fallback cycles to the caller (a batch checks the state it ends in)."""
    check_bounds(command)
    match command:
        case m.CreateTenant():
            check_identifier(command.tenant_id, "tenant_id")
            check(rules.display_name_problem(command.display_name), "display_name")
            check_mode(command, catalog.tenants.get(command.tenant_id), "Tenant", command.tenant_id, "tenant_id")
            new = ev.TenantCreated(**fields_of(command))
            return ([] if same(catalog.tenants.get(command.tenant_id), new) else [new]), None, None
        case m.RemoveTenant():
            if command.tenant_id not in catalog.tenants:
                raise not_found("TENANT_NOT_FOUND", "Tenant", command.tenant_id, "tenant_id")
            if command.tenant_id == OPERATORS:
                raise invalid("CONFLICT", f"the operators' tenant '{OPERATORS}' holds the bootstrap admin key and "
                              "cannot be removed (revoke its keys instead)", "tenant_id", 409)
            return [ev.TenantRemoved(tenant_id=command.tenant_id)], None, None
        case m.RegisterProvider():
            check_identifier(command.provider_id, "provider_id")
            check(rules.display_name_problem(command.display_name), "display_name")
            check_mode(command, catalog.providers.get(command.provider_id), "Provider", command.provider_id,
                       "provider_id")
            new = ev.ProviderRegistered(**fields_of(command))
            return ([] if same(catalog.providers.get(command.provider_id), new) else [new]), None, None
        case m.RemoveProvider():
            if command.provider_id not in catalog.providers:
                raise not_found("PROVIDER_NOT_FOUND", "Provider", command.provider_id, "provider_id")
            users = [e.endpoint_id for e in catalog.registered.values() if e.provider_id == command.provider_id]
            if users:
                raise invalid("CONFLICT", f"Provider '{command.provider_id}' is still used by endpoints "
                              f"{', '.join(sorted(users))}", "provider_id", status=409)
            return [ev.ProviderRemoved(provider_id=command.provider_id)], None, None
        case m.RegisterEndpoint():
            return register_endpoint(catalog, command), None, None
        case m.RemoveEndpoint():
            if command.endpoint_id not in catalog.registered:
                raise not_found("ENDPOINT_NOT_FOUND", "Endpoint", command.endpoint_id, "endpoint_id")
            return [ev.EndpointRemoved(endpoint_id=command.endpoint_id)], None, None
        case m.RegisterModel():
            return decide_models.register_model(catalog, command, check_cycles), None, None
        case m.RemoveModel():
            return decide_models.remove_model(catalog, command), None, None
        case m.AssignModel():
            return decide_models.assign_model(catalog, command, check_cycles), None, None
        case m.UnassignModel():
            return decide_models.unassign_model(catalog, command, check_cycles), None, None
        case m.IssueKey():
            return issue_key(catalog, command)
        case m.RevokeKey():
            key = catalog.keys.get(command.key_id)
            if key is None:
                if command.key_id in catalog.revoked:         # revoked already: as asked, nothing to record
                    return [], None, None
                raise not_found("KEY_NOT_FOUND", "Key", command.key_id, "key_id")
            return [ev.KeyRevoked(key_id=key.key_id, tenant_id=key.tenant_id)], None, None
        case m.ApplyTemplate():
            return decide_models.apply_template(catalog, command), None, None
        case m.RecordDiscoveredModels():
            return decide_models.record_discovered(catalog, command), None, None
        case m.ImportConfig():
            return import_config(catalog, command), None, None
        case m.RecordWarmUp():
            if command.endpoint_id not in catalog.registered:
                raise not_found("ENDPOINT_NOT_FOUND", "Endpoint", command.endpoint_id, "endpoint_id")
            return [ModelWarmed(**fields_of(command, drop=()))], None, None
        case m.CreateUser():
            return decide_users.create_user(catalog, command, password_hash or ""), None, None
        case m.UpdateUser():
            return decide_users.update_user(catalog, command, password_hash), None, None
        case m.RemoveUser():
            return decide_users.remove_user(catalog, command), None, None
        case m.RevokeUserToken():
            return decide_users.revoke_token(catalog, command), None, None
    raise invalid("VALIDATION_ERROR", f"unknown command {type(command).__name__}")


def check_bounds(command: m.Command) -> None:
    """400 naming the first field of the command that is too long, has too many items or is too large."""
    oversized = rules.bounds_problem({f: getattr(command, f) for f in command.__struct_fields__})
    if oversized is not None:
        raise invalid("VALIDATION_ERROR", oversized[1], oversized[0])


def register_endpoint(catalog: Catalog, command: m.RegisterEndpoint) -> list[ev.Event]:
    check_identifier(command.endpoint_id, "endpoint_id")
    check_mode(command, catalog.registered.get(command.endpoint_id), "Endpoint", command.endpoint_id,
               "endpoint_id")
    if command.provider_id not in catalog.providers:
        raise not_found("PROVIDER_NOT_FOUND", "Provider", command.provider_id, "provider_id")
    check(rules.url_problem(command.base_url), "base_url", "INVALID_ENDPOINT")
    check(rules.credential_problem(command.api_key_ref), "api_key_ref")
    for i, name in enumerate(command.models):
        check_model_name(name, f"models[{i}]")
    check_duplicates(command.models, "models")
    for name in ("max_concurrent", "weight"):
        if getattr(command, name) < 0:
            raise invalid("VALIDATION_ERROR", f"{name} must be >= 0", name)
    if command.timeout_s <= 0:
        raise invalid("VALIDATION_ERROR", "timeout_s must be > 0", "timeout_s")
    if command.first_byte_timeout_s is not None and command.first_byte_timeout_s <= 0:
        raise invalid("VALIDATION_ERROR", "first_byte_timeout_s must be > 0", "first_byte_timeout_s")
    new = ev.EndpointRegistered(**fields_of(command))
    return [] if same(catalog.registered.get(command.endpoint_id), new) else [new]


def issue_key(catalog: Catalog, command: m.IssueKey) -> Decision:
    if command.tenant_id not in catalog.tenants:
        raise not_found("TENANT_NOT_FOUND", "Tenant", command.tenant_id, "tenant_id")
    check(rules.display_name_problem(command.name), "name")      # shown in lists and the console, as a name is
    expires_at = command.expires_at                # recorded with its offset: a time without one is UTC
    if expires_at is not None and expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    if expires_at is not None and expires_at <= datetime.now(UTC):
        raise invalid("VALIDATION_ERROR", f"expires_at {expires_at.isoformat()} is not in the future: "
                      "the key would never work", "expires_at", status=422)
    if command.secret is not None:
        if len(command.secret) < 16:
            raise invalid("VALIDATION_ERROR", "a supplied key must be at least 16 characters", "secret")
        if not (command.secret.isascii() and command.secret.isprintable()) or " " in command.secret:
            raise invalid("VALIDATION_ERROR", "a supplied key is printable ASCII without spaces: it is sent in a "
                          "header", "secret")
        digest = hash_key(command.secret)
        if any(key.key_sha256 == digest for key in catalog.revoked.values()):
            raise invalid("KEY_REVOKED", "that key was revoked, and a revoked key stays revoked: supply another",
                          "secret", 409)
        existing = catalog.keys_by_hash.get(digest)
        if existing is not None:
            if existing.tenant_id != command.tenant_id or existing.role != command.role:
                raise invalid("CONFLICT", "that key is already issued to another tenant or role", "secret", 409)
            return [], None, existing.key_id
        secret = command.secret
        key_id = key_id_of(secret) or f"{KEY_PREFIX}{secrets.token_hex(4)}"
        if key_id in catalog.keys or key_id in catalog.revoked:
            raise invalid("CONFLICT", f"key id '{key_id}' is already issued", "secret", 409)
    else:
        key_id = f"{KEY_PREFIX}{secrets.token_hex(4)}"
        secret = f"{key_id}_{secrets.token_urlsafe(24)}"
    issued = ev.KeyIssued(key_id=key_id, tenant_id=command.tenant_id, key_sha256=hash_key(secret),
                          role=command.role, name=command.name, expires_at=expires_at)
    return [issued], (None if command.secret is not None else secret), key_id


Counts = dict[str, m.KindCounts]


def run_all(catalog: Catalog, commands: list[m.Command], counts: Counts | None = None) -> list[ev.Event]:
    """Decide commands in order against a working copy, each seeing the events of those before it; fallback
    cycles are looked for once, in the state the batch ends in. With `counts`, each upsert is counted there by
    its kind as created, changed or unchanged."""
    work = catalog.copy()
    recorded: list[ev.Event] = []
    for command in commands:
        held = _held(work, command)
        events, _, _ = decide(work, command, check_cycles=False)
        for event in events:
            work.apply(event)
        recorded.extend(events)
        if counts is not None and (kind := IMPORTED_KINDS.get(type(command))) is not None:
            was = counts.get(kind, m.KindCounts())
            counts[kind] = msgspec.structs.replace(
                was, created=was.created + (bool(events) and not held), changed=was.changed + (bool(events) and held),
                unchanged=was.unchanged + (not events))
    decide_models.cycles_after(work, recorded)
    return recorded


IMPORTED_KINDS: dict[type[m.Command], str] = {
    m.RegisterProvider: "providers", m.RegisterModel: "models", m.RegisterEndpoint: "endpoints",
    m.CreateTenant: "tenants", m.AssignModel: "assignments",
}


def _held(catalog: Catalog, command: m.Command) -> bool:
    """Whether the resource an upsert names exists already."""
    match command:
        case m.RegisterProvider():
            return command.provider_id in catalog.providers
        case m.RegisterModel():
            return command.model_id in catalog.models
        case m.RegisterEndpoint():
            return command.endpoint_id in catalog.registered
        case m.CreateTenant():
            return command.tenant_id in catalog.tenants
        case m.AssignModel():
            return command.model_id in catalog.assignments.get(command.tenant_id, {})
    return False


def import_config(catalog: Catalog, command: m.ImportConfig, counts: Counts | None = None) -> list[ev.Event]:
    """A whole document, all or nothing: every problem reported at once, then each resource upserted (and counted
    in `counts`, when given)."""
    check_bounds(command)
    problems = config_file.validate(command.config, config_file.Known.of(catalog))
    if problems:
        first = problems[0]
        raise ServiceError(400, m.ErrorBody(
            "VALIDATION_ERROR", f"{len(problems)} problem(s); the first: {first.path}: {first.message}",
            first.path, problems))
    return run_all(catalog, config_file.to_commands(command.config), counts)
