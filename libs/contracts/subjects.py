"""Every NATS subject, JetStream stream and durable consumer name, in one place.

One string names a fact everywhere: the subject prefix, the msgspec tag and the
`type` column of the event log.  Identifiers are appended last
(`usage.recorded.v2.<tenant>`).  Stream names carry no dots.
"""

# --- events: <noun>.<past-tense verb>.v<major> -------------------------------
USAGE_RECORDED = "usage.recorded.v2"         # v2: outcome may be `interrupted` (a call its gateway died during)
CALL_ATTEMPTED = "call.attempted.v1"

PROVIDER_REGISTERED = "provider.registered.v1"
PROVIDER_REMOVED = "provider.removed.v1"
ENDPOINT_REGISTERED = "endpoint.registered.v1"
ENDPOINT_REMOVED = "endpoint.removed.v1"
ENDPOINT_MODELS_DISCOVERED = "endpoint.models_discovered.v1"   # a probe found a changed model set (router -> registry)
MODEL_REGISTERED = "model.registered.v1"
MODEL_REMOVED = "model.removed.v1"
TENANT_CREATED = "tenant.created.v1"
TENANT_REMOVED = "tenant.removed.v1"
TENANT_MODEL_ASSIGNED = "tenant.model_assigned.v1"
TENANT_MODEL_UNASSIGNED = "tenant.model_unassigned.v1"
KEY_ISSUED = "key.issued.v1"
KEY_REVOKED = "key.revoked.v1"
USER_CREATED = "user.created.v1"
USER_UPDATED = "user.updated.v1"                # role, tenant or display name changed (never the password)
USER_PASSWORD_CHANGED = "user.password_changed.v1"
USER_REMOVED = "user.removed.v1"
USER_TOKEN_REVOKED = "user.token_revoked.v1"    # a refresh token was revoked (sign-out): its session ends
MODEL_WARMED = "model.warmed.v1"                # an unbilled warm-up call loaded a model on an endpoint

# routing (router service)
PROBE_COMPLETED = "probe.completed.v1"          # an unbilled health probe of an endpoint finished
CIRCUIT_CHANGED = "circuit.changed.v1"          # an endpoint's breaker moved closed/open/half-open

# quota (quota service)
LIMITS_SET = "limits.set.v1"                    # a tenant's (or tenant x model's) limits were set

# dead letters (every consumer of the events kit, and subscribers)
EVENT_DEAD_LETTERED = "event.dead_lettered.v1"      # a consumer set aside an event it could not decode or apply
EVENT_RETRY_REQUESTED = "event.retry_requested.v1"  # an operator asked a consumer to take a dead letter again

# --- request/reply: <noun>.<verb>.v<major> ------------------------------------
REGISTRY_COMMAND = "registry.command.v1"
REGISTRY_QUERY = "registry.query.v1"
METERING_QUERY = "metering.query.v1"
METERING_COMMAND = "metering.command.v1"        # roll the usage time series up into days
METERING_REPLAY = "metering.replay.v1"          # a page of the log; `.<tenant>` appended: that tenant's events only
METERING_SUBSCRIBER = "metering.subscriber.v1"  # an outside subscriber's door: .<user>.<name>.<tenant, or _all>.<op>
ROUTER_COMMAND = "router.command.v1"            # reset a breaker, force a refresh, test an endpoint
ROUTER_QUERY = "router.query.v1"                # circuits, per-endpoint health
ROUTER_WARM = "router.warm.v1"                  # warm a model up: unbilled minimal calls (leader only)
QUOTA_RESERVE = "quota.reserve.v1"              # reserve estimated tokens against every limit
QUOTA_QUERY = "quota.query.v1"                  # quotas and usage views
QUOTA_COMMAND = "quota.command.v1"              # set limits
GATEWAY_METRICS = "gateway.metrics.v1"          # a gateway's workers send each other their metric samples

# --- JetStream streams: name -> subjects it captures ---------------------------
STREAM_USAGE = "USAGE"
STREAM_REGISTRY = "REGISTRY"
STREAM_ROUTING = "ROUTING"
STREAM_LIMITS = "LIMITS"
STREAM_LOG = "LOG"                  # the event log in log order, each message with its positions (metering's feed)
STREAM_DEADLETTER = "DEADLETTER"    # events consumers set aside, and the retries operators asked for

