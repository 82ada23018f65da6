"""Who speaks on which subject: every channel with its stream, its producers and its consumers, and every
stream with its consumers — the facts the AsyncAPI document and the subject table in docs/architecture.md
both state.
"""

from __future__ import annotations

from dataclasses import dataclass

from switchyard_gateway.contracts import subjects as s

SERVICES = ("gateway", "registry", "metering", "router", "quota")


@dataclass(frozen=True)
class Use:
    """One party's part on a channel: a service (or a command-line tool) and how it takes part."""

    party: str
    how: str


@dataclass(frozen=True)
class Channel:
    """A subject pattern. `contract` is the event type, or the request/reply subject; `parameter` names the
    identifier token the subject ends with (percent-escaped: `llama3%2E2`)."""

    contract: str
    parameter: tuple[str, str] | None
    stream: str | None
    producers: tuple[Use, ...]
    consumers: tuple[Use, ...]
    logged: bool = False            # also an event of the log (PostgreSQL `events`)
    prefix: tuple[str, str] | None = None   # a parameter before the identifier (LOG: the event type)
    scope: tuple[str, str] | None = None    # request/reply: also answered with this identifier appended
    tail: tuple[tuple[str, str], ...] = ()  # request/reply: answered only with these tokens appended (a door)

    @property
    def address(self) -> str:
        if self.tail:
            return ".".join([self.contract, *(f"{{{name}}}" for name, _ in self.tail)])
        head = f"{self.contract}.{{{self.prefix[0]}}}" if self.prefix else self.contract
        return f"{head}.{{{self.parameter[0]}}}" if self.parameter else head

    @property
    def request_reply(self) -> bool:
        return self.stream is None and self.parameter is None


@dataclass(frozen=True)
class Consumer:
    """A JetStream consumer of a stream: `durable` names a shared durable one; None is an ordered consumer
    each process makes for itself."""

    party: str
    durable: str | None
    how: str


@dataclass(frozen=True)
class Stream:
    name: str
    subjects: tuple[str, ...]
    max_age_s: float | None
    consumers: tuple[Consumer, ...]
    description: str


REGISTRY_OUT = Use("registry", "appends the event to the log, then publishes it from the log past its outbox "
                               "checkpoint (`registry.outbox`); `Nats-Msg-Id` = the event id")
REGISTRY_IN = (Use("gateway", "ordered consumer from the stream's start: the local catalog (keys, models, routes)"),
               Use("router", "ordered consumer from the stream's start: what to probe"))
ROUTING_IN = (Use("gateway", "ordered consumer, last message per subject: local breaker and probe state"),
              Use("router", "ordered consumer, last message per subject: a new leader resumes each breaker"))
ROUTER_OUT = Use("router", "the leader (holder of the router_leader lease) publishes it")
ADMIN = Use("gateway", "admin API (/api/admin/...)")
SUBSCRIBER = "subscribers"          # programs built on switchyard_gateway.subscribe (examples/tenant_spend.py)
DEAD_LETTERING = "a message (or the one event of a batch) it cannot decode, or whose handler fails, with the error"


def _registry(contract: str, parameter: str, meaning: str) -> Channel:
    return Channel(contract, (parameter, meaning), s.STREAM_REGISTRY, (REGISTRY_OUT,), REGISTRY_IN, logged=True)


def _service(contract: str, requesters: tuple[Use, ...], responder: Use,
             scope: tuple[str, str] | None = None) -> Channel:
    return Channel(contract, None, None, requesters, (responder,), scope=scope)


