"""What each public route takes and answers, for the OpenAPI document: one table, keyed by method and path.

Routes are found, not listed here (services/gateway/openapi/document.py walks Litestar's routes and the
RSGI inference routes); this table only adds their request and answer types. A route it does not name
is still documented, with its handler's docstring and any JSON answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts.metering import ModelStats, RollupReply, TokenCountsReply
from switchyard_gateway.contracts.quota import LimitsReply, LimitsUpdate, QuotasReply, SetLimitsReply, UsageReply
from switchyard_gateway.services.gateway.api.monitoring import RollupRequest, StatsRequest
from switchyard_gateway.services.gateway.openapi import shapes as s
from switchyard_gateway.services.gateway.translate import anthropic_wire as a

Json = dict[str, Any]
Auth = Literal["key", "admin", "none", "door"]       # door: a key, or none under the anonymous tenant


@dataclass(frozen=True)
class Operation:
    """One route's documentation: its JSON body and answer types (None: none, or any JSON)."""

    summary: str
    request: Any = None
    response: Any = None
    status: int = 200
    content_type: str = "application/json"
    streams: str | None = None           # also answers in this content type (a stream)
    events: Any = None                   # the JSON each server-sent event carries (text/event-stream); a tuple: any of
    auth: Auth = "key"
    query: dict[str, Any] = field(default_factory=dict)   # query parameter -> type
    drop: tuple[str, ...] = ()           # fields of `request` the route fills itself (path, mode, tags)


# --- answers the gateway builds itself ------------------------------------------------------------------


class CommandResult(msgspec.Struct, omit_defaults=True):
    """What an admin change did: `changed`, the resource as it now stands and how many events it recorded; a
    new key is shown here once."""

    changed: bool
    resource: Json | None = None
    events: int | None = None
    key: str | None = None
    key_id: str | None = None


class UsageCounts(msgspec.Struct):
    usage_counts: dict[str, dict[str, int]]
    token_usage_counts: dict[str, dict[str, int]]


class LiveUsage(msgspec.Struct):
    """One event of /api/usage-stream: the seed's counts and the calls just recorded."""

    usage_counts: dict[str, dict[str, int]]
    token_usage_counts: dict[str, dict[str, int]]
    recorded: list[Json]


class ConfigEndpoint(msgspec.Struct, omit_defaults=True):
    id: str
    url: str
    provider: str
    models: list[str]
    priority: int
    status: Literal["ok", "error", "unknown"]
    weight: int | None = None
    max_concurrent: int | None = None
    timeout_s: float | None = None
    version: str | None = None
    detail: str | None = None
    circuit: str | None = None


class ConfigReply(msgspec.Struct):
    endpoints: list[ConfigEndpoint]


class HealthReport(msgspec.Struct):
    """Statuses for anyone; details for an admin key."""

    status: Literal["ok", "error"]
    gateway: Json
    endpoints: dict[str, Json]
    services: dict[str, Json]


class Liveness(msgspec.Struct):
    status: Literal["ok", "error"]
    service: str
    checks: dict[str, bool]


class ProbeView(msgspec.Struct, omit_defaults=True):
    success: bool
    latency_ms: float
    endpoint_id: str | None = None
    error: str | None = None
    status: int | None = None
    models: list[str] | None = None
    loaded: list[str] | None = None
    version: str | None = None


class PlainError(msgspec.Struct):
    """The admin and monitoring routes' errors: `{"error": "<message>"}`, or `{"error": {"code", "message",
    "field"}}` when a service refused."""

    error: str | m.ErrorBody


ERRORS: dict[str, Any] = {"openai": s.OpenAIError, "ollama": s.OllamaError, "anthropic": a.ErrorResponse,
                          "plain": PlainError}


# --- the table --------------------------------------------------------------------------------------------

_NDJSON, _SSE = "application/x-ndjson", "text/event-stream"
_CHUNKS = (s.CompletionChunk, s.OpenAIError)        # a stream cut by the upstream ends with an error event


