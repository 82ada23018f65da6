"""The AsyncAPI 3.0 document of Switchyard's NATS traffic, built from the contracts and the topology."""

from __future__ import annotations

import re
from importlib import metadata
from typing import Any

import yaml

from switchyard_gateway.contracts import schemas, topology
from switchyard_gateway.contracts import subjects as s
from switchyard_gateway.contracts.deadletters import EVENT_WITHHELD
from switchyard_gateway.contracts.schemas import CONTRACTS
from switchyard_gateway.contracts.topology import Channel, Use

SCHEMAS = "#/components/schemas/"
MESSAGES = "#/components/messages/"
LOG_HEADERS = "LogMessageHeaders"     # of every message on LOG

DESCRIPTION = """\
Every NATS subject Switchyard's services speak on. Events are facts, named `<noun>.<past-tense verb>.v<major>`:
the same string is the subject prefix, the `type` field of the payload and the `type` column of the event log
(PostgreSQL `events`). The identifier comes last, as one subject token with `.`, `*`, `>`, white space and `%`
percent-escaped (`model.registered.v1.llama3%2E2`). A message on an event subject carries one event, or a JSON
array of events of that subject. Request/reply subjects are NATS micro services: errors come back with the
`Nats-Service-Error` and `Nats-Service-Error-Code` headers (the code is an HTTP status) and a `service.error`
body. JetStream streams (x-switchyard-streams) use {settings}. Within a version, fields are only ever added,
each with a default: readers must ignore fields they do not know. See docs/contracts/README.md."""


def document() -> dict[str, Any]:
    """The whole document as plain data."""
    tops, defs = schemas.components(SCHEMAS + "{name}")
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for channel in topology.CHANNELS:
        channels.update(_channels(channel, tops))
        operations.update(_operations(channel))
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Switchyard events and service messages",
            "version": _version(),
            "description": " ".join(DESCRIPTION.format(settings=topology.STREAM_SETTINGS).split()),
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "The NATS server of `switchyard up` (its port is chosen at start and kept in "
                               "stack.json), or SWITCHYARD_NATS_URL.",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": {**{name: _asyncapi_schema(schema) for name, schema in defs.items()},
                        LOG_HEADERS: _headers({s.POSITIONS_HEADER: "the log positions of the message's events, "
                                                                   "`<first>-<last>` (`7-7` for one)"})},
            "messages": {name: _message(name, tops[name]) for name in CONTRACTS},
        },
        "x-switchyard-streams": [_stream(stream) for stream in topology.STREAMS],
    }


def text() -> str:
    """The document as YAML, the form checked in as docs/contracts/asyncapi.yaml."""
    return yaml.safe_dump(document(), sort_keys=False, allow_unicode=True, width=110)


def _version() -> str:
    try:
        return metadata.version("switchyard-gateway")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def _addresses(channel: Channel) -> dict[str, str]:
    """A request/reply channel's key in `channels` -> its address: the subject, and with a scope, the subject
    with the scope's identifier appended (`metering.replay.v1.{tenant}`)."""
    subject = channel.contract
    if channel.tail:                    # a door: asked only with every token appended
        names = [name for name, _ in channel.tail]
        return {".".join([subject, *names]): ".".join([subject, *(f"{{{name}}}" for name in names)])}
    scoped = {f"{subject}.{channel.scope[0]}": f"{subject}.{{{channel.scope[0]}}}"} if channel.scope else {}
    return {subject: subject, **scoped}


def _channels(channel: Channel, tops: dict[str, Any]) -> dict[str, Any]:
    if channel.request_reply:
        subject = channel.contract
        asked = {key: {
            "address": address,
            "title": address,
            "description": CONTRACTS[f"{subject}.request"].summary,
            **({"parameters": {channel.scope[0]: {"description": f"{channel.scope[1]}, percent-escaped as one "
                                                                 "subject token"}}}
               if channel.scope and key != subject else {}),
            **({"parameters": {name: {"description": f"{meaning}; one subject token"} for name, meaning in channel.tail}}
               if channel.tail else {}),
            "messages": {"request": {"$ref": f"{MESSAGES}{subject}.request"}},
        } for key, address in _addresses(channel).items()}
        return {
            **asked,
            f"{subject}.reply": {
                "address": None,
                "title": f"{subject} reply",
                "description": "The requester's inbox (the NATS reply subject of the request).",
                "messages": {"reply": {"$ref": f"{MESSAGES}{subject}.reply"},
                             "error": {"$ref": f"{MESSAGES}{schemas.ERROR.name}"}},
            },
        }
    where = f"Stream `{channel.stream}`" if channel.stream else "Core NATS only: not stored in any stream"
    logged = "; recorded in the event log" if channel.logged else ""
    if channel.contract == s.LOG_PREFIX:
        summary = ("Every event of the log, in log order, as stored; events of one type and tenant at consecutive "
                   f"positions in one message (a JSON array, oldest first) with their positions in "
                   f"`{s.POSITIONS_HEADER}` (`<first>-<last>`). "
                   f"A row too large for one NATS message comes alone, as an `{EVENT_WITHHELD}` marker in its place "
                   "(its event id, type, position, tenant and size).")
        messages = {kind: _log_message(kind, tops[kind]) for kind in [*topology.logged_types(), EVENT_WITHHELD]}
    else:
        summary = CONTRACTS[channel.contract].summary
        messages = {"event": {"$ref": f"{MESSAGES}{channel.contract}"}}
    entry: dict[str, Any] = {
        "address": channel.address,
        "title": channel.contract,
        "description": f"{summary} {where}{logged}.",
        "parameters": _parameters(channel),
        "messages": messages,
    }
    if channel.stream:
        entry["x-switchyard-stream"] = channel.stream
    entry["x-switchyard-log"] = channel.logged
    return {channel.contract: entry}


