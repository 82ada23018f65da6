"""Contracts: one string names a fact; events survive the wire; old versions are upcast."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import msgspec
import pytest

from switchyard_gateway.contracts import codec, subjects
from switchyard_gateway.contracts import deadletters as dl
from switchyard_gateway.contracts import events as ev
from switchyard_gateway.contracts import quota as qt
from switchyard_gateway.contracts import routing as rt
from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts import users as us

SAMPLES: list[ev.Event] = [
    ev.UsageRecorded(request_id="r1", tenant_id="acme", key_id="sy_1", model="llama3.2", api="openai.chat",
                     outcome="ok", status=200, input_tokens=3, output_tokens=5),
    ev.CallAttempted(request_id="r1", endpoint_id="ep-1", model="llama3.2", outcome="refused"),
    ev.ProviderRegistered(provider_id="ollama-local", kind="ollama"),
    ev.ProviderRemoved(provider_id="ollama-local"),
    ev.EndpointRegistered(endpoint_id="ep-1", provider_id="p", base_url="http://x:1", models=("a",),
                          api_key_ref="${KEY}"),
    ev.EndpointRemoved(endpoint_id="ep-1"),
    ev.ModelRegistered(model_id="llama3.2", aliases=("llama3.2:latest",)),
    ev.ModelRemoved(model_id="llama3.2"),
    ev.TenantCreated(tenant_id="acme"),
    ev.TenantRemoved(tenant_id="acme"),
    ev.TenantModelAssigned(tenant_id="acme", model_id="llama3.2", is_default=True),
    ev.TenantModelUnassigned(tenant_id="acme", model_id="llama3.2"),
    ev.KeyIssued(key_id="sy_1", tenant_id="acme", key_sha256="00" * 32),
    ev.KeyRevoked(key_id="sy_1", tenant_id="acme"),
    rt.ProbeCompleted(endpoint_id="ep-1", ok=True, latency_ms=2.5, models=("a",), loaded=("a",), version="0.5.7"),
    rt.CircuitChanged(endpoint_id="ep-1", state="open", previous="closed", reason="consecutive_failures", failures=5),
    rt.EndpointModelsDiscovered(endpoint_id="ep-1", models=("a", "b")),
    qt.LimitsSet(tenant_id="acme", model_id="llama3.2"),
    rt.ModelWarmed(model_id="llama3.2", endpoint_id="ep-1", ok=True, duration_ms=812.5, trigger="start"),
    us.UserCreated(username="alice@acme", tenant_id="acme", role="admin", password_hash="$argon2id$v=19$..."),
    us.UserUpdated(username="alice@acme", tenant_id="acme", role="member"),
    us.UserPasswordChanged(username="alice@acme", tenant_id="acme", password_hash="$argon2id$v=19$..."),
    us.UserRemoved(username="alice@acme", tenant_id="acme"),
    us.UserTokenRevoked(username="alice@acme", tenant_id="acme", token_id="0f3a", expires_at=datetime.now(UTC)),
    dl.EventDeadLettered(consumer="metering", stage="decode", error="ValidationError: Expected `int`", source="USAGE",
                         subject="usage.recorded.v2.acme", sequence=42, data=b'{"type": "usage.recorded.v2"}',
                         headers={"Nats-Msg-Id": "0191+1"}),
    dl.EventRetryRequested(consumer="tenant-spend", dead_letter=7, source="log", sequence=1234, data=b"{}"),
]


def test_every_event_type_has_a_sample_here() -> None:
    assert {ev.event_type(e) for e in SAMPLES} == set(codec.EVENT_TYPES)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: ev.event_type(e))
def test_event_round_trips_through_the_codec(event: ev.Event) -> None:
    assert codec.decode_event(codec.encode(event)) == event


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: ev.event_type(e))
def test_tag_is_the_subject_prefix_and_identifier_comes_last(event: ev.Event) -> None:
    type_ = ev.event_type(event)
    subject = ev.subject_of(event)
    assert msgspec.json.decode(codec.encode(event))["type"] == type_
    assert subject.startswith(type_ + ".") and subject.count(".") == type_.count(".") + 1


def test_every_stored_event_subject_is_captured_by_exactly_one_stream() -> None:
    for type_ in codec.EVENT_TYPES:
        noun = type_.split(".", 1)[0]
        if type_ == subjects.CALL_ATTEMPTED:        # a live signal on core NATS, not stored
            assert not any(f"{noun}.>" in subs for subs in subjects.STREAMS.values())
            continue
        owners = [name for name, subs in subjects.STREAMS.items() if f"{noun}.>" in subs]
        assert len(owners) == 1, type_
    assert all("." not in name for name in subjects.STREAMS)


def test_unknown_fields_from_a_newer_producer_are_ignored() -> None:
    payload = msgspec.json.decode(codec.encode(SAMPLES[0]))
    payload["added_in_a_later_release"] = {"nested": True}
    assert codec.decode_event(msgspec.json.encode(payload)) == SAMPLES[0]


def test_old_version_is_upcast_on_read(monkeypatch: pytest.MonkeyPatch) -> None:
    old = {"type": "usage.recorded.v0", "event_id": str(uuid.uuid4()), "occurred_at": datetime.now(UTC).isoformat(),
           "request_id": "r", "tenant": "acme", "key_id": "k", "model": "m", "api": "openai.chat",
           "outcome": "ok", "status": 200, "prompt_tokens": 7, "completion_tokens": 9}

    def upcast(raw: dict) -> dict:
        raw = dict(raw, type=subjects.USAGE_RECORDED, tenant_id=raw.pop("tenant"))
        raw["input_tokens"], raw["output_tokens"] = raw.pop("prompt_tokens"), raw.pop("completion_tokens")
        return raw

    monkeypatch.setitem(codec.UPCASTS, "usage.recorded.v0", upcast)
    event = codec.decode_event(msgspec.json.encode(old))
    assert isinstance(event, ev.UsageRecorded)
    assert (event.tenant_id, event.input_tokens, event.output_tokens) == ("acme", 7, 9)


def test_unknown_type_without_an_upcast_is_an_error() -> None:
    with pytest.raises(msgspec.ValidationError):
        codec.decode_event(b'{"type": "usage.recorded.v0", "event_id": "x"}')


def test_commands_decode_by_their_tag() -> None:
    command = codec.decode_command(b'{"command": "issue_key", "tenant_id": "acme", "role": "admin"}')
    assert command == m.IssueKey(tenant_id="acme", role="admin")
    with pytest.raises(msgspec.ValidationError):
        codec.decode_command(b'{"command": "issue_key", "tenant_id": "acme", "role": "owner"}')


def test_key_issued_carries_a_hash_never_a_secret_field() -> None:
    assert "key_sha256" in ev.KeyIssued.__struct_fields__
    assert not {"key", "secret", "api_key"} & set(ev.KeyIssued.__struct_fields__)
    assert "api_key" not in ev.EndpointRegistered.__struct_fields__


def test_identifiers_with_subject_metacharacters_stay_one_token() -> None:
    assert subjects.subject_for("model.registered.v1", "llama3.2") == "model.registered.v1.llama3%2E2"
    assert subjects.subject_token("a*b>c d%") == "a%2Ab%3Ec%20d%25"
    path_id = "/tmp/pytest-of-ci/models/tiny q4.gguf"
    assert subjects.subject_for("model.registered.v1", path_id) == \
        "model.registered.v1./tmp/pytest-of-ci/models/tiny%20q4%2Egguf"
    assert subjects.subject_token("a\tb\r\nc\x7f") == "a%09b%0D%0Ac%7F"


def test_a_message_may_carry_one_event_or_a_batch() -> None:
    batch = [SAMPLES[0], ev.UsageRecorded(request_id="r2", tenant_id="acme", key_id="k", model="m",
                                          api="openai.chat", outcome="error", status=502)]
    assert codec.decode_events(codec.encode_batch(batch)) == batch
    assert codec.decode_events(codec.encode(SAMPLES[2])) == [SAMPLES[2]]


def test_event_ids_are_version_7_uuids_that_grow_with_time() -> None:
    import time

    first = ev.new_id()
    time.sleep(0.002)
    later = [ev.new_id() for _ in range(1000)]
    assert first.version == 7 and first.variant == "specified in RFC 4122"
    assert all(first < other for other in later)                  # a later millisecond sorts after
    assert abs((first.int >> 80) - time.time() * 1000) < 5_000    # the first 48 bits are unix milliseconds
    assert len({*later, first}) == 1001


def test_random_bytes_are_not_shared_with_a_forked_child() -> None:
    """Ids take their random bits from a pool read 4 KiB at a time; a child forked with a pool half used must
    not hand out the bytes its parent hands out next (two gateway workers forked from one main)."""
    import os

    ev.random_bytes(10)                                  # the pool is filled, and partly used
    read, write = os.pipe()
    child = os.fork()
    if child == 0:                                       # pragma: no cover — the child writes and leaves
        os.write(write, ev.random_bytes(64) + ev.random_hex(16).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    theirs = b""
    while chunk := os.read(read, 4096):
        theirs += chunk
    os.close(read)
    ours = ev.random_bytes(64) + ev.random_hex(16).encode()
    assert len(theirs) == len(ours) == 96 and theirs[:64] != ours[:64] and theirs[64:] != ours[64:]
    assert len({ev.random_hex(16) for _ in range(10_000)}) == 10_000       # across refills too