def _crud(resource: str, item: str, create: type, what: str) -> dict[tuple[str, str], Operation]:
    base, one = f"/api/admin/{resource}", f"/api/admin/{resource}/{{item_id}}"
    return {
        ("GET", base): Operation(f"List {what}s", response=list[Json], auth="admin"),
        ("POST", base): Operation(f"Create a {what} (409 if it exists)", create, CommandResult, 201, auth="admin",
                                  drop=("mode",)),
        ("GET", one): Operation(f"One {what}", response=Json, auth="admin"),
        ("PUT", one): Operation(f"Change the fields the body names (404 if missing)", create, CommandResult,
                                auth="admin", drop=("mode", item)),
        ("DELETE", one): Operation(f"Remove a {what}", response=CommandResult, auth="admin"),
    }


OPERATIONS: dict[tuple[str, str], Operation] = {
    # OpenAI
    ("POST", "/v1/chat/completions"): Operation("Chat completion (OpenAI)", s.ChatCompletionRequest,
                                                s.ChatCompletion, streams=_SSE, events=_CHUNKS, auth="door"),
    ("POST", "/v1/completions"): Operation("Text completion (OpenAI)", s.CompletionRequest, s.Completion,
                                           streams=_SSE, events=_CHUNKS, auth="door"),
    ("POST", "/v1/embeddings"): Operation("Embeddings (OpenAI)", s.EmbeddingRequest, s.EmbeddingList, auth="door"),
    ("GET", "/v1/models"): Operation("The models the caller's tenant may use", response=s.ModelList, auth="door"),
    ("GET", "/v1/models/{model_id}"): Operation("One model, by id or alias", response=s.Model, auth="door"),
    # Anthropic
    ("POST", "/v1/messages"): Operation("Messages (Anthropic)", a.MessagesRequest, a.MessagesResponse, streams=_SSE,
                                        events=a.StreamEvent, auth="door"),
    ("POST", "/v1/messages/count_tokens"): Operation("Count a prompt's tokens (Anthropic)", a.CountTokensRequest,
                                                     a.CountTokensResponse, auth="door"),
    # Ollama
    ("GET", "/"): Operation("Ollama's liveness answer", response=str, content_type="text/plain", auth="none"),
    ("HEAD", "/"): Operation("Ollama's liveness answer, headers only", auth="none"),
    ("POST", "/api/chat"): Operation("Chat (Ollama); NDJSON unless `stream` is false", s.OllamaChatRequest,
                                     s.OllamaChatResponse, streams=_NDJSON, auth="door"),
    ("POST", "/api/generate"): Operation("Generate (Ollama); NDJSON unless `stream` is false",
                                         s.OllamaGenerateRequest, s.OllamaGenerateResponse, streams=_NDJSON,
                                         auth="door"),
    ("POST", "/api/embed"): Operation("Embeddings (Ollama)", s.OllamaEmbedRequest, s.OllamaEmbedResponse, auth="door"),
    ("POST", "/api/embeddings"): Operation("One embedding (Ollama, older form)", s.OllamaEmbeddingsRequest,
                                           s.OllamaEmbeddingsResponse, auth="door"),
    ("GET", "/api/tags"): Operation("The models the caller's tenant may use (Ollama)", response=s.OllamaModelList,
                                    auth="door"),
    ("GET", "/api/ps"): Operation("The models endpoints hold loaded (Ollama)", response=s.OllamaModelList,
                                  auth="door"),
    ("GET", "/api/version"): Operation("The Ollama API version spoken", response=s.OllamaVersion, auth="door"),
    ("POST", "/api/show"): Operation("One model's details and capabilities (Ollama)", s.OllamaShowRequest,
                                     s.OllamaShowResponse, auth="door"),
    # monitoring
    ("GET", "/openapi.json"): Operation("This document", response=Json, auth="none"),
    ("GET", "/docs"): Operation("The API reference (Swagger UI over this document)", response=str,
                                content_type="text/html", auth="none"),
    ("GET", "/health"): Operation("The gateway, its endpoints and its services", response=HealthReport,
                                  auth="none"),
    ("GET", "/health/live"): Operation("This process and its connections", response=Liveness, auth="none"),
    ("GET", "/metrics"): Operation("Prometheus metrics", response=str, content_type="text/plain", auth="none"),
    ("GET", "/api/token_counts"): Operation("Token totals per endpoint and model", response=TokenCountsReply),
    ("GET", "/api/usage"): Operation("Calls in flight and tokens per endpoint and model (Prometheus text with "
                                     "`format=prometheus`)", response=UsageCounts, streams="text/plain",
                                     query={"format": Literal["json", "prometheus"]}),
    ("POST", "/api/stats"): Operation("One model's figures and time series", StatsRequest, ModelStats),
    ("POST", "/api/aggregate_time_series_days"): Operation("Show old minutes by day (and trim them)", RollupRequest,
                                                           RollupReply, auth="admin"),
    ("GET", "/api/config"): Operation("The endpoints routed to, with their health", response=ConfigReply),
    ("GET", "/api/usage-stream"): Operation("Live usage (Server-Sent Events)", content_type=_SSE, events=LiveUsage),
    ("GET", "/api/v1/tenant-models/quotas"): Operation("Every limit of a tenant and its use", response=QuotasReply,
                                                       query={"tenant_id": str}),
    ("GET", "/api/v1/tenant-models/usage"): Operation(
        "A tenant's settled usage this calendar period", response=UsageReply,
        query={"period": Literal["day", "week", "month"], "model_id": str, "tenant_id": str}),
    # admin
    **_crud("tenants", "tenant_id", m.CreateTenant, "tenant"),
    **_crud("providers", "provider_id", m.RegisterProvider, "provider"),
    **_crud("endpoints", "endpoint_id", m.RegisterEndpoint, "endpoint"),
    **_crud("models", "model_id", m.RegisterModel, "model"),
    ("POST", "/api/admin/tenants/{tenant_id}/keys"): Operation("Issue a key (shown once)", m.IssueKey, CommandResult,
                                                               201, auth="admin", drop=("tenant_id",)),
    ("GET", "/api/admin/tenants/{tenant_id}/keys"): Operation("A tenant's keys (never the secrets)",
                                                              response=list[Json], auth="admin"),
    ("DELETE", "/api/admin/keys/{key_id}"): Operation("Revoke a key", response=CommandResult, auth="admin"),
    ("POST", "/api/admin/tenants/{tenant_id}/models"): Operation("Assign a model to a tenant", m.AssignModel,
                                                                 CommandResult, 201, auth="admin",
                                                                 drop=("tenant_id", "mode")),
    ("GET", "/api/admin/tenants/{tenant_id}/models"): Operation("A tenant's assignments", response=list[Json],
                                                                auth="admin"),
    ("GET", "/api/admin/tenants/{tenant_id}/models/{model_id}"): Operation("One assignment", response=Json,
                                                                           auth="admin"),
    ("PUT", "/api/admin/tenants/{tenant_id}/models/{model_id}"): Operation(
        "Change an assignment", m.AssignModel, CommandResult, auth="admin", drop=("tenant_id", "model_id", "mode")),
    ("DELETE", "/api/admin/tenants/{tenant_id}/models/{model_id}"): Operation("Unassign a model",
                                                                              response=CommandResult, auth="admin"),
    ("PUT", "/api/admin/tenants/{tenant_id}/limits"): Operation("Set a tenant's limits", LimitsUpdate,
                                                                SetLimitsReply, auth="admin"),
    ("PUT", "/api/admin/tenants/{tenant_id}/models/{model_id}/limits"): Operation(
        "Set the limits of one of a tenant's models", LimitsUpdate, SetLimitsReply, auth="admin"),
    ("GET", "/api/admin/tenants/{tenant_id}/limits"): Operation("A tenant's limits", response=LimitsReply,
                                                                auth="admin"),
    ("POST", "/api/admin/endpoints/{endpoint_id}/test"): Operation("Probe an endpoint now", response=ProbeView,
                                                                   auth="admin"),
    ("GET", "/api/admin/registry/export"): Operation("The registry as a document (YAML with `format=yaml`)",
                                                     response=Json, streams="application/yaml", auth="admin",
                                                     query={"format": Literal["json", "yaml"]}),
}

