"""What each public route takes and answers, for the OpenAPI document: one table, keyed by method and path.

Routes are found, not listed here (services/gateway/openapi/document.py walks Litestar's routes and the
RSGI inference routes); this table only adds their request and answer types. A route it does not name
is still documented, with its handler's docstring and any JSON answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from switchyard_gateway.catalog.templates import Template
from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts.metering import ModelStats, RollupReply, TokenCountsReply
from switchyard_gateway.contracts.quota import LimitsReply, LimitsUpdate, QuotasReply, SetLimitsReply, UsageReply
from switchyard_gateway.contracts.users import UserView
from switchyard_gateway.services.gateway.api.embedding_seeds import TenantModel
from switchyard_gateway.services.gateway.api.monitoring import RollupRequest, StatsRequest
from switchyard_gateway.services.gateway.api.sign_in import LoginRequest, LogoutRequest, Me, RefreshRequest, SignedOut
from switchyard_gateway.services.gateway.api.users import UserCreate, UserUpdate
from switchyard_gateway.services.gateway.api.warmup import WarmupRequest
from switchyard_gateway.services.gateway.edge.tokens import TokenPair
from switchyard_gateway.services.gateway.openapi import answers as r
from switchyard_gateway.services.gateway.openapi import shapes as s
from switchyard_gateway.services.gateway.translate import anthropic_wire as a
from switchyard_gateway.services.gateway.translate import responses_conversations as c
from switchyard_gateway.services.gateway.translate import responses_wire as rw

Json = dict[str, Any]
Auth = Literal["key", "admin", "none", "door"]       # door: a key, or none under the anonymous tenant


@dataclass(frozen=True)
class Operation:
    """One route's documentation: its JSON body and answer types (None: none, or any JSON)."""

    summary: str
    request: Any = None
    response: Any = None
    status: int = 200
    also: tuple[int, ...] = ()           # other statuses it answers with the same body (200 when nothing was new)
    content_type: str = "application/json"
    streams: str | None = None           # also answers in this content type (a stream)
    events: Any = None                   # the JSON each server-sent event carries (text/event-stream); a tuple: any of
    auth: Auth = "key"
    query: dict[str, Any] = field(default_factory=dict)   # query parameter -> type
    drop: tuple[str, ...] = ()           # fields of `request` the route fills itself (path, mode, tags)


# a list of the registry's, a page at a time (the answer's X-Has-More, X-Next-After and Link say how to go on)
PAGED = {"limit": Annotated[int, Meta(ge=1, le=1000)], "after": Annotated[str, Meta(max_length=1024)],
         "q": Annotated[str, Meta(max_length=200)]}


# --- answers the gateway builds itself ------------------------------------------------------------------


class CommandResult(msgspec.Struct, omit_defaults=True):
    """What an admin change did: `changed`, the resource as it now stands and how many events it recorded; a
    new key is shown here once."""

    changed: bool
    resource: Json | None = None
    events: int | None = None
    key: str | None = None
    key_id: str | None = None


class Imported(msgspec.Struct):
    """What an import did: whether anything changed, how many events it recorded, and counts per kind of resource
    (`providers`, `models`, `endpoints`, `tenants`, `assignments`)."""

    changed: bool
    events: int
    summary: dict[str, m.KindCounts]


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


class PlainError(msgspec.Struct):
    """The admin and monitoring routes' errors: `{"error": "<message>"}`, or `{"error": {"code", "message",
    "field"}}` when a service refused."""

    error: str | m.ErrorBody


class AdminError(msgspec.Struct):
    """Sign-in's errors (`/api/auth/*`) and the admin guard's: `{"error": {"code", "message", "field"}}`."""

    error: m.ErrorBody


ERRORS: dict[str, Any] = {"openai": s.OpenAIError, "ollama": s.OllamaError, "anthropic": a.ErrorResponse,
                          "admin": AdminError, "plain": PlainError}


# --- the table --------------------------------------------------------------------------------------------

_NDJSON, _SSE = "application/x-ndjson", "text/event-stream"
_CHUNKS = (s.CompletionChunk, s.OpenAIError)        # a stream cut by the upstream ends with an error event


def _crud(resource: str, item: str, create: type, what: str, shown: Any) -> dict[tuple[str, str], Operation]:
    base, one = f"/api/admin/{resource}", f"/api/admin/{resource}/{{item_id}}"
    return {
        ("GET", base): Operation(f"List {what}s, a page at a time", response=list[shown], auth="admin", query=PAGED),
        ("POST", base): Operation(f"Create a {what} (409 if it exists)", create, CommandResult, 201, (200,),
                                  auth="admin", drop=("mode", "if_match")),
        ("GET", one): Operation(f"One {what}", response=shown, auth="admin"),
        ("PUT", one): Operation("Change the fields the body names (404 if missing; with `if_match`, a version read "
                                "before, 409 CHANGED if it changed since)", create, CommandResult,
                                auth="admin", drop=("mode", item)),
        ("DELETE", one): Operation(f"Remove a {what}", response=CommandResult, auth="admin"),
    }


