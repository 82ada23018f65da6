"""Every NATS subject, JetStream stream and durable consumer name, in one place.

One string names a fact everywhere: the subject prefix, the msgspec tag and the
`type` column of the event log.  Identifiers are appended last
(`usage.recorded.v1.<tenant>`).  Stream names carry no dots.
"""

# --- events: <noun>.<past-tense verb>.v<major> -------------------------------
USAGE_RECORDED = "usage.recorded.v1"
CALL_ATTEMPTED = "call.attempted.v1"

PROVIDER_REGISTERED = "provider.registered.v1"
PROVIDER_REMOVED = "provider.removed.v1"
ENDPOINT_REGISTERED = "endpoint.registered.v1"
ENDPOINT_REMOVED = "endpoint.removed.v1"
MODEL_REGISTERED = "model.registered.v1"
MODEL_REMOVED = "model.removed.v1"
TENANT_CREATED = "tenant.created.v1"
TENANT_REMOVED = "tenant.removed.v1"
TENANT_MODEL_ASSIGNED = "tenant.model_assigned.v1"
TENANT_MODEL_UNASSIGNED = "tenant.model_unassigned.v1"
KEY_ISSUED = "key.issued.v1"
KEY_REVOKED = "key.revoked.v1"

# --- request/reply: <noun>.<verb>.v<major> ------------------------------------
REGISTRY_COMMAND = "registry.command.v1"
REGISTRY_QUERY = "registry.query.v1"
METERING_QUERY = "metering.query.v1"

# --- JetStream streams: name -> subjects it captures ---------------------------
STREAM_USAGE = "USAGE"
STREAM_REGISTRY = "REGISTRY"

STREAMS: dict[str, list[str]] = {
    STREAM_USAGE: ["usage.>"],
    STREAM_REGISTRY: ["provider.>", "endpoint.>", "model.>", "tenant.>", "key.>"],
}
# `call.attempted.v1` is not stored: it is a live health signal on core NATS, batched per gateway.

# --- durable consumers ---------------------------------------------------------
CONSUMER_METERING = "metering"      # shared by every metering replica

# --- headers -------------------------------------------------------------------
MSG_ID_HEADER = "Nats-Msg-Id"       # JetStream de-duplication
SERVICE_ERROR_HEADER = "Nats-Service-Error"
SERVICE_ERROR_CODE_HEADER = "Nats-Service-Error-Code"


_TOKEN_ESCAPES = str.maketrans({".": "%2E", "*": "%2A", ">": "%3E", " ": "%20", "\t": "%09", "%": "%25"})


def subject_token(identifier: str) -> str:
    """An identifier as one subject token: '.', '*', '>' and white space are percent-escaped."""
    return identifier.translate(_TOKEN_ESCAPES) or "_"


def subject_for(event_type: str, identifier: str) -> str:
    """The subject an event is published on: its type, then its identifier as a single token."""
    return f"{event_type}.{subject_token(identifier)}"
