"""Validate a registry command against the current catalog and decide the events it becomes.

Pure: no I/O. An unchanged resource yields no events, so bootstrapping twice is a no-op.
"""

from __future__ import annotations

import re
import secrets
from urllib.parse import urlsplit

from libs.catalog.state import KEY_PREFIX, Catalog, hash_key, key_id_of
from libs.contracts import events as ev
from libs.contracts import messages as m
from libs.contracts.messages import ErrorBody
from libs.kit.natsio import ServiceError

IDENTIFIER = re.compile(r"^[a-z0-9][a-z0-9_-]{1,49}$")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
ENV_REF = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*\}$")


def invalid(code: str, message: str, field: str | None = None, status: int = 400) -> ServiceError:
    return ServiceError(status, ErrorBody(code, message, field))


def check_identifier(value: str, field: str) -> None:
    if not IDENTIFIER.match(value):
        raise invalid("INVALID_IDENTIFIER",
                      f"'{value}' is not a valid identifier: use 2-50 of a-z, 0-9, '_' and '-', "
                      "starting with a letter or digit", field)


def check_model_name(value: str, field: str) -> None:
    if not MODEL_NAME.match(value):
        raise invalid("VALIDATION_ERROR", f"'{value}' is not a valid model name", field)


def check_url(value: str, field: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid("INVALID_ENDPOINT", f"'{value}' is not an http(s) URL", field)
    try:
        port = parts.port
    except ValueError:
        raise invalid("INVALID_ENDPOINT", f"'{value}' has an invalid port", field) from None
    if port is not None and not 0 < port < 65536:
        raise invalid("INVALID_ENDPOINT", f"'{value}' has a port outside 1-65535", field)


def not_found(code: str, what: str, ident: str, field: str | None = None) -> ServiceError:
    return invalid(code, f"{what} '{ident}' not found", field, status=404)


def _same(old: ev.Event | None, new: ev.Event) -> bool:
    """Full-state events are equal when all but their identity and time match."""
    if old is None or type(old) is not type(new):
        return False
    skip = {"event_id", "occurred_at"}
    return all(getattr(old, f) == getattr(new, f) for f in old.__struct_fields__ if f not in skip)


def decide(catalog: Catalog, command: m.Command) -> tuple[list[ev.Event], str | None, str | None]:
    """(events, plaintext key or None, key id or None) for a command, or raise ServiceError."""
    match command:
        case m.CreateTenant():
            check_identifier(command.tenant_id, "tenant_id")
            new = ev.TenantCreated(tenant_id=command.tenant_id, display_name=command.display_name,
                                   all_models=command.all_models, fallback_on_quota=command.fallback_on_quota)
            return ([] if _same(catalog.tenants.get(command.tenant_id), new) else [new]), None, None
        case m.RemoveTenant():
            if command.tenant_id not in catalog.tenants:
                raise not_found("TENANT_NOT_FOUND", "Tenant", command.tenant_id, "tenant_id")
            return [ev.TenantRemoved(tenant_id=command.tenant_id)], None, None
        case m.RegisterProvider():
            check_identifier(command.provider_id, "provider_id")
            new = ev.ProviderRegistered(provider_id=command.provider_id, kind=command.kind,
                                        display_name=command.display_name)
            return ([] if _same(catalog.providers.get(command.provider_id), new) else [new]), None, None
        case m.RemoveProvider():
            if command.provider_id not in catalog.providers:
                raise not_found("PROVIDER_NOT_FOUND", "Provider", command.provider_id, "provider_id")
            users = [e.endpoint_id for e in catalog.endpoints.values() if e.provider_id == command.provider_id]
            if users:
                raise invalid("CONFLICT", f"Provider '{command.provider_id}' is still used by endpoints "
                              f"{', '.join(sorted(users))}", "provider_id", status=409)
            return [ev.ProviderRemoved(provider_id=command.provider_id)], None, None
        case m.RegisterEndpoint():
            return _register_endpoint(catalog, command), None, None
        case m.RemoveEndpoint():
            if command.endpoint_id not in catalog.endpoints:
                raise not_found("ENDPOINT_NOT_FOUND", "Endpoint", command.endpoint_id, "endpoint_id")
            return [ev.EndpointRemoved(endpoint_id=command.endpoint_id)], None, None
        case m.RegisterModel():
            check_model_name(command.model_id, "model_id")
            for i, alias in enumerate(command.aliases):
                check_model_name(alias, f"aliases[{i}]")
            if command.input_price_per_1m < 0 or command.output_price_per_1m < 0:
                raise invalid("VALIDATION_ERROR", "prices cannot be negative", "input_price_per_1m")
            new = ev.ModelRegistered(**{f: getattr(command, f) for f in command.__struct_fields__})
            return ([] if _same(catalog.models.get(command.model_id), new) else [new]), None, None
        case m.RemoveModel():
            if command.model_id not in catalog.models:
                raise not_found("MODEL_NOT_FOUND", "Model", command.model_id, "model_id")
            return [ev.ModelRemoved(model_id=command.model_id)], None, None
        case m.AssignModel():
            if command.tenant_id not in catalog.tenants:
                raise not_found("TENANT_NOT_FOUND", "Tenant", command.tenant_id, "tenant_id")
            if command.model_id not in catalog.models:
                raise not_found("MODEL_NOT_FOUND", "Model", command.model_id, "model_id")
            new = ev.TenantModelAssigned(**{f: getattr(command, f) for f in command.__struct_fields__})
            old = catalog.assignments.get(command.tenant_id, {}).get(command.model_id)
            return ([] if _same(old, new) else [new]), None, None
        case m.IssueKey():
            return _issue_key(catalog, command)
        case m.RevokeKey():
            key = catalog.keys.get(command.key_id)
            if key is None:
                raise not_found("KEY_NOT_FOUND", "Key", command.key_id, "key_id")
            return [ev.KeyRevoked(key_id=key.key_id, tenant_id=key.tenant_id)], None, None
    raise invalid("VALIDATION_ERROR", f"unknown command {type(command).__name__}")


def _register_endpoint(catalog: Catalog, command: m.RegisterEndpoint) -> list[ev.Event]:
    check_identifier(command.endpoint_id, "endpoint_id")
    if command.provider_id not in catalog.providers:
        raise not_found("PROVIDER_NOT_FOUND", "Provider", command.provider_id, "provider_id")
    check_url(command.base_url, "base_url")
    if command.api_key_ref and not ENV_REF.match(command.api_key_ref):
        raise invalid("VALIDATION_ERROR", "credentials must be given as an environment reference "
                      "like ${OPENAI_API_KEY}, never as the secret itself", "api_key_ref")
    for i, name in enumerate(command.models):
        check_model_name(name, f"models[{i}]")
    if command.max_concurrent < 0 or command.weight < 0 or command.timeout_s <= 0:
        raise invalid("VALIDATION_ERROR", "max_concurrent and weight must be >= 0, timeout_s > 0", "max_concurrent")
    new = ev.EndpointRegistered(**{f: getattr(command, f) for f in command.__struct_fields__})
    return [] if _same(catalog.endpoints.get(command.endpoint_id), new) else [new]


def _issue_key(catalog: Catalog, command: m.IssueKey) -> tuple[list[ev.Event], str | None, str | None]:
    if command.tenant_id not in catalog.tenants:
        raise not_found("TENANT_NOT_FOUND", "Tenant", command.tenant_id, "tenant_id")
    if command.secret is not None:
        if len(command.secret) < 16:
            raise invalid("VALIDATION_ERROR", "a supplied key must be at least 16 characters", "secret")
        existing = catalog.keys_by_hash.get(hash_key(command.secret))
        if existing is not None:
            if existing.tenant_id != command.tenant_id or existing.role != command.role:
                raise invalid("CONFLICT", "that key is already issued to another tenant or role", "secret", 409)
            return [], None, existing.key_id
        secret = command.secret
        key_id = key_id_of(secret) or f"{KEY_PREFIX}{secrets.token_hex(4)}"
        if key_id in catalog.keys:
            raise invalid("CONFLICT", f"key id '{key_id}' is already issued", "secret", 409)
    else:
        key_id = f"{KEY_PREFIX}{secrets.token_hex(4)}"
        secret = f"{key_id}_{secrets.token_urlsafe(24)}"
    issued = ev.KeyIssued(key_id=key_id, tenant_id=command.tenant_id, key_sha256=hash_key(secret),
                          role=command.role, name=command.name, expires_at=command.expires_at)
    return [issued], (None if command.secret is not None else secret), key_id