CHANNELS: tuple[Channel, ...] = (
    Channel(s.USAGE_RECORDED, ("tenant", "the tenant the call was made for"), s.STREAM_USAGE,
            (Use("gateway", "one message per tenant and batch (a JSON array of up to 256 events), lingering 50 ms; "
                            "`Nats-Msg-Id` = first event id + count; each event is in the gateway's journal from the "
                            "call's acceptance until JetStream acknowledges it, and republished from there (same "
                            "event id) by the gateway's next life when it was not"),),
            (Use("metering", f"durable pull consumer `{s.CONSUMER_METERING}` shared by its replicas: appended to "
                             "the log and its projections, acknowledged after the commit"),
             Use("gateway", f"/api/usage-stream: a core subscription to `{s.USAGE_RECORDED}.>` while a client "
                            "watches")),
            logged=True),
    Channel(s.CALL_ATTEMPTED, ("gateway", "the gateway instance that made the attempts"), None,
            (Use("gateway", "core NATS, not stored: a JSON array of the attempts of the last 50 ms"),),
            (Use("router", "core subscription to `call.attempted.v1.>` on every replica; the leader folds it "
                           "into the breakers"),)),
    _registry(s.PROVIDER_REGISTERED, "provider", "the provider id"),
    _registry(s.PROVIDER_REMOVED, "provider", "the provider id"),
    _registry(s.ENDPOINT_REGISTERED, "endpoint", "the endpoint id"),
    _registry(s.ENDPOINT_REMOVED, "endpoint", "the endpoint id"),
    Channel(s.ENDPOINT_MODELS_DISCOVERED, ("endpoint", "the endpoint id"), s.STREAM_REGISTRY,
            (Use("registry", "recorded when the router reports a changed model set (RecordDiscoveredModels), "
                             "published from the log like every registry event"),), REGISTRY_IN, logged=True),
    _registry(s.MODEL_REGISTERED, "model", "the model id"),
    _registry(s.MODEL_REMOVED, "model", "the model id"),
    _registry(s.TENANT_CREATED, "tenant", "the tenant id"),
    _registry(s.TENANT_REMOVED, "tenant", "the tenant id"),
    _registry(s.TENANT_MODEL_ASSIGNED, "tenant", "the tenant id"),
    _registry(s.TENANT_MODEL_UNASSIGNED, "tenant", "the tenant id"),
    _registry(s.KEY_ISSUED, "key", "the key id (its visible prefix)"),
    _registry(s.KEY_REVOKED, "key", "the key id (its visible prefix)"),
    _registry(s.USER_CREATED, "user", "the username"),
    _registry(s.USER_UPDATED, "user", "the username"),
    _registry(s.USER_PASSWORD_CHANGED, "user", "the username"),
    _registry(s.USER_REMOVED, "user", "the username"),
    _registry(s.USER_TOKEN_REVOKED, "user", "the username"),
    Channel(s.MODEL_WARMED, ("model", "the model id"), s.STREAM_REGISTRY,
            (Use("registry", "recorded when the router reports a warm-up (RecordWarmUp), published from the log "
                             "like every registry event"),), REGISTRY_IN, logged=True),
    Channel(s.PROBE_COMPLETED, ("endpoint", "the endpoint id"), s.STREAM_ROUTING, (ROUTER_OUT,), ROUTING_IN),
    Channel(s.CIRCUIT_CHANGED, ("endpoint", "the endpoint id"), s.STREAM_ROUTING, (ROUTER_OUT,), ROUTING_IN),
    Channel(s.LIMITS_SET, ("tenant", "the tenant id"), s.STREAM_LIMITS,
            (Use("quota", "appends the event to the log, then publishes it past its outbox checkpoint "
                          "(`quota.outbox`); `Nats-Msg-Id` = the event id"),),
            (Use("gateway", "ordered consumer from the stream's start: the local limits book"),), logged=True),
    _service(s.REGISTRY_COMMAND, (Use("gateway", "admin API (/api/admin/...); sign-in: verify_credentials on "
                                                 "/api/auth/login, revoke_user_token on /api/auth/logout"),
                                  Use("router", "reports discovered models and warm-ups"),
                                  Use("switchyard up", "bootstraps the registry from switchyard.yaml")),
             Use("registry", "NATS micro service `registry`, one queue group")),
    _service(s.REGISTRY_QUERY, (ADMIN,), Use("registry", "NATS micro service `registry`, one queue group")),
    _service(s.ROUTER_COMMAND, (ADMIN,), Use("router", "NATS micro service `router`, served by the leader only")),
    _service(s.ROUTER_WARM, (Use("gateway", "the warm-up and model test APIs (/api/admin/models/...)"),),
             Use("router", "NATS micro service `router`, served by the leader only")),
    _service(s.ROUTER_QUERY, (ADMIN,), Use("router", "NATS micro service `router`, served by the leader only")),
    _service(s.METERING_QUERY, (Use("gateway", "monitoring API: /api/token_counts, /api/usage, /api/stats, "
                                               "/api/usage-stream"),),
             Use("metering", "NATS micro service `metering`, one queue group")),
    _service(s.METERING_COMMAND, (Use("gateway", "monitoring API: /api/aggregate_time_series_days"),),
             Use("metering", "NATS micro service `metering`, one queue group")),
    _service(s.METERING_REPLAY, (Use("services' clients", "programs with the services' NATS user read pages of the log "
                                                           "here (a subscriber asks through its door)"),),
             Use("metering", "NATS micro service `metering`, one queue group; pages read from PostgreSQL"),
             scope=("tenant", "the tenant whose events alone the pages hold")),
    Channel(s.METERING_SUBSCRIBER, None, None,
            (Use(SUBSCRIBER, "everything a subscriber does on NATS, through its door: catch up from the log page by "
                             "page (`replay`, each page asked for once the last one arrived), then follow LOG from "
                             "`live.sequence` (`follow`: metering makes the consumer, delivering to the subscriber's "
                             "inbox), follow its own retries on DEADLETTER, store its dead letters (`set_aside`)"),),
            (Use("metering", "NATS micro service `metering`, one queue group: answers only on the asking user's own "
                             "inbox, and does only what the subject's user, name and tenant allow"),),
            tail=(("user", "the subscriber's NATS user: its permissions let it publish under its own alone"),
                  ("name", "the subscriber's name: the dead letters and retries that are its own"),
                  ("tenant", f"the tenant whose events alone it may read, or `{s.SUBSCRIBER_ALL}` for every tenant"),
                  ("op", f"what is asked: {', '.join(s.SUBSCRIBER_OPS)}"))),
    Channel(s.LOG_PREFIX, ("tenant", "the event's tenant, `_` for an event that belongs to none"), s.STREAM_LOG,
            (Use("metering", "the log's feed: every event appended to the log, in log order, events of one type "
                             "and tenant at consecutive positions in one message (a JSON array) with their positions in "
                             f"`{s.POSITIONS_HEADER}`; each message published with `{s.EXPECTED_LAST_SEQUENCE_HEADER}` "
                             "so that the stream never holds them out of order"),),
            (Use(SUBSCRIBER, "an ephemeral push consumer from the `live.sequence` a replay page named, filtered by "
                             "type and tenant, events at or below the subscriber's position skipped"),),
            prefix=("type", "the event type as it is, its three subject tokens (usage.recorded.v2)")),
    Channel(s.EVENT_DEAD_LETTERED, ("consumer", "the consumer that set the event aside"), s.STREAM_DEADLETTER,
            (Use("metering", f"the usage ingest (`{s.CONSUMER_METERING}`): {DEAD_LETTERING}"),
             Use("gateway", f"its folds of REGISTRY, LIMITS and ROUTING (`gateway:<stream>`): {DEAD_LETTERING}"),
             Use("router", f"its folds of REGISTRY and ROUTING (`router:<stream>`): {DEAD_LETTERING}"),
             Use("registry", f"its fold of the log (`registry.outbox`): {DEAD_LETTERING}"),
             Use("quota", f"its folds of the log (`quota.outbox`): {DEAD_LETTERING}"),
             Use(SUBSCRIBER, f"under the subscriber's name: {DEAD_LETTERING}")),
            (Use("switchyard events", "`switchyard events dead-letters` lists them and retries them"),)),
    Channel(s.EVENT_RETRY_REQUESTED, ("consumer", "the consumer asked to take the dead letter again"),
            s.STREAM_DEADLETTER,
            (Use("switchyard events", "`switchyard events dead-letters --retry ID|--all`; a dead letter of the usage "
                                      "ingest is also published again on its subject"),),
            (Use("gateway", "each worker's folds of REGISTRY, LIMITS and ROUTING, an ephemeral push consumer of their "
                            "own retries from their start: the message folded again, then those after it"),
             Use("router", "each replica's folds of REGISTRY and ROUTING, as the gateway's"),
             Use("registry", "each replica's fold of the log (`registry.outbox`), an ephemeral push consumer of its own "
                             "retries from its start: the event read from the log, applied live, once"),
             Use("quota", "each replica's fold of limits (`quota.outbox`), as the registry's"),
             Use(SUBSCRIBER, "an ephemeral push consumer of its own retries from the last one it took, each applied "
                             "in the transaction that records it"))),
    _service(s.QUOTA_COMMAND, (ADMIN,), Use("quota", "NATS micro service `quota`, one queue group")),
    _service(s.QUOTA_QUERY, (Use("gateway", "quota and usage views (/api/v1/tenant-models/...)"),),
             Use("quota", "NATS micro service `quota`, one queue group")),
    _service(s.GATEWAY_METRICS, (Use("gateway", "the worker a /metrics scrape reaches, for its sibling workers"),),
             Use("gateway", "every worker of the gateway named in the request (core NATS, no queue group)")),
    _service(s.QUOTA_RESERVE, (Use("benchmarks", "the reservation benchmark; deployments that keep Valkey private "
                                                 "to the quota service (gateways reserve in Valkey directly)"),),
             Use("quota", "NATS micro service `quota`, one queue group")),
)