LOG_PREFIX = "log"                  # LOG's subjects: log.<event type>.<tenant, or "_" for an event of none>

STREAMS: dict[str, list[str]] = {
    STREAM_USAGE: ["usage.>"],
    STREAM_REGISTRY: ["provider.>", "endpoint.>", "model.>", "tenant.>", "key.>", "user.>"],
    STREAM_ROUTING: ["probe.>", "circuit.>"],
    STREAM_LIMITS: ["limits.>"],
    STREAM_LOG: [f"{LOG_PREFIX}.>"],
    STREAM_DEADLETTER: ["event.>"],
}
# Streams not listed keep everything; these age out (probe results and breaker history are not accounting; the
# log's feed is there to go live from, and the log itself is the record: a subscriber away longer catches up
# from PostgreSQL through `metering.replay.v1`).
STREAM_MAX_AGE_S: dict[str, float] = {STREAM_ROUTING: 24 * 3600.0, STREAM_LOG: 3600.0}
# `call.attempted.v1` is not stored: it is a live health signal on core NATS, batched per gateway.

# --- durable consumers ---------------------------------------------------------
CONSUMER_METERING = "metering"      # shared by every metering replica
CONSUMER_QUOTA = "quota"            # unused: the quota service settles from the log, not the stream

# --- key-value buckets (each is a JetStream stream KV_<bucket>) ------------------
KV_ROUTER_LEADER = "router_leader"  # one key, `leader`: the router replica that acts, as a lease with a TTL

# --- headers -------------------------------------------------------------------
MSG_ID_HEADER = "Nats-Msg-Id"       # JetStream de-duplication
EXPECTED_LAST_SEQUENCE_HEADER = "Nats-Expected-Last-Sequence"   # JetStream stores it only right after that one
POSITIONS_HEADER = "Switchyard-Log-Positions"    # on LOG: `<first>-<last>`, the log positions of the events in order
DEADLINE_HEADER = "Switchyard-Deadline"          # on a request: the Unix time its asker stops waiting for the answer
SERVICE_ERROR_HEADER = "Nats-Service-Error"
SERVICE_ERROR_CODE_HEADER = "Nats-Service-Error-Code"

# --- NATS micro discovery: every service answers; the gateway's /health asks ---------
SERVICE_PING = "$SRV.PING"


_TOKEN_ESCAPES = str.maketrans({
    ".": "%2E", "*": "%2A", ">": "%3E", "%": "%25", " ": "%20", "\x7f": "%7F",
    **{chr(c): f"%{c:02X}" for c in range(0x20)},
})


def subject_token(identifier: str) -> str:
    """An identifier as one subject token: '.', '*', '>', '%', space and ASCII control characters are
    percent-escaped, so a model id like `/models/llama-3.2.gguf` stays one token."""
    return identifier.translate(_TOKEN_ESCAPES) or "_"


SUBSCRIBER_ALL = "_all"             # the door's scope for every tenant's events (no tenant id starts with `_`)
SUBSCRIBER_OPS = ("replay", "follow", "unfollow", "set_aside")


def subscriber_subject(user: str, name: str, tenant: str | None, op: str) -> str:
    """The subject a subscriber asks metering on: `metering.subscriber.v1.<user>.<name>.<tenant, or _all>.<op>`.
    NATS permissions let a user publish only under its own user, name and tenant, so the subject says who asks."""
    scope = subject_token(tenant) if tenant else SUBSCRIBER_ALL
    return f"{METERING_SUBSCRIBER}.{subject_token(user)}.{subject_token(name)}.{scope}.{op}"


def log_subject(event_type: str, tenant: str | None) -> str:
    """The LOG stream's subject of an event: `log.<type>.<tenant>` (`_` for an event that belongs to no tenant)."""
    return f"{LOG_PREFIX}.{event_type}.{subject_token(tenant or '')}"


def subject_for(event_type: str, identifier: str) -> str:
    """The subject an event is published on: its type, then its identifier as a single token."""
    return f"{event_type}.{subject_token(identifier)}"
