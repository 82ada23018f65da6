"""The published contracts: docs/contracts is what the code generates, every schema is valid JSON Schema
that accepts what the code writes and refuses what it would refuse, and the AsyncAPI document, the
subjects module and the subject table of docs/architecture.md name the same subjects."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import msgspec
import pytest
import yaml

from switchyard_gateway.cli import main
from switchyard_gateway.contracts import asyncapi, codec, metering, published, schemas, subjects, topology
from tests.unit.test_contracts import SAMPLES

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "contracts"
FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schemas.json_schema(name), format_checker=FORMATS)


def test_checked_in_contracts_are_what_the_code_generates() -> None:
    differences = published.differences(DOCS)
    assert not differences, (
        "docs/contracts is out of date with libs/contracts:\n  " + "\n  ".join(differences)
        + f"\nRegenerate it with `{published.REGENERATE}` and commit the result (and check "
          "docs/contracts/README.md's rules: a field removed or retyped needs a new version).")


@pytest.mark.parametrize("name", list(schemas.CONTRACTS))
def test_every_schema_is_valid_json_schema(name: str) -> None:
    jsonschema.Draft202012Validator.check_schema(schemas.json_schema(name))


def test_every_event_type_and_every_request_subject_has_a_contract() -> None:
    names = set(schemas.CONTRACTS)
    assert set(codec.EVENT_TYPES) <= names
    request_subjects = {v for k, v in vars(subjects).items() if re.fullmatch(r"(REGISTRY|ROUTER|METERING|QUOTA|GATEWAY)_[A-Z]+", k)}
    assert {f"{x}.request" for x in request_subjects} | {f"{x}.reply" for x in request_subjects} <= names
    assert len(schemas.CONTRACTS) == len(codec.EVENT_TYPES) + 2 * len(request_subjects) + 2   # the error, the marker


def test_the_withheld_marker_has_a_schema_that_takes_what_is_sent_and_refuses_an_event() -> None:
    """An outside subscriber meets `event.withheld.v1` in the place of a row too large for NATS: it validates
    against its own schema, and an ordinary event does not pass for one."""
    from switchyard_gateway.contracts.deadletters import EVENT_WITHHELD, EventWithheld

    marker = EventWithheld(event_id=SAMPLES[0].event_id,
                           event_type="usage.recorded.v2", position=41, size_bytes=2_000_000, max_payload=1_048_576,
                           withheld_by="log.feed", tenant="acme")
    validator(EVENT_WITHHELD).validate(msgspec.json.decode(msgspec.json.encode(marker)))
    event = msgspec.json.decode(codec.encode(SAMPLES[0]))
    assert not validator(EVENT_WITHHELD).is_valid(event)
    assert schemas.CONTRACTS[EVENT_WITHHELD].kind == "marker"


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: codec.EVENT_TYPES and type(e).__struct_config__.tag)
def test_what_the_code_writes_is_valid_against_its_schema(event) -> None:
    payload = msgspec.json.decode(codec.encode(event))
    validator(payload["type"]).validate(payload)


@pytest.mark.parametrize(("change", "why"), [
    ({"input_tokens": "7"}, "a count as a string"),
    ({"outcome": "maybe"}, "an outcome nobody knows"),
    ({"type": "usage.recorded.v3"}, "another type's tag"),
    ({"event_id": "not-a-uuid"}, "an event id that is no UUID"),
    ({"occurred_at": "yesterday"}, "a time that is no RFC 3339 date-time"),
    ({"ttfb_ms": [1]}, "a list for a number"),
])
def test_schema_refuses_what_the_decoder_refuses(change: dict, why: str) -> None:
    payload = {**msgspec.json.decode(codec.encode(SAMPLES[0])), **change}
    with pytest.raises(jsonschema.ValidationError):
        validator("usage.recorded.v2").validate(payload)
    with pytest.raises(msgspec.ValidationError):
        codec.decode_event(msgspec.json.encode(payload))


FOLLOW = {"stream": "LOG", "sequence": 1, "subjects": ["log.>"], "deliver_to": "_INBOX_billing.f"}


@pytest.mark.parametrize(("kind", "body"), [
    ("ReplayRequest", {"after": -1}),
    ("ReplayRequest", {"max_events": 0}),
    ("ReplayRequest", {"max_events": 10_001}),
    ("ReplayRequest", {"max_bytes": -1}),
    ("ReplayRequest", {"types": ["usage"] * 65}),
    ("ReplayRequest", {"types": ["u" * 65]}),
    ("ReplayRequest", {"types": ["usage.*"]}),                  # a NATS wildcard is no type prefix
    ("ReplayRequest", {"types": ["usage\n"]}),                  # nor is one with a line break after it
    ("ReplayRequest", {"types": ["log.>"]}),
    ("ReplayRequest", {"types": ["Usage"]}),
    ("ReplayRequest", {"types": ["usage.recorded.v2.acme"]}),   # four tokens: a subject, not a type
    ("ReplayRequest", {"deliver_to": "replay." + "x" * 250}),
    ("Follow", {**FOLLOW, "sequence": 0}),
    ("Follow", {**FOLLOW, "sequence": 2**63}),
    ("Follow", {**FOLLOW, "subjects": []}),
    ("Follow", {**FOLLOW, "subjects": [f"log.t{i}.x.v1.*" for i in range(65)]}),
    ("Follow", {**FOLLOW, "subjects": [f"log.{'x' * 300}.b.c.*"]}),
    ("Follow", {**FOLLOW, "heartbeat_s": 0.4}),
    ("Follow", {**FOLLOW, "heartbeat_s": 61}),
    ("Follow", {**FOLLOW, "deliver_to": "_INBOX_billing." + "x" * 250}),
])
def test_a_subscribers_request_the_published_schema_allows_is_one_metering_decodes(kind: str, body: dict) -> None:
    """The limits metering holds a subscriber's request to were not in its published schema: a request valid by
    `metering.subscriber.v1.request.json` got a 400. They are declared once, on the fields: the checked-in schema
    and the decoder refuse the same bodies, and both take the body at the limit."""
    published_schema = json.loads((DOCS / "schemas" / "metering.subscriber.v1.request.json").read_text())
    check = jsonschema.Draft202012Validator({"$ref": f"#/$defs/{kind}", "$defs": published_schema["$defs"]})
    decode = msgspec.json.Decoder(getattr(metering, kind)).decode
    assert not check.is_valid(body)
    with pytest.raises(msgspec.ValidationError):
        decode(msgspec.json.encode(body))
    at_limit = {"ReplayRequest": {"after": 0, "max_events": 10_000, "types": ["u" * 64] * 64,
                                  "deliver_to": "replay." + "x" * 249},
                "Follow": {**FOLLOW, "sequence": 2**63 - 1, "heartbeat_s": 60,
                           "subjects": [f"log.t{i}.x.v1.*" for i in range(64)]}}[kind]
    check.validate(at_limit)
    decode(msgspec.json.encode(at_limit))


def test_a_subscribers_types_are_type_prefixes_by_its_published_schema_and_the_kit() -> None:
    """Metering refused a `types` value that is no type prefix of whole tokens (`usage.*`, a line break after one),
    but the published schema allowed any string: it states the pattern now, and the kit refuses such a value before
    it asks anything."""
    from switchyard_gateway.subscribe import Subscriber

    published_schema = json.loads((DOCS / "schemas" / "metering.subscriber.v1.request.json").read_text())
    types = published_schema["$defs"]["ReplayRequest"]["properties"]["types"]
    assert types["items"]["pattern"] == metering.TYPE_PREFIX
    check = jsonschema.Draft202012Validator({"$ref": "#/$defs/ReplayRequest", "$defs": published_schema["$defs"]})
    check.validate({"types": ["usage", "tenant.created", "usage.recorded.v2"]})
    with pytest.raises(ValueError, match=r"\$\.types\[1\]"):
        Subscriber("spend", _nothing, nats_url="nats://127.0.0.1:4222", database_url="postgresql://127.0.0.1/x",
                   types=["usage", "usage\n"])


async def _nothing(_conn, _batch) -> None:
    return None


def test_a_missing_required_field_is_refused_and_an_unknown_one_is_not() -> None:
    payload = msgspec.json.decode(codec.encode(SAMPLES[0]))
    with pytest.raises(jsonschema.ValidationError, match="tenant_id"):
        validator("usage.recorded.v2").validate({k: v for k, v in payload.items() if k != "tenant_id"})
    validator("usage.recorded.v2").validate({**payload, "added_in_a_later_release": 1})   # readers must ignore it


def test_request_schemas_follow_the_command_tags() -> None:
    check = validator("registry.command.v1.request")
    check.validate({"command": "create_tenant", "tenant_id": "acme"})
    with pytest.raises(jsonschema.ValidationError):
        check.validate({"command": "drop_everything"})
    with pytest.raises(jsonschema.ValidationError):
        check.validate({"command": "create_tenant"})            # no tenant_id


# --- the AsyncAPI document, the subjects module and the docs agree ----------------------------------------


def test_every_subject_of_the_code_is_a_channel() -> None:
    versioned = {v for v in vars(subjects).values() if isinstance(v, str) and re.fullmatch(r"[a-z_.]+\.v\d+", v)}
    assert versioned == {c.contract for c in topology.CHANNELS} - {subjects.LOG_PREFIX}
    assert set(subjects.STREAMS) <= {s.name for s in topology.STREAMS}
    for channel in topology.CHANNELS:
        if channel.stream in subjects.STREAMS:
            captured = [p for p in subjects.STREAMS[channel.stream] if f"{channel.contract}.".startswith(p[:-1])]
            assert captured, f"{channel.contract} is not captured by {channel.stream}"


def test_event_subjects_end_with_the_identifier_the_asyncapi_document_names() -> None:
    for event in SAMPLES:
        tag = type(event).__struct_config__.tag
        channel = topology.channel(tag)
        if tag == subjects.CALL_ATTEMPTED:          # batched per gateway instance, whatever the endpoints
            continue
        assert channel.address == f"{tag}.{{{channel.parameter[0]}}}"
        subject = codec.EVENT_TYPES[tag].identifier.fget(event)   # type: ignore[attr-defined]
        assert subject in json.dumps(msgspec.to_builtins(event)), (tag, channel.parameter)


def test_asyncapi_references_resolve_and_parameters_match_addresses() -> None:
    doc = asyncapi.document()
    assert doc["asyncapi"] == "3.0.0"

    def resolve(ref: str) -> object:
        node: object = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]                       # type: ignore[index]
        return node

    refs = re.findall(r"'\$ref': '([^']+)'", repr(doc))
    assert refs and all(resolve(ref) is not None for ref in refs)
    for channel in doc["channels"].values():
        if channel["address"] is not None:
            assert set(re.findall(r"{(\w+)}", channel["address"])) == set(channel.get("parameters", {}))
    for name, operation in doc["operations"].items():
        assert operation["action"] in ("send", "receive"), name
        channel = operation["channel"]["$ref"]
        assert all(m["$ref"].startswith(channel + "/messages/") for m in operation["messages"]), name
    parties = {op["tags"][0]["name"] for op in doc["operations"].values()}
    assert set(topology.SERVICES) <= parties
    assert {s["name"] for s in doc["x-switchyard-streams"]} >= set(subjects.STREAMS)


def test_the_log_channel_says_what_its_messages_carry() -> None:
    """LOG's messages declared only the events' `Nats-Msg-Id` (the feed sets none) and not the positions header a
    reader needs; the type was "three tokens" and "percent-escaped as one subject token" at once (it is its tokens,
    as they are: subjects.log_subject)."""
    doc = asyncapi.document()
    log = doc["channels"][subjects.LOG_PREFIX]
    headers = doc["components"]["schemas"][asyncapi.LOG_HEADERS]["properties"]
    assert list(headers) == [subjects.POSITIONS_HEADER]
    for message in log["messages"].values():
        assert message["headers"] == {"$ref": f"{asyncapi.SCHEMAS}{asyncapi.LOG_HEADERS}"}
        assert message["payload"]["type"] == "array"
    assert "escaped" not in log["parameters"]["type"]["description"]
    assert subjects.log_subject("usage.recorded.v2", "a.b") == "log.usage.recorded.v2.a%2Eb"


@pytest.mark.parametrize("tenant", [None, "acme"])
def test_every_subject_a_subscriber_may_publish_on_is_a_channel_of_the_document(tenant: str | None) -> None:
    """What NATS lets a subscriber's user say (JetStream's own API aside) is named by the AsyncAPI document, so a
    client generated from it can say it: a `{parameter}` stands for one token."""
    from switchyard_gateway.kit.nats_auth import SubscriberUser, permissions

    addresses = [c["address"] for c in asyncapi.document()["channels"].values() if c["address"]]
    patterns = [re.compile("^" + re.sub(r"\\{\w+\\}", r"[^.]+", re.escape(a)) + "$") for a in addresses]
    allowed = permissions(SubscriberUser("billing", "$2a$11$" + "x" * 53, "spend", tenant))["publish"]["allow"]
    unnamed = [s for s in allowed if not s.startswith("$JS.") and not any(p.match(s) for p in patterns)]
    assert not unnamed, f"subjects a subscriber may use that the AsyncAPI document does not name: {unnamed}"


def _table() -> dict[str, list[str]]:
    """The subject table of docs/architecture.md: each subject (as written, `<tenant>` for `{tenant}`) with
    its row's cells."""
    text = (REPO / "docs" / "architecture.md").read_text()
    rows: dict[str, list[str]] = {}
    for line in text.split("| subject | stream | producer | consumers | payload |", 1)[1].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        for subject in re.findall(r"`([^`]+)`", cells[0]):
            rows[subject] = cells
    return rows


