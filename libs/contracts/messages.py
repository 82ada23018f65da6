"""Request/reply messages between services: registry commands and queries, router commands and
queries (metering's are in `metering`, quota's in `quota`).

Errors travel in the `Nats-Service-Error` / `Nats-Service-Error-Code` headers
(the code is an HTTP status); the body then holds an `ErrorBody`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from switchyard_gateway.contracts.events import Capability, Instant, ModelKind, ProviderKind, RegistryEvent, Role
from switchyard_gateway.contracts.routing import CircuitState, EndpointModelsDiscovered, ModelWarmed, ProbeCompleted
from switchyard_gateway.contracts.users import UserEvent, UserView

# Bounds on what a user command may carry: anything longer is refused before it is looked at.
Username = Annotated[str, msgspec.Meta(max_length=64)]
Password = Annotated[str, msgspec.Meta(max_length=1024)]
DisplayName = Annotated[str, msgspec.Meta(max_length=200)]
TokenId = Annotated[str, msgspec.Meta(max_length=64)]


class Problem(msgspec.Struct, frozen=True):
    """One thing wrong with a document, at its path (`endpoints[1].base_url`)."""

    path: str
    message: str


class ErrorBody(msgspec.Struct, frozen=True, omit_defaults=True):
    """What went wrong, for a person: a stable code, a sentence, and the field at fault.

    `problems` lists every problem when a whole document was refused (an import).
    """

    code: str
    message: str
    field: str | None = None
    problems: list[Problem] | None = None


# --- registry commands (tag field "command") -----------------------------------


# How a register command treats an existing resource: replace it or create it (upsert, the default:
# repeating a command records nothing), create only (409 CONFLICT if it exists), update only (404 if not).
# `if_match`, on the same commands, is the event id of the resource's state the command was made from (an
# update merged over what was read): when the resource has changed since, 409 CHANGED, and nothing is recorded.
Mode = Literal["upsert", "create", "update"]


class Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="command"):
    """A request to change the registry; it becomes zero or more events."""


class CreateTenant(Command, frozen=True, tag="create_tenant"):
    tenant_id: str
    display_name: str = ""
    all_models: bool = True
    fallback_on_quota: bool = False
    mode: Mode = "upsert"
    if_match: str | None = None


class RemoveTenant(Command, frozen=True, tag="remove_tenant"):
    tenant_id: str


class RegisterProvider(Command, frozen=True, tag="register_provider"):
    provider_id: str
    kind: ProviderKind
    display_name: str = ""
    mode: Mode = "upsert"
    if_match: str | None = None


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
    first_byte_timeout_s: float | None = None
    warm_on_start: bool = False
    mode: Mode = "upsert"
    if_match: str | None = None


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
    cached_input_price_per_1m: float | None = None
    capabilities: tuple[Capability, ...] = ()
    mode: Mode = "upsert"
    if_match: str | None = None


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
    cached_input_price_per_1m: float | None = None
    mode: Mode = "upsert"
    if_match: str | None = None


class UnassignModel(Command, frozen=True, tag="unassign_model"):
    tenant_id: str
    model_id: str


class IssueKey(Command, frozen=True, tag="issue_key"):
    """Issue a key. `secret` lets an operator supply the key (e.g. from the
    environment); otherwise the registry generates one. Either way it is hashed
    at once and returned only in this reply."""

    tenant_id: str
    role: Role = "member"
    name: str = ""
    expires_at: Instant | None = None
    secret: str | None = None


class RevokeKey(Command, frozen=True, tag="revoke_key"):
    key_id: str


class ApplyTemplate(Command, frozen=True, tag="apply_template"):
    """Register a provider (if new) and an endpoint from a named template; every field not given
    takes the template's value."""

    template: str
    endpoint_id: str
    provider_id: str = ""               # "" = the template's name
    display_name: str = ""
    base_url: str = ""
    api_key_ref: str | None = None
    models: tuple[str, ...] | None = None
    priority: int | None = None
    weight: int | None = None
    max_concurrent: int | None = None
    timeout_s: float | None = None
    first_byte_timeout_s: float | None = None
    warm_on_start: bool | None = None


class RecordDiscoveredModels(Command, frozen=True, tag="record_discovered_models"):
    """The router's probe found these models on an endpoint (names normalised)."""

    endpoint_id: str
    models: tuple[str, ...] = ()


class ImportConfig(Command, frozen=True, tag="import_config"):
    """A whole registry document (the `switchyard.yaml` shape), validated and applied atomically:
    every resource is upserted, so importing the same document twice records nothing."""

    config: dict[str, Any]
    # answer `CommandReply.summary` (counts per kind) instead of every event recorded: an answer that always fits
    # one NATS message, whatever the document's size (every event of 7,000 tenants did not)
    summary: bool = False


