"""Events: facts that happened, never mutated, never deleted.

Each class's tag is its type string (see `subjects`); the tag is the msgspec
discriminator, the subject prefix and the event log's `type` column.  New
fields get defaults and keep the version; a breaking change gets `.v2` and an
upcast in `codec.UPCASTS`.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec

from switchyard_gateway.contracts import subjects as s

# A point in time: RFC 3339 with its offset (UTC, `Z`, as written here).
Instant = Annotated[datetime, msgspec.Meta(extra_json_schema={"format": "date-time"})]
Role = Literal["member", "admin"]
ProviderKind = Literal["ollama", "openai-compatible", "openai"]
ModelKind = Literal["chat", "embedding"]
# what a model can do, in Ollama's words (`/api/show`'s `capabilities`)
Capability = Literal["completion", "tools", "vision", "embedding", "thinking", "insert"]
# interrupted: the gateway died while serving the call; its next life recorded it from its journal
Outcome = Literal["ok", "error", "cancelled", "interrupted"]
AttemptOutcome = Literal["ok", "refused", "timeout", "http_5xx", "http_429", "http_4xx", "cut", "error"]


def new_id() -> uuid.UUID:
    """A fresh event id: a version 7 UUID (RFC 9562), unix milliseconds first, then 74 random bits.

    Ids that grow with time keep the log's unique index appending at its right edge: random ids
    touch a random page of it on every insert, which turns into random I/O once the index
    outgrows memory and into a burst of full-page WAL images after every checkpoint.
    """
    rand = int.from_bytes(random_bytes(10), "big")
    return uuid.UUID(int=(time.time_ns() // 1_000_000) << 80 | 0x7 << 76 | (rand >> 62 & 0xFFF) << 64
                     | 0x2 << 62 | rand & _LOW_62)


_LOW_62 = (1 << 62) - 1
_POOL_BYTES = 4096


class _Entropy:
    """The operating system's random bytes, read 4 KiB at a time: a gateway takes several ids a call, and one
    `getrandom` system call each cost it more than the rest of making them. A forked child starts empty, so
    parent and child never hand out the same bytes."""

    __slots__ = ("pool", "at")

    def __init__(self) -> None:
        self.pool, self.at = b"", 0

    def take(self, n: int) -> bytes:
        at = self.at
        if at + n > len(self.pool):
            self.pool, at = os.urandom(max(_POOL_BYTES, n)), 0
        self.at = at + n
        return self.pool[at:at + n]

    def forget(self) -> None:
        self.pool, self.at = b"", 0


_entropy = _Entropy()
random_bytes = _entropy.take
os.register_at_fork(after_in_child=_entropy.forget)


def random_hex(n: int) -> str:
    """`n` random bytes as hex: a request id (`random_hex(16)`: 32 digits, like a UUID's)."""
    return _entropy.take(n).hex()


def now() -> datetime:
    """The current time, timezone-aware."""
    return datetime.now(UTC)


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """A fact that happened. Never mutated, never deleted."""

    event_id: uuid.UUID = msgspec.field(default_factory=new_id)
    occurred_at: Instant = msgspec.field(default_factory=now)

    @property
    def tenant(self) -> str | None:
        """The tenant this fact belongs to, if any (the log's `tenant` column)."""
        return getattr(self, "tenant_id", None)

    @property
    def identifier(self) -> str:
        """The last token of the subject the event is published on."""
        raise NotImplementedError


# --- usage and call outcomes --------------------------------------------------


class UsageRecorded(Event, frozen=True, tag=s.USAGE_RECORDED):
    """A call the gateway accepted has finished; its token counts are final."""

    request_id: str
    tenant_id: str
    key_id: str
    model: str                      # the model that served the call (its registry id; a fallback's if one served)
    api: str                        # e.g. "openai.chat", "ollama.embed", "anthropic.messages"
    outcome: Outcome
    status: int                     # HTTP status the client saw
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0          # of input_tokens, those the upstream served from its prompt cache
    estimated: bool = False         # counted by the gateway: the upstream reported none
    stream: bool = False
    endpoint_id: str = ""           # "" when no endpoint was reached
    provider_id: str = ""
    upstream_model: str = ""
    attempts: int = 0
    duration_ms: float = 0.0        # whole call as the gateway saw it
    ttfb_ms: float | None = None    # time to the first byte sent to the client
    overhead_ms: float = 0.0        # the gateway's own share of duration_ms
    requested_model: str = ""       # the name the client used (an alias, ":latest", or another model on fallback)
    cache_hit: bool = False         # answered from the response cache: no endpoint, no tokens spent

    @property
    def identifier(self) -> str:
        return self.tenant_id


class CallAttempted(Event, frozen=True, tag=s.CALL_ATTEMPTED):
    """One attempt to call an upstream endpoint ended; the router folds these into breakers."""

    request_id: str
    endpoint_id: str
    model: str
    outcome: AttemptOutcome
    status: int = 0
    latency_ms: float = 0.0

    @property
    def identifier(self) -> str:
        return self.endpoint_id


# --- registry ------------------------------------------------------------------


class ProviderRegistered(Event, frozen=True, tag=s.PROVIDER_REGISTERED):
    """A provider was registered, or re-registered with new settings (full state)."""

    provider_id: str
    kind: ProviderKind
    display_name: str = ""

    @property
    def identifier(self) -> str:
        return self.provider_id


class ProviderRemoved(Event, frozen=True, tag=s.PROVIDER_REMOVED):
    """A provider was removed."""

    provider_id: str

    @property
    def identifier(self) -> str:
        return self.provider_id


class EndpointRegistered(Event, frozen=True, tag=s.ENDPOINT_REGISTERED):
    """An endpoint was registered, or re-registered with new settings (full state).

    `api_key_ref` names where the credential lives (`${ENV_VAR}`), never the secret.
    """

    endpoint_id: str
    provider_id: str
    base_url: str
    models: tuple[str, ...] = ()    # models it serves, as the registry knows them
    api_key_ref: str = ""
    priority: int = 0               # higher is preferred
    weight: int = 1
    max_concurrent: int = 0         # per model on this endpoint; 0 = unbounded
    timeout_s: float = 300.0        # the longest silence between bytes of an answer
    first_byte_timeout_s: float | None = None   # an answer must start by then (None: the gateway's setting)
    warm_on_start: bool = False     # the router warms its models when it first probes it healthy

    @property
    def identifier(self) -> str:
        return self.endpoint_id


class EndpointRemoved(Event, frozen=True, tag=s.ENDPOINT_REMOVED):
    """An endpoint was removed."""

    endpoint_id: str

    @property
    def identifier(self) -> str:
        return self.endpoint_id


class ModelRegistered(Event, frozen=True, tag=s.MODEL_REGISTERED):
    """A model was registered, or re-registered with new settings (full state)."""

    model_id: str
    kind: ModelKind = "chat"
    aliases: tuple[str, ...] = ()
    context_length: int = 0
    input_price_per_1m: float = 0.0   # USD
    output_price_per_1m: float = 0.0  # USD
    fallback_model: str = ""
    cached_input_price_per_1m: float | None = None   # USD per 1M prompt tokens read from a prompt cache (None: input)
    capabilities: tuple[Capability, ...] = ()   # what an operator says it can do, beside what its servers say

    @property
    def identifier(self) -> str:
        return self.model_id


class ModelRemoved(Event, frozen=True, tag=s.MODEL_REMOVED):
    """A model was removed."""

    model_id: str

    @property
    def identifier(self) -> str:
        return self.model_id


class TenantCreated(Event, frozen=True, tag=s.TENANT_CREATED):
    """A tenant was created, or its settings replaced (full state).

    `all_models`: the tenant may use every registered model, not only assigned ones.
    """

    tenant_id: str
    display_name: str = ""
    all_models: bool = True
    fallback_on_quota: bool = False   # over a quota, serve the next allowed model instead of 402

    @property
    def identifier(self) -> str:
        return self.tenant_id


class TenantRemoved(Event, frozen=True, tag=s.TENANT_REMOVED):
    """A tenant was removed; its keys stop working."""

    tenant_id: str

    @property
    def identifier(self) -> str:
        return self.tenant_id


class TenantModelAssigned(Event, frozen=True, tag=s.TENANT_MODEL_ASSIGNED):
    """A model was assigned to a tenant, or its assignment changed (full state)."""

    tenant_id: str
    model_id: str
    enabled: bool = True
    is_default: bool = False
    priority: int = 0               # higher is preferred
    input_price_per_1m: float | None = None    # USD; None: the model's price
    output_price_per_1m: float | None = None
    fallback_model: str = ""        # this tenant's fallback for this model ("" = the model's own)
    cached_input_price_per_1m: float | None = None   # None: the model's cached price, else this input price

    @property
    def identifier(self) -> str:
        return self.tenant_id


class TenantModelUnassigned(Event, frozen=True, tag=s.TENANT_MODEL_UNASSIGNED):
    """A model's assignment to a tenant was withdrawn."""

    tenant_id: str
    model_id: str

    @property
    def identifier(self) -> str:
        return self.tenant_id


class KeyIssued(Event, frozen=True, tag=s.KEY_ISSUED):
    """An API key was issued. Only its SHA-256 hash travels; the key itself is shown once."""

    key_id: str                     # the visible prefix, e.g. "sy-3f9a1c2e"
    tenant_id: str
    key_sha256: str
    role: Role = "member"
    name: str = ""
    expires_at: Instant | None = None

    @property
    def identifier(self) -> str:
        return self.key_id


class KeyRevoked(Event, frozen=True, tag=s.KEY_REVOKED):
    """An API key was revoked; it stops working everywhere."""

    key_id: str
    tenant_id: str

    @property
    def identifier(self) -> str:
        return self.key_id


RegistryEvent = (
    ProviderRegistered | ProviderRemoved | EndpointRegistered | EndpointRemoved
    | ModelRegistered | ModelRemoved | TenantCreated | TenantRemoved
    | TenantModelAssigned | TenantModelUnassigned | KeyIssued | KeyRevoked
)

# The events this module defines; `codec` joins them with those of the other contract modules.
EVENT_CLASSES: tuple[type[Event], ...] = (
    UsageRecorded, CallAttempted, ProviderRegistered, ProviderRemoved,
    EndpointRegistered, EndpointRemoved, ModelRegistered, ModelRemoved,
    TenantCreated, TenantRemoved, TenantModelAssigned, TenantModelUnassigned,
    KeyIssued, KeyRevoked,
)
REGISTRY_EVENT_TYPES = frozenset(cls.__struct_config__.tag for cls in RegistryEvent.__args__)  # type: ignore[attr-defined]


def event_type(event: Event) -> str:
    """The type string of an event (its tag)."""
    return type(event).__struct_config__.tag  # type: ignore[return-value]


def subject_of(event: Event) -> str:
    """The subject an event is published on."""
    return s.subject_for(event_type(event), event.identifier)
