"""Request/reply messages between services: registry commands and queries, metering queries.

Errors travel in the `Nats-Service-Error` / `Nats-Service-Error-Code` headers
(the code is an HTTP status); the body then holds an `ErrorBody`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from libs.contracts.events import ModelKind, ProviderKind, RegistryEvent, Role


class ErrorBody(msgspec.Struct, frozen=True, omit_defaults=True):
    """What went wrong, for a person: a stable code, a sentence, and the field at fault."""

    code: str
    message: str
    field: str | None = None


# --- registry commands (tag field "command") -----------------------------------


class Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="command"):
    """A request to change the registry; it becomes zero or more events."""


class CreateTenant(Command, frozen=True, tag="create_tenant"):
    tenant_id: str
    display_name: str = ""
    all_models: bool = True
    fallback_on_quota: bool = False


class RemoveTenant(Command, frozen=True, tag="remove_tenant"):
    tenant_id: str


class RegisterProvider(Command, frozen=True, tag="register_provider"):
    provider_id: str
    kind: ProviderKind
    display_name: str = ""


class RemoveProvider(Command, frozen=True, tag="remove_provider"):
    provider_id: str


class RegisterEndpoint(Command, frozen=True, tag="register_endpoint"):
    endpoint_id: str
    provider_id: str
    base_url: str
    models: tuple[str, ...] = ()
    api_key_ref: str = ""
    priority: int = 0
    weight: int = 1
    max_concurrent: int = 0
    timeout_s: float = 300.0


class RemoveEndpoint(Command, frozen=True, tag="remove_endpoint"):
    endpoint_id: str


class RegisterModel(Command, frozen=True, tag="register_model"):
    model_id: str
    kind: ModelKind = "chat"
    aliases: tuple[str, ...] = ()
    context_length: int = 0
    input_price_per_1m: float = 0.0
    output_price_per_1m: float = 0.0
    fallback_model: str = ""


class RemoveModel(Command, frozen=True, tag="remove_model"):
    model_id: str


class AssignModel(Command, frozen=True, tag="assign_model"):
    tenant_id: str
    model_id: str
    enabled: bool = True
    is_default: bool = False
    priority: int = 0
    input_price_per_1m: float | None = None
    output_price_per_1m: float | None = None
    fallback_model: str = ""


class IssueKey(Command, frozen=True, tag="issue_key"):
    """Issue a key. `secret` lets an operator supply the key (e.g. from the
    environment); otherwise the registry generates one. Either way it is hashed
    at once and returned only in this reply."""

    tenant_id: str
    role: Role = "member"
    name: str = ""
    expires_at: datetime | None = None
    secret: str | None = None


class RevokeKey(Command, frozen=True, tag="revoke_key"):
    key_id: str


AnyCommand = (
    CreateTenant | RemoveTenant | RegisterProvider | RemoveProvider | RegisterEndpoint
    | RemoveEndpoint | RegisterModel | RemoveModel | AssignModel | IssueKey | RevokeKey
)


class CommandReply(msgspec.Struct, frozen=True, omit_defaults=True):
    """The events a command recorded (none when it changed nothing) and, for a new key, the key once."""

    events: list[RegistryEvent] = []
    key: str | None = None
    key_id: str | None = None


# --- queries -------------------------------------------------------------------

Resource = Literal["tenants", "providers", "endpoints", "models", "keys", "assignments"]


class RegistryQuery(msgspec.Struct, frozen=True, omit_defaults=True):
    """Read registry state: one resource kind, optionally one item or one tenant's."""

    resource: Resource
    id: str | None = None
    tenant_id: str | None = None


class TokenCountsQuery(msgspec.Struct, frozen=True, omit_defaults=True):
    """Token totals per endpoint and model; `tenant_id` limits them to one tenant."""

    tenant_id: str | None = None


class TokenCount(msgspec.Struct, frozen=True):
    endpoint: str
    model: str
    input_tokens: int
    output_tokens: int
    total_tokens: int
    calls: int


class TokenCountsReply(msgspec.Struct, frozen=True):
    total_tokens: int
    breakdown: list[TokenCount]