def _parameters(channel: Channel) -> dict[str, Any]:
    """The address's parameters: the identifier one percent-escaped subject token, a type before it (LOG's) the
    type's own tokens as they are."""
    found = {}
    if channel.prefix:
        found[channel.prefix[0]] = {"description": channel.prefix[1]}
    if channel.parameter:
        found[channel.parameter[0]] = {"description": f"{channel.parameter[1]}, percent-escaped as one subject token"}
    return found


def _log_message(name: str, top: dict[str, Any]) -> dict[str, Any]:
    """A message of LOG: stored events of one type and tenant (or the marker in a row's place), with positions."""
    contract = CONTRACTS[name]
    return {
        "name": name, "title": f"{name} on LOG", "summary": contract.summary, "contentType": "application/json",
        "payload": {"type": "array", "items": dict(top), "minItems": 1},
        "headers": {"$ref": f"{SCHEMAS}{LOG_HEADERS}"},
    }


def _operation_id(use: Use, action: str, contract: str) -> str:
    return f"{re.sub(r'[^A-Za-z0-9_]+', '-', use.party)}.{action}.{contract}"


def _operations(channel: Channel) -> dict[str, Any]:
    found: dict[str, Any] = {}
    ref = {"$ref": f"#/channels/{channel.contract}"}
    if channel.request_reply:
        subject = channel.contract
        reply = {"channel": {"$ref": f"#/channels/{subject}.reply"},
                 "messages": [{"$ref": f"#/channels/{subject}.reply/messages/reply"},
                              {"$ref": f"#/channels/{subject}.reply/messages/error"}]}
        for key in _addresses(channel):
            asked, request = {"$ref": f"#/channels/{key}"}, [{"$ref": f"#/channels/{key}/messages/request"}]
            for use, action in [*((u, "send") for u in channel.producers),
                                *((u, "receive") for u in channel.consumers)]:
                found[_operation_id(use, action, key)] = {
                    "action": action, "channel": asked,
                    "title": f"{use.party} {'asks' if action == 'send' else 'answers'}",
                    "description": use.how, "messages": request, "reply": reply, "tags": [{"name": use.party}],
                }
        return found
    names = [*topology.logged_types(), EVENT_WITHHELD] if channel.contract == s.LOG_PREFIX else ["event"]
    messages = [{"$ref": f"#/channels/{channel.contract}/messages/{name}"} for name in names]
    for use, action in [*((u, "send") for u in channel.producers), *((u, "receive") for u in channel.consumers)]:
        found[_operation_id(use, action, channel.contract)] = {
            "action": action, "channel": ref,
            "title": f"{use.party} {'publishes' if action == 'send' else 'consumes'}",
            "description": use.how, "messages": messages, "tags": [{"name": use.party}],
        }
    return found


def _message(name: str, top: dict[str, Any]) -> dict[str, Any]:
    contract = CONTRACTS[name]
    message: dict[str, Any] = {"name": name, "title": name, "summary": contract.summary,
                               "contentType": "application/json"}
    if contract.kind == "event":
        message["payload"] = {"oneOf": [top, {"type": "array", "items": top, "minItems": 1,
                                              "description": "a batch: events of one subject, oldest first"}]}
        message["headers"] = _headers({s.MSG_ID_HEADER: "JetStream de-duplication: the event id, or the first "
                                                        "event id and `+<count>` for a batch"})
    elif contract.kind == "error":
        message["payload"] = _asyncapi_schema(top)
        message["headers"] = _headers({s.SERVICE_ERROR_HEADER: "the error message",
                                       s.SERVICE_ERROR_CODE_HEADER: "the HTTP status, e.g. 404"})
    else:
        message["payload"] = _asyncapi_schema(top)
    return message


def _headers(described: dict[str, str]) -> dict[str, Any]:
    return {"type": "object", "properties": {k: {"type": "string", "description": v} for k, v in described.items()}}


def _stream(stream: topology.Stream) -> dict[str, Any]:
    return {
        "name": stream.name, "subjects": list(stream.subjects), "description": stream.description,
        **({"max_age_s": stream.max_age_s} if stream.max_age_s else {}),
        "consumers": [{"party": c.party, **({"durable": c.durable} if c.durable else {}), "how": c.how}
                      for c in stream.consumers],
    }


def _asyncapi_schema(schema: Any) -> Any:
    """A JSON Schema in the AsyncAPI schema dialect: its `discriminator` is the property's name."""
    if isinstance(schema, list):
        return [_asyncapi_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _asyncapi_schema(value) for key, value in schema.items() if key != "discriminator"}
    if isinstance(schema.get("discriminator"), dict):
        out["discriminator"] = schema["discriminator"]["propertyName"]
    return out