STREAMS: tuple[Stream, ...] = (
    Stream(s.STREAM_USAGE, tuple(s.STREAMS[s.STREAM_USAGE]), None,
           (Consumer("metering", s.CONSUMER_METERING, "pull, explicit ack (10 s), deliver all; every metering "
                                                      "replica fetches from it"),),
           "Usage events on their way to the log; kept in full, the log is the record."),
    Stream(s.STREAM_REGISTRY, tuple(s.STREAMS[s.STREAM_REGISTRY]), None,
           (Consumer("gateway", None, "ordered, deliver all"), Consumer("router", None, "ordered, deliver all")),
           "Registry facts, kept in full: a gateway builds its catalog from them at start."),
    Stream(s.STREAM_ROUTING, tuple(s.STREAMS[s.STREAM_ROUTING]), s.STREAM_MAX_AGE_S.get(s.STREAM_ROUTING),
           (Consumer("gateway", None, "ordered, last per subject"), Consumer("router", None, "ordered, last per subject")),
           "Probe results and breaker transitions: health, not accounting, so they age out."),
    Stream(s.STREAM_LIMITS, tuple(s.STREAMS[s.STREAM_LIMITS]), None,
           (Consumer("gateway", None, "ordered, deliver all"),),
           "Limits, kept in full: a gateway builds its limits book from them at start."),
    Stream(s.STREAM_LOG, tuple(s.STREAMS[s.STREAM_LOG]), s.STREAM_MAX_AGE_S.get(s.STREAM_LOG),
           (Consumer(SUBSCRIBER, None, "ephemeral push, from the sequence a replay page named, filtered by type and "
                                       "tenant"),),
           "The event log in log order, fed by metering from PostgreSQL: where a subscriber goes live after catching "
           "up through metering.replay.v1. It ages out; the log is the record."),
    Stream(s.STREAM_DEADLETTER, tuple(s.STREAMS[s.STREAM_DEADLETTER]), None,
           (Consumer("switchyard events", None, "ordered, deliver all: `switchyard events dead-letters`"),
            Consumer(SUBSCRIBER, None, "ephemeral push of its own retries, from the last one it took")),
           "Events consumers could not decode or apply, and the retries operators asked for; kept until removed."),
    Stream(f"KV_{s.KV_ROUTER_LEADER}", (f"$KV.{s.KV_ROUTER_LEADER}.>",), None,
           (Consumer("router", None, "the NATS KV API: create, compare-and-set update, delete"),),
           "The router's leader lease: key `leader`, value the holder's instance name, entries expire after the "
           "lease TTL (5 s), history 1."),
)

STREAM_SETTINGS = "file storage, limits retention, discard old, a 2-minute duplicate window"


def channel(contract: str) -> Channel:
    return next(c for c in CHANNELS if c.contract == contract)


def logged_types() -> list[str]:
    """The event types the log holds, which its feed (LOG) carries."""
    return [c.contract for c in CHANNELS if c.logged]