class RecordWarmUp(Command, frozen=True, tag="record_warm_up"):
    """The router warmed a model on an endpoint (or tried to): recorded as a `model.warmed.v1` fact."""

    model_id: str
    endpoint_id: str
    ok: bool
    duration_ms: float = 0.0
    upstream_model: str = ""
    status: int = 0
    error: Annotated[str, msgspec.Meta(max_length=500)] = ""
    trigger: Literal["admin", "start", "test"] = "admin"
    router: str = ""


# --- users -----------------------------------------------------------------------


class CreateUser(Command, frozen=True, tag="create_user"):
    """Create a user; the registry hashes the password at once (Argon2id) and keeps only the hash."""

    username: Username
    tenant_id: str
    password: Password
    role: Role = "member"
    display_name: DisplayName = ""


class UpdateUser(Command, frozen=True, tag="update_user"):
    """Change what the command names of a user (404 if there is none); a new password is hashed at once."""

    username: Username
    tenant_id: str | None = None
    role: Role | None = None
    display_name: DisplayName | None = None
    password: Password | None = None


class RemoveUser(Command, frozen=True, tag="remove_user"):
    username: Username


class RevokeUserToken(Command, frozen=True, tag="revoke_user_token"):
    """End a user's session (by its id, the `sid` its refresh and access tokens carry): every token of it."""

    username: Username
    token_id: TokenId
    expires_at: Instant | None = None


class VerifyCredentials(Command, frozen=True, tag="verify_credentials"):
    """Check a username and password against the stored hash; records nothing. The reply carries the
    user and its credential version (`user_version`) on success; a wrong pair is a 401 `INVALID_CREDENTIALS`,
    whichever half was wrong, and so is a right one whose password changed while it was being checked."""

    username: Username
    password: Password


AnyCommand = (
    CreateTenant | RemoveTenant | RegisterProvider | RemoveProvider | RegisterEndpoint
    | RemoveEndpoint | RegisterModel | RemoveModel | AssignModel | UnassignModel | IssueKey | RevokeKey
    | ApplyTemplate | RecordDiscoveredModels | ImportConfig | RecordWarmUp
    | CreateUser | UpdateUser | RemoveUser | RevokeUserToken | VerifyCredentials
)

AnyRegistryEvent = RegistryEvent | EndpointModelsDiscovered
# Registry facts added after the first release: replied in a list of their own, so that a reader built
# before them still reads every reply (a new member of `events`' union would break it).
LaterRegistryEvent = ModelWarmed | UserEvent


class KindCounts(msgspec.Struct, frozen=True):
    """What an import did to one kind of resource: made new, changed, or found as the document has it."""

    created: int = 0
    changed: int = 0
    unchanged: int = 0


class ImportSummary(msgspec.Struct, frozen=True, omit_defaults=True):
    """An import's result without its events: counts per kind (`providers`, `models`, `endpoints`, `tenants`,
    `assignments`), how many events it recorded, and the last of them (a reader that has folded it holds them all:
    the registry publishes them in log order)."""

    kinds: dict[str, KindCounts] = {}
    events: int = 0
    last_event_id: str | None = None


class CommandReply(msgspec.Struct, frozen=True, omit_defaults=True):
    """The events a command recorded (none when it changed nothing), for a new key the key once, and for
    `verify_credentials` the user whose password matched and the version of the credentials it was checked
    against."""

    events: list[AnyRegistryEvent] = []
    key: str | None = None
    key_id: str | None = None
    later_events: list[LaterRegistryEvent] = []     # users' and warm-ups' events (see LaterRegistryEvent)
    user: UserView | None = None
    # verify_credentials: the id of the user's last password, role or tenant change (its creation, if none) whose
    # hash the password matched; the gateway signs it into the tokens as `ver`, and they stand while it is the user's
    user_version: str | None = None
    summary: ImportSummary | None = None            # import_config asked with `summary`: its counts, no events

    @property
    def recorded(self) -> list[Any]:
        """Every event the command recorded, in order (commands record one family or the other)."""
        return [*self.events, *self.later_events]


# --- queries -------------------------------------------------------------------

Resource = Literal["tenants", "providers", "endpoints", "models", "keys", "assignments", "templates", "status",
                   "export", "users"]


class RegistryQuery(msgspec.Struct, frozen=True, omit_defaults=True):
    """Read registry state: one resource kind, optionally one item or one tenant's.

    `status` answers counts and the log position; `export` the whole registry as a config document. A list asked
    with `limit` is answered one `RegistryPage` at a time, in id order: at most `limit` items after the id `after`
    whose id (or name) holds `q`, case aside; without `limit`, the whole list (what a gateway of an earlier release
    asks, and gets only while it fits one NATS message).
    """

    resource: Resource
    id: str | None = None
    tenant_id: str | None = None
    limit: int | None = None
    after: str | None = None
    q: str | None = None


