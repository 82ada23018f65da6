"""The shapes of the answers the gateway builds itself on the sign-in, user, routing, warm-up, system and seed
routes, as msgspec types for the OpenAPI document (the routes build them as plain JSON)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from switchyard_gateway.contracts import events as e
from switchyard_gateway.contracts.messages import ApplyTemplate, CircuitView
from switchyard_gateway.contracts.routing import CircuitState
from switchyard_gateway.contracts.users import UserView

Json = dict[str, Any]
Status = Literal["ok", "error"]


def _resource(name: str, event: type[msgspec.Struct], *extra: tuple[str, Any, Any],
              hidden: tuple[str, ...] = ()) -> type[msgspec.Struct]:
    """A registry resource as the admin API shows it: the fields of the event that records it (the event's own
    id and time, and what is never shown, left out), when it last changed, and what the API adds."""
    own = [(f.name, f.type, f.default) for f in msgspec.structs.fields(event)
           if f.name not in ("event_id", "occurred_at", *hidden)]
    return msgspec.defstruct(name, [*own, ("updated_at", str | None, None), ("version", str | None, None), *extra],
                             kw_only=True,
                             module=__name__)


Tenant = _resource("Tenant", e.TenantCreated)
Provider = _resource("Provider", e.ProviderRegistered)
Endpoint = _resource("Endpoint", e.EndpointRegistered, ("discovered_models", list[str], []),
                     ("serving_models", list[str], []))
Model = _resource("Model", e.ModelRegistered)
Assignment = _resource("Assignment", e.TenantModelAssigned)
Key = _resource("Key", e.KeyIssued, ("revoked", bool, False), hidden=("key_sha256",))


class ProbeView(msgspec.Struct, omit_defaults=True):
    """A real, unbilled probe of one endpoint: its latency and what it advertises, or the error."""

    success: bool
    latency_ms: float
    endpoint_id: str | None = None
    error: str | None = None
    code: Literal["CONNECTIVITY_ERROR"] | None = None
    status: int | None = None
    models: list[str] | None = None
    loaded: list[str] | None = None
    version: str | None = None
    tested_at: str | None = None


class ProviderTest(msgspec.Struct):
    provider_id: str
    success: bool
    endpoints: list[ProbeView]


class Refreshed(msgspec.Struct):
    """A probe round of every endpoint: how many answered and how many model sets it found changed."""

    probed: int
    healthy: int
    discovered: int
    endpoints: list[ProbeView]


class EndpointStatus(msgspec.Struct):
    endpoint_id: str
    circuit: CircuitState | Literal["unknown"]
    provider_id: str
    base_url: str
    credential_missing: bool
    healthy: bool | None                       # None: never probed yet
    circuit_reason: str | None = None
    circuit_since: str | None = None
    probe: Json | None = None                  # the router's last probe: ok, latency_ms, error, models, loaded, at


class RegistryStatus(msgspec.Struct):
    counts: dict[str, int]
    position: int
    changed_at: str | None
    last_refresh: str | None
    endpoints: list[EndpointStatus]
    database: Json | None = None


class CircuitReset(msgspec.Struct, omit_defaults=True):
    endpoint_id: str
    state: CircuitState
    previous: CircuitState
    reason: str = ""


class ProviderBreaker(CircuitView, frozen=True):
    provider: str | None = None


class ProviderBreakers(msgspec.Struct):
    circuit_breakers: dict[str, ProviderBreaker]


class ProviderReset(msgspec.Struct):
    provider: str
    reset: list[CircuitReset]


class UserChange(msgspec.Struct, omit_defaults=True):
    """What a user command did, and the user as it now stands (none once removed)."""

    changed: bool
    user: UserView | None = None


_NAMED = ("template", "endpoint_id", "provider_id", "display_name")
# What a template application may change of the template's settings: ApplyTemplate's other fields.
Customizations = msgspec.defstruct(
    "Customizations", [(f.name, f.type, f.default) for f in msgspec.structs.fields(ApplyTemplate)
                       if f.name not in _NAMED], kw_only=True, module=__name__)


class TemplateApply(msgspec.Struct, omit_defaults=True):
    """An endpoint (and its provider, if new) from a template; the customizations may also sit at the top."""

    endpoint_id: str
    provider_id: str | None = None
    display_name: str | None = None
    customizations: Customizations | None = None  # type: ignore[valid-type]


class WarmedOn(msgspec.Struct):
    endpoint_id: str
    success: bool
    duration_ms: float
    status: int | None
    error: str | None
    upstream_model: str
    warmed_at: str


class WarmupReport(msgspec.Struct):
    model: str | None
    success: bool
    warmed: int
    duration_ms: float
    endpoints: list[WarmedOn]


class ModelTest(msgspec.Struct):
    model_id: str
    success: bool
    latency_ms: float
    endpoint_id: str
    status: int | None
    error: str | None
    code: Literal["CONNECTIVITY_ERROR"] | None
    tested_at: str
    attempts: list[WarmedOn]


class CatalogModel(msgspec.Struct):
    id: str
    model_id: str
    model_name: str
    provider: str | None
    providers: list[str]
    model_type: str
    aliases: list[str]
    context_length: int | None
    input_price_per_1m: float
    is_available: bool


class EmbeddingCatalog(msgspec.Struct):
    models: list[CatalogModel]
    count: int


class TenantModelView(msgspec.Struct):
    tenant_id: str
    model_id: str
    enabled: bool
    is_default: bool
    priority: int
    monthly_quota: int | None
    daily_quota: int | None


class EmbeddingsHealth(msgspec.Struct, omit_defaults=True):
    """healthy, degraded or unhealthy (503); an operator also sees each model and the active requests."""

    status: Literal["healthy", "degraded", "unhealthy"]
    service: str
    timestamp: str
    models: dict[str, Json] | None = None
    active_requests: int | None = None


class EmbeddingFigures(msgspec.Struct):
    requests_total: int
    errors_total: int
    input_tokens: int
    cost_usd: float
    available: bool


class EmbeddingsMetrics(msgspec.Struct):
    models: dict[str, EmbeddingFigures]
    active_requests: int
    timestamp: str


class Dependency(msgspec.Struct, omit_defaults=True):
    status: Status
    latency_ms: float | None = None
    detail: str | None = None
    server: str | None = None


class SystemStatus(msgspec.Struct):
    """Every dependency and service, each ok or error with why (503 unless all are ok)."""

    status: Status
    uptime_s: float
    nats: Dependency
    database: Dependency
    valkey: Dependency
    services: dict[str, Json]
    registry: Json
