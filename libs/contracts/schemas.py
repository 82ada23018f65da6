"""Every published contract by name — each event type and each request/reply message — with its JSON Schema.

An event's name is its type string (`usage.recorded.v2`); a request/reply message is named by its subject
and direction (`quota.query.v1.request`, `quota.query.v1.reply`); `service.error` is the body of every
error reply; `event.withheld.v1` is the marker sent in the place of a row too large for one NATS message.
`CONTRACTS` is the registry a reader validates or decodes against: `Contract.types` are the msgspec types the
services themselves decode with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from switchyard_gateway.contracts import codec, metering, quota, routing
from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts import subjects as s
from switchyard_gateway.contracts.deadletters import EVENT_WITHHELD, EventWithheld

DRAFT = "https://json-schema.org/draft/2020-12/schema"
ID_BASE = "urn:switchyard:contract:"

Kind = Literal["event", "request", "reply", "error", "marker"]


@dataclass(frozen=True)
class Contract:
    """One message shape: its name, what it is, and the types it may be (one, or alternatives)."""

    name: str
    kind: Kind
    types: tuple[Any, ...]
    summary: str

    @property
    def filename(self) -> str:
        return f"{self.name}.json"


@dataclass(frozen=True)
class Exchange:
    """A request/reply subject: what is asked and what comes back."""

    subject: str
    request: tuple[Any, ...]
    reply: tuple[Any, ...]
    asks: str
    answers: str


ERROR = Contract("service.error", "error", (m.ErrorBody,),
                 f"The body of every error reply; the `{s.SERVICE_ERROR_CODE_HEADER}` header holds its HTTP status.")

# Request/reply subjects, each with the types of its request and of its reply (alternatives: by request).
EXCHANGES: tuple[Exchange, ...] = (
    Exchange(s.REGISTRY_COMMAND, (m.AnyCommand,), (m.CommandReply,),
             "A registry command, tagged by `command`.",
             "The events the command recorded (none when it changed nothing), for a new key the key once, and for "
             "`verify_credentials` the user and its credential version (never a password or hash)."),
    Exchange(s.REGISTRY_QUERY, (m.RegistryQuery,), (list[dict[str, Any]], dict[str, Any]),
             "Read one kind of registry resource, one item of it, or one tenant's.",
             "A list of resources (no `id`), one resource (`id`), the `status` document or the `export` document; "
             "never a key hash or a secret."),
    Exchange(s.ROUTER_COMMAND, (m.AnyRouterCommand,), (routing.CircuitChanged, m.RefreshReply, routing.ProbeCompleted),
             "A command for the router leader, tagged by `command`.",
             "`reset_circuit`: the CircuitChanged it published; `refresh`: a RefreshReply; "
             "`test_endpoint`: the ProbeCompleted (not published)."),
    Exchange(s.ROUTER_WARM, (m.WarmModel,), (m.WarmReply,),
             "Warm a model up with unbilled minimal calls: on one endpoint, or every endpoint serving it.",
             "Each call's result, as the registry recorded it (`model.warmed.v1`)."),
    Exchange(s.ROUTER_QUERY, (m.RouterQuery,), (list[m.CircuitView], m.CircuitView),
             "Read every breaker, or one endpoint's.",
             "Every breaker (no `endpoint_id`), or one."),
    Exchange(s.METERING_QUERY, (metering.MeteringQuery,),
             (metering.TokenCountsReply, metering.TokenUsageReply, metering.ModelStats),
             "Token counts, token usage per endpoint and model, or one model's stats.",
             "`token_counts`: TokenCountsReply; `usage`: TokenUsageReply; `stats`: ModelStats."),
    Exchange(s.METERING_COMMAND, (metering.RollupDays,), (metering.RollupReply,),
             "Show the time series by day before a number of days ago, optionally trimming those minutes.",
             "What the rollup changed."),
    Exchange(s.METERING_REPLAY, (metering.ReplayRequest,), (metering.ReplayPage,),
             "A page of the event log after a position or from a time, of some types; `metering.replay.v1.<tenant>` "
             "for one tenant's events.",
             "The events as stored with their positions, where to ask next (`last`), and once the page reached the "
             "log's head, the LOG stream sequence to follow live from (`live`)."),
    Exchange(s.METERING_SUBSCRIBER,
             (metering.ReplayRequest, metering.Follow, metering.Unfollow, metering.SetAside),
             (metering.ReplayPage, metering.Following, metering.SetAsideDone),
             "A subscriber's request through its door, by the subject's last token: `replay` a ReplayRequest, "
             "`follow` a Follow, `unfollow` an Unfollow, `set_aside` a SetAside.",
             "`replay`: a ReplayPage; `follow`: Following; `unfollow`: nothing; `set_aside`: SetAsideDone. No answer "
             "at all to a request whose reply subject is not under the asking user's inbox."),
    Exchange(s.QUOTA_COMMAND, (quota.SetLimits,), (quota.SetLimitsReply,),
             "Change a tenant's limits, or a tenant x model's.",
             "The limits now in force and the LimitsSet recorded (none when nothing changed)."),
    Exchange(s.QUOTA_QUERY, (quota.QuotaQuery,), (quota.LimitsReply, quota.QuotasReply, quota.UsageReply),
             "A tenant's limits, each limit with its use, or one period's usage.",
             "`limits`: LimitsReply; `quotas`: QuotasReply; `usage`: UsageReply."),
    Exchange(s.GATEWAY_METRICS, (m.WorkerMetricsAsk,), (m.WorkerMetricsReply,),
             "A gateway's worker asks its sibling workers for their metric samples before it answers a scrape.",
             "One sibling worker's samples (each worker of the named gateway but the asker answers)."),
    Exchange(s.QUOTA_RESERVE, (quota.ReservePlan,), (quota.ReserveReply,),
             "Reserve a planned call against its counters, all or nothing.",
             "ok, or the first counter that would go over."),
)


def _summary(cls: type) -> str:
    return " ".join((cls.__doc__ or "").strip().split("\n\n", 1)[0].split())


def _contracts() -> dict[str, Contract]:
    found = [Contract(name, "event", (cls,), _summary(cls)) for name, cls in sorted(codec.EVENT_TYPES.items())]
    for x in EXCHANGES:
        found.append(Contract(f"{x.subject}.request", "request", x.request, x.asks))
        found.append(Contract(f"{x.subject}.reply", "reply", x.reply, x.answers))
    found.append(ERROR)
    found.append(Contract(EVENT_WITHHELD, "marker", (EventWithheld,), _summary(EventWithheld)))
    return {c.name: c for c in found}


CONTRACTS: dict[str, Contract] = _contracts()


def components(ref_template: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Every contract's top-level schema (by name) and the shared definitions they refer to."""
    everything = [t for c in CONTRACTS.values() for t in c.types]
    refs, defs = msgspec.json.schema_components(everything, ref_template=ref_template)
    tops: dict[str, dict[str, Any]] = {}
    at = 0
    for contract in CONTRACTS.values():
        mine = refs[at:at + len(contract.types)]
        at += len(contract.types)
        tops[contract.name] = mine[0] if len(mine) == 1 else {"anyOf": list(mine)}
    return tops, defs


def json_schema(name: str) -> dict[str, Any]:
    """One contract's JSON Schema (draft 2020-12), self-contained: the definitions it uses come with it."""
    contract = CONTRACTS[name]
    refs, defs = msgspec.json.schema_components(contract.types, ref_template="#/$defs/{name}")
    top = refs[0] if len(refs) == 1 else {"anyOf": list(refs)}
    return {"$schema": DRAFT, "$id": ID_BASE + name, "title": name, "description": contract.summary,
            **top, "$defs": defs}


def index() -> list[dict[str, str]]:
    """What `docs/contracts/schemas/` holds: one line per contract."""
    return [{"name": c.name, "kind": c.kind, "schema": f"schemas/{c.filename}", "summary": c.summary}
            for c in CONTRACTS.values()]


def event_names() -> list[str]:
    return [c.name for c in CONTRACTS.values() if c.kind == "event"]