class RegistryPage(msgspec.Struct, frozen=True):
    """One page of a list: its items in id order, whether more follow, the id to ask `after` for them, and how
    many items match the query in all. A page holds fewer than `limit` items when more would not fit one NATS
    message; `has_more` says whether it is the last."""

    items: list[Any]
    has_more: bool
    next_after: str | None
    total: int


# --- router commands and queries (tag field "command") ---------------------------


class RouterCommand(msgspec.Struct, frozen=True, kw_only=True, tag_field="command"):
    """A request to the router's leader (the one replica that probes and folds call outcomes)."""


class ResetCircuit(RouterCommand, frozen=True, tag="reset_circuit"):
    """Close an endpoint's breaker now and forget its failures."""

    endpoint_id: str


class RefreshProbes(RouterCommand, frozen=True, tag="refresh"):
    """Probe now (every endpoint, or those named) and answer when the round is done."""

    endpoint_ids: tuple[str, ...] = ()


class TestEndpoint(RouterCommand, frozen=True, tag="test_endpoint"):
    """Probe one endpoint once and report; nothing is published and no breaker moves."""

    __test__ = False                 # not a pytest test class, whatever its name

    endpoint_id: str
    kind: ProviderKind
    base_url: str
    api_key_ref: str = ""
    timeout_s: float = 5.0


AnyRouterCommand = ResetCircuit | RefreshProbes | TestEndpoint


class ProbeRef(msgspec.Struct, frozen=True):
    """One probe of a refresh round, by the ROUTING event that recorded it."""

    endpoint_id: str
    event_id: str
    ok: bool


class RefreshReply(msgspec.Struct, frozen=True):
    """A finished probe round: its results and the registry events its discoveries recorded.

    `probed` names every probe of the round; `probes` carries them whole while they fit in one NATS message, and
    is empty when they do not (each is on the ROUTING stream: a reader follows it, as the gateway does).
    """

    probes: list[ProbeCompleted]
    registry_event_ids: list[str] = []
    probed: list[ProbeRef] = []


class RouterQuery(msgspec.Struct, frozen=True, omit_defaults=True):
    """Read the router's state: every breaker (`circuits`), or one (`endpoint_id`)."""

    resource: Literal["circuits"] = "circuits"
    endpoint_id: str | None = None


class CircuitView(msgspec.Struct, frozen=True):
    """One endpoint's breaker as the leader holds it."""

    endpoint_id: str
    state: CircuitState
    since: Instant | None = None
    reason: str = ""
    retry_at: Instant | None = None
    consecutive_failures: int = 0
    calls: int = 0                  # in the error-ratio window
    failed_calls: int = 0
    trial_successes: int = 0        # half-open: successes so far
    opened: int = 0                 # times it opened since it last closed (the cool-down doubles each time)


# --- router warm-ups (`router.warm.v1`, leader only) ------------------------------


class WarmModel(msgspec.Struct, frozen=True, kw_only=True):
    """Send an unbilled minimal call to a model so that it is loaded: on one endpoint, or on every endpoint
    serving it; the registry records each result as a `model.warmed.v1`."""

    model_id: str
    endpoint_id: str = ""           # "" = every endpoint serving the model
    provider_id: str = ""           # "" = any provider; else only that provider's endpoints
    trigger: Literal["admin", "start", "test"] = "admin"
    first_only: bool = False        # stop at the first endpoint that answers (a test)


class WarmReply(msgspec.Struct, frozen=True):
    """What each warm-up call did, in the order they were made."""

    results: list[ModelWarmed]


# --- a gateway's workers (`gateway.metrics.v1`) -------------------------------------


class WorkerMetricsAsk(msgspec.Struct, frozen=True):
    """A worker of a gateway asks its sibling workers for their Prometheus samples, to answer a scrape for all."""

    gateway: str                    # the gateway whose workers answer (its instance name, no worker suffix)
    asker: str                      # the asking worker's instance name: it does not answer itself


class MetricSample(msgspec.Struct, frozen=True, array_like=True):
    """One sample: its name (with any suffix: `_total`, `_bucket`), its labels, its value."""

    name: str
    labels: dict[str, str]
    value: float


class MetricFamily(msgspec.Struct, frozen=True):
    """One metric family of a worker's registry."""

    name: str
    type: str                       # counter, gauge, histogram, summary, ...
    documentation: str
    unit: str
    samples: list[MetricSample]


class WorkerMetricsReply(msgspec.Struct, frozen=True):
    """Every metric family of one worker's registry."""

    instance: str
    families: list[MetricFamily]