# A route that serves several operations under one path pattern, documented as each of them.
SPLIT: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
    ("POST", "/api/admin/models/{item}"): (("POST", "/api/admin/models/warmup"),
                                           ("POST", "/api/admin/models/{model_id}/test")),
    ("PUT", "/api/admin/tenants/{tenant_id}/models/{model_id}"): (
        ("PUT", "/api/admin/tenants/{tenant_id}/models/{model_id}"),
        ("PUT", "/api/admin/tenants/{tenant_id}/models/{model_id}/limits")),
}


def _both(bases: tuple[str, str], ops: dict[tuple[str, str], Operation]) -> dict[tuple[str, str], Operation]:
    """The same operations under a route's two spellings."""
    return {(method, base + rest): op for base in bases for (method, rest), op in ops.items()}


def _aliased(bases: tuple[str, str], ops: dict[tuple[str, str, str], Operation]) -> dict[tuple[str, str], Operation]:
    """Operations whose two spellings differ in their last part too (`/registry/status`, `/providers/registry-status`)."""
    return {(method, base + rest): op for (method, *rests), op in ops.items()
            for base, rest in zip(bases, rests, strict=True)}


OPERATIONS: dict[tuple[str, str], Operation] = {
    # OpenAI
    ("POST", "/v1/chat/completions"): Operation("Chat completion (OpenAI)", s.ChatCompletionRequest,
                                                s.ChatCompletion, streams=_SSE, events=_CHUNKS, auth="door"),
    ("POST", "/v1/completions"): Operation("Text completion (OpenAI)", s.CompletionRequest, s.Completion,
                                           streams=_SSE, events=_CHUNKS, auth="door"),
    ("POST", "/v1/embeddings"): Operation("Embeddings (OpenAI)", s.EmbeddingRequest, s.EmbeddingList, auth="door"),
    ("POST", "/v1/responses"): Operation("Responses (OpenAI), translated to chat completions; each kept a while to "
                                         "continue (`previous_response_id`) or refer to (`item_reference`)",
                                         rw.ResponsesRequest, rw.Response, streams=_SSE, events=rw.StreamEvent,
                                         auth="door"),
    ("GET", "/v1/responses/{response_id}"): Operation("A kept Response, as it was answered (OpenAI; `stream=true` is "
                                                      "refused)", response=rw.Response, auth="door",
                                                      query={"stream": bool}),
    ("DELETE", "/v1/responses/{response_id}"): Operation("Delete a kept Response and its output items (OpenAI)",
                                                         response=rw.ResponseDeleted, auth="door"),
    ("GET", "/v1/responses/{response_id}/input_items"): Operation(
        "The items a kept Response was made from, a page at a time (OpenAI)", response=rw.InputItemList,
        auth="door", query={"limit": Annotated[int, Meta(ge=1, le=100)], "order": Literal["asc", "desc"],
                            "after": str, "before": str}),
    ("POST", "/v1/responses/input_tokens"): Operation("Count a Responses request's prompt tokens (OpenAI)",
                                                      rw.ResponsesRequest, rw.InputTokens, auth="door"),
    ("POST", "/v1/conversations"): Operation("A new conversation, with its first items (OpenAI)", c.ConversationCreate,
                                             c.Conversation, auth="door"),
    ("GET", "/v1/conversations/{conversation_id}"): Operation("A kept conversation (OpenAI)",
                                                              response=c.Conversation, auth="door"),
    ("POST", "/v1/conversations/{conversation_id}"): Operation("Set a conversation's metadata (OpenAI)",
                                                               c.ConversationUpdate, c.Conversation, auth="door"),
    ("DELETE", "/v1/conversations/{conversation_id}"): Operation(
        "Delete a conversation; its items stay until they expire (OpenAI)", response=c.ConversationDeleted,
        auth="door"),
    ("GET", "/v1/conversations/{conversation_id}/items"): Operation(
        "A conversation's items, a page at a time (OpenAI)", response=c.ConversationItemList, auth="door",
        query={"limit": Annotated[int, Meta(ge=1, le=100)], "order": Literal["asc", "desc"], "after": str,
               "include": c.Included}),
    ("POST", "/v1/conversations/{conversation_id}/items"): Operation(
        "Add items after a conversation's last: the items added, each with its id (OpenAI)", c.ItemsCreate,
        c.ConversationItemList, auth="door", query={"include": c.Included}),
    ("GET", "/v1/conversations/{conversation_id}/items/{item_id}"): Operation(
        "One of a conversation's items (OpenAI)", response=c.ConversationItem, auth="door",
        query={"include": c.Included}),
    ("DELETE", "/v1/conversations/{conversation_id}/items/{item_id}"): Operation(
        "Take an item off a conversation: the conversation (OpenAI)", response=c.Conversation, auth="door"),
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
    ("GET", "/api/version"): Operation("The Ollama release whose API the door speaks (no key needed)",
                                       response=s.OllamaVersion, auth="none"),
    ("POST", "/api/show"): Operation("One model's details and capabilities (Ollama)", s.OllamaShowRequest,
                                     s.OllamaShowResponse, auth="door"),
    ("GET", "/ws"): Operation("Embeddings over a WebSocket: a `/v1/embeddings` body and an `id` per message, "
                              "answers by `id` (README, WebSocket embeddings); without `Upgrade: websocket`, 426",
                              status=101),
    # monitoring
    ("GET", "/openapi.json"): Operation("This document", response=Json, auth="none"),
    ("GET", "/docs"): Operation("The API reference (Swagger UI over this document)", response=str,
                                content_type="text/html", auth="none"),
    ("GET", "/health"): Operation("The gateway, its endpoints and its services (503 unless all are healthy)",
                                  response=HealthReport, also=(503,), auth="none"),
    ("GET", "/health/live"): Operation("This process and its connections (503: not connected)", response=Liveness,
                                       also=(503,), auth="none"),
    ("GET", "/metrics"): Operation("Prometheus metrics (an admin key's alone with SWITCHYARD_METRICS_AUTH=admin)",
                                   response=str, content_type="text/plain", auth="none"),
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
    **_crud("tenants", "tenant_id", m.CreateTenant, "tenant", r.Tenant),
    **_crud("providers", "provider_id", m.RegisterProvider, "provider", r.Provider),
    **_crud("endpoints", "endpoint_id", m.RegisterEndpoint, "endpoint", r.Endpoint),
    **_crud("models", "model_id", m.RegisterModel, "model", r.Model),
    ("POST", "/api/admin/tenants/{tenant_id}/keys"): Operation("Issue a key (shown once)", m.IssueKey, CommandResult,
                                                               201, auth="admin", drop=("tenant_id",)),
    ("GET", "/api/admin/tenants/{tenant_id}/keys"): Operation("A tenant's keys (never the secrets)",
                                                              response=list[r.Key], auth="admin", query=PAGED),
    ("DELETE", "/api/admin/keys/{key_id}"): Operation("Revoke a key", response=CommandResult, auth="admin"),
    ("POST", "/api/admin/tenants/{tenant_id}/models"): Operation("Assign a model to a tenant", m.AssignModel,
                                                                 CommandResult, 201, auth="admin",
                                                                 drop=("tenant_id", "mode")),
    ("GET", "/api/admin/tenants/{tenant_id}/models"): Operation("A tenant's assignments",
                                                                response=list[r.Assignment], auth="admin",
                                                                query=PAGED),
    ("GET", "/api/admin/tenants/{tenant_id}/models/{model_id}"): Operation("One assignment", response=r.Assignment,
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
    ("POST", "/api/admin/endpoints/{endpoint_id}/test"): Operation("Probe an endpoint now", response=r.ProbeView,
                                                                   auth="admin"),
    ("GET", "/api/admin/registry/export"): Operation("The registry as a document (YAML with `format=yaml`)",
                                                     response=Json, streams="application/yaml", auth="admin",
                                                     query={"format": Literal["json", "yaml"]}),
    ("POST", "/api/admin/registry/import"): Operation("Apply a registry document (the export's shape, JSON or YAML), "
                                                      "all or nothing", Json, Imported, auth="admin"),
    ("POST", "/api/admin/providers/{provider_id}/test"): Operation("Probe every endpoint of a provider now",
                                                                   response=r.ProviderTest, auth="admin"),
    **_aliased(("/api/admin/registry", "/api/admin/providers"), {
        ("GET", "/status", "/registry-status"): Operation("Counts, log position, and each endpoint's breaker and "
                                                          "last probe", response=r.RegistryStatus, auth="admin"),
        ("POST", "/refresh", "/refresh-registry"): Operation("Probe every endpoint now", response=r.Refreshed,
                                                             auth="admin")}),
    **_both(("/api/admin/circuits", "/api/admin/circuit-breakers"), {
        ("GET", ""): Operation("Every endpoint's breaker", response=list[m.CircuitView], auth="admin"),
        ("GET", "/{endpoint_id}"): Operation("One endpoint's breaker", response=m.CircuitView, auth="admin"),
        ("POST", "/{endpoint_id}/reset"): Operation("Close a breaker now", response=r.CircuitReset, auth="admin")}),
    **_both(("/api/admin/templates", "/api/admin/provider-templates"), {
        ("GET", ""): Operation("Provider templates", response=list[Template], auth="admin", query=PAGED),
        ("GET", "/{name}"): Operation("One provider template", response=Template, auth="admin"),
        ("POST", "/{name}/apply"): Operation("Register an endpoint (and its provider, if new) from a template",
                                             r.TemplateApply, CommandResult, 201, (200,), auth="admin")}),
    ("POST", "/api/admin/models/warmup"): Operation("Warm a model up on every endpoint serving it, or one",
                                                    WarmupRequest, r.WarmupReport, auth="admin"),
    ("POST", "/api/admin/models/{model_id}/test"): Operation("One real, unbilled call to a model",
                                                             response=r.ModelTest, auth="admin"),
    # users and sign-in
    ("GET", "/api/admin/users"): Operation("Users (never a password or its hash)", response=list[UserView],
                                           auth="admin", query={"tenant_id": str, **PAGED}),
    ("GET", "/api/admin/users/{username}"): Operation("One user", response=UserView, auth="admin"),
    ("POST", "/api/admin/users"): Operation("Create a user", UserCreate, r.UserChange, 201, (200,), auth="admin"),
    ("PUT", "/api/admin/users/{username}"): Operation("Change a user (a new password ends its sessions)", UserUpdate,
                                                      r.UserChange, auth="admin"),
    ("DELETE", "/api/admin/users/{username}"): Operation("Remove a user", response=r.UserChange, auth="admin"),
    ("POST", "/api/auth/login"): Operation("Sign in: access and refresh tokens", LoginRequest, TokenPair, auth="none"),
    ("POST", "/api/auth/refresh"): Operation("New access and refresh tokens; the refresh token sent is spent",
                                             RefreshRequest, TokenPair, auth="none"),
    ("POST", "/api/auth/logout"): Operation("Sign out a session (the refresh token's, else the access token's)",
                                            LogoutRequest, SignedOut, auth="none"),
    ("GET", "/api/auth/me"): Operation("Who the caller is", response=Me),
    # the seed systems' routes
    ("GET", "/api/system/health"): Operation("The gateway, its endpoints and its services (503 unless all are "
                                             "healthy)", response=HealthReport, also=(503,), auth="none"),
    ("GET", "/api/system/status"): Operation("Every dependency and service, each ok or error (503 unless all are "
                                             "ok)", response=r.SystemStatus, also=(503,), auth="admin"),
    ("GET", "/api/v1/embedding-models/catalog"): Operation("The embedding models the caller's tenant may use",
                                                           response=r.EmbeddingCatalog),
    ("POST", "/api/v1/tenant-models"): Operation("Enable a model for a tenant, with token quotas (200: it was)",
                                                 TenantModel, r.TenantModelView, 201, (200,), auth="admin",
                                                 query={"tenant_id": str}),
    ("PUT", "/api/v1/tenant-models/{model}"): Operation("Change a tenant's model and its token quotas", TenantModel,
                                                        r.TenantModelView, auth="admin", query={"tenant_id": str}),
    ("POST", "/api/v1/admin/discover-models"): Operation("Probe every endpoint now and record what they advertise",
                                                         response=r.Refreshed, auth="admin"),
    ("GET", "/api/v1/embeddings/health"): Operation("Whether every embedding model can be served (503: none can)",
                                                    response=r.EmbeddingsHealth, also=(503,), auth="none"),
    ("GET", "/api/v1/embeddings/metrics"): Operation("Calls, errors, tokens and cost per embedding model",
                                                     response=r.EmbeddingsMetrics, auth="admin"),
    ("GET", "/api/v1/embeddings/circuit-breakers"): Operation("Every breaker, with its provider",
                                                              response=r.ProviderBreakers, auth="admin"),
    ("POST", "/api/v1/embeddings/circuit-breakers/{name}/reset"): Operation(
        "Close an endpoint's breaker, or every breaker of a provider", response=r.ProviderReset, auth="admin"),
    ("POST", "/api/v1/embeddings/models/warmup"): Operation("Warm a model up on a provider's endpoints",
                                                            WarmupRequest, r.WarmupReport, auth="admin"),
}