def test_the_architecture_subject_table_names_every_channel_with_its_stream_producers_and_consumers() -> None:
    table = _table()
    for channel in topology.CHANNELS:
        written = re.sub(r"{(\w+)}", r"<\1>", channel.address)
        assert written in table, f"docs/architecture.md's subject table has no row for `{written}`"
        stream, producers, consumers = table[written][1:4]
        assert (channel.stream or "—") in stream or (channel.stream is None and "none" in stream), written
        for use in channel.producers:
            assert use.party in producers, f"{written}: producer {use.party} not in the table"
        for use in channel.consumers:
            assert use.party in consumers, f"{written}: consumer {use.party} not in the table"
    documented = set(table)
    generated = {re.sub(r"{(\w+)}", r"<\1>", c.address) for c in topology.CHANNELS}
    infrastructure = {subjects.SERVICE_PING, f"$KV.{subjects.KV_ROUTER_LEADER}.leader"}
    assert documented <= generated | infrastructure, documented - generated


# --- the command ------------------------------------------------------------------------------------------


def test_schema_command_lists_prints_and_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", "schema"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == list(schemas.CONTRACTS)
    assert main(["events", "schema", "usage.recorded.v2"]) == 0
    assert json.loads(capsys.readouterr().out) == schemas.json_schema("usage.recorded.v2")
    assert main(["events", "schema", "--asyncapi"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == yaml.safe_load(asyncapi.text())
    assert main(["events", "schema", "--write", str(tmp_path)]) == 0
    assert published.differences(tmp_path) == []
    (tmp_path / "schemas" / "gone.v1.json").write_text("{}")
    assert published.differences(tmp_path) == ["stale: schemas/gone.v1.json"]


def test_schema_command_names_a_near_contract_when_asked_for_an_unknown_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", "schema", "usage.recorded"]) == 2
    assert "usage.recorded.v2" in capsys.readouterr().err


def test_a_reader_that_stops_reading_ends_the_command_quietly() -> None:
    """`switchyard events schema ... | head`: the pipe's reader is gone before the schema is written."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "switchyard_gateway.cli", "events", "schema",
                               "usage.recorded.v2"], stdout=write, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert done.returncode == 1 and done.stderr == "", done.stderr[-600:]
