"""The registry's pure parts: validation, command -> events, the catalog fold and key checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from switchyard_gateway.catalog.state import Catalog, hash_key, key_id_of
from switchyard_gateway.contracts import messages as m
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.services.registry.decide import decide


def run(catalog: Catalog, command: m.Command):
    events, key, key_id = decide(catalog, command)
    for event in events:
        catalog.apply(event)
    return events, key, key_id


@pytest.fixture
def catalog() -> Catalog:
    c = Catalog()
    run(c, m.RegisterProvider(provider_id="ollama-local", kind="ollama"))
    run(c, m.RegisterModel(model_id="llama3.2", aliases=("llama3.2:latest", "llama")))
    run(c, m.RegisterEndpoint(endpoint_id="ep-1", provider_id="ollama-local", base_url="http://127.0.0.1:11434",
                              models=("llama3.2",), priority=1))
    run(c, m.CreateTenant(tenant_id="acme"))
    return c


@pytest.mark.parametrize(
    ("command", "status", "code", "field"),
    [
        (m.CreateTenant(tenant_id="Acme!"), 400, "INVALID_IDENTIFIER", "tenant_id"),
        (m.CreateTenant(tenant_id="a"), 400, "INVALID_IDENTIFIER", "tenant_id"),
        (m.RegisterEndpoint(endpoint_id="ep-2", provider_id="nope", base_url="http://x"), 404,
         "PROVIDER_NOT_FOUND", "provider_id"),
        (m.RegisterEndpoint(endpoint_id="ep-2", provider_id="ollama-local", base_url="ftp://x"), 400,
         "INVALID_ENDPOINT", "base_url"),
        (m.RegisterEndpoint(endpoint_id="ep-2", provider_id="ollama-local", base_url="http://x:70000"), 400,
         "INVALID_ENDPOINT", "base_url"),
        (m.RegisterEndpoint(endpoint_id="ep-2", provider_id="ollama-local", base_url="http://x",
                            api_key_ref="sk-live-secret"), 400, "VALIDATION_ERROR", "api_key_ref"),
        (m.AssignModel(tenant_id="acme", model_id="nope"), 404, "MODEL_NOT_FOUND", "model_id"),
        (m.RemoveProvider(provider_id="ollama-local"), 409, "CONFLICT", "provider_id"),
        (m.IssueKey(tenant_id="ghost"), 404, "TENANT_NOT_FOUND", "tenant_id"),
        (m.IssueKey(tenant_id="acme", name="a\x00"), 400, "VALIDATION_ERROR", "name"),       # stopped the log's feed
        (m.IssueKey(tenant_id="acme", name="\x1b[31mred\r\nX-Injected: 1"), 400, "VALIDATION_ERROR", "name"),
        (m.IssueKey(tenant_id="acme", name="evil\u202etxt.exe"), 400, "VALIDATION_ERROR", "name"),
        (m.IssueKey(tenant_id="acme", name="k" * 201), 400, "VALIDATION_ERROR", "name"),
        (m.RevokeKey(key_id="sy_nothere"), 404, "KEY_NOT_FOUND", "key_id"),
    ],
)
def test_invalid_commands_are_refused_with_code_and_field(catalog: Catalog, command, status, code, field) -> None:
    with pytest.raises(ServiceError) as caught:
        decide(catalog, command)
    assert (caught.value.status, caught.value.body.code, caught.value.body.field) == (status, code, field)


def test_repeating_a_command_records_nothing(catalog: Catalog) -> None:
    events, _, _ = run(catalog, m.CreateTenant(tenant_id="acme"))
    assert events == []
    changed, _, _ = run(catalog, m.CreateTenant(tenant_id="acme", display_name="Acme Corp"))
    assert len(changed) == 1 and catalog.tenants["acme"].display_name == "Acme Corp"


def test_generated_key_is_returned_once_and_only_its_hash_is_recorded(catalog: Catalog) -> None:
    events, key, key_id = run(catalog, m.IssueKey(tenant_id="acme"))
    assert key is not None and key_id_of(key) == key_id
    assert events[0].key_sha256 == hash_key(key)
    assert key not in repr(events)
    assert catalog.authenticate(key).tenant_id == "acme"
    assert catalog.authenticate(key + "x") is None


def test_supplied_key_is_idempotent_and_not_echoed(catalog: Catalog) -> None:
    secret = "operator-chosen-key-0123456789"
    first, key, key_id = run(catalog, m.IssueKey(tenant_id="acme", role="admin", secret=secret))
    assert len(first) == 1 and key is None and key_id
    again, _, same_id = run(catalog, m.IssueKey(tenant_id="acme", role="admin", secret=secret))
    assert again == [] and same_id == key_id
    assert catalog.authenticate(secret).role == "admin"


def test_revoked_and_expired_keys_stop_working(catalog: Catalog) -> None:
    _, key, key_id = run(catalog, m.IssueKey(tenant_id="acme"))
    run(catalog, m.RevokeKey(key_id=key_id))
    assert catalog.authenticate(key) is None
    _, soon, _ = run(catalog, m.IssueKey(tenant_id="acme", expires_at=datetime.now(UTC) + timedelta(seconds=30)))
    assert catalog.authenticate(soon) is not None
    assert catalog.authenticate(soon, now=datetime.now(UTC) + timedelta(minutes=1)) is None


def test_expiry_without_an_offset_is_recorded_as_utc_and_old_such_keys_still_authenticate(catalog: Catalog) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).replace(tzinfo=None)
    events, key, _ = run(catalog, m.IssueKey(tenant_id="acme", expires_at=later))
    assert events[0].expires_at == later.replace(tzinfo=UTC)
    assert catalog.authenticate(key) is not None
    # A key event recorded before times were normalised carries no offset: it is read as UTC, not a crash.
    old = msgspec.structs.replace(events[0], key_id="sy-00000000", key_sha256=hash_key("sy-00000000_old"),
                                  expires_at=later)
    catalog.apply(old)
    assert catalog.authenticate("sy-00000000_old") is not None
    assert catalog.authenticate("sy-00000000_old", now=datetime.now(UTC) + timedelta(hours=2)) is None


def test_removing_a_tenant_disables_its_keys(catalog: Catalog) -> None:
    _, key, _ = run(catalog, m.IssueKey(tenant_id="acme"))
    run(catalog, m.RemoveTenant(tenant_id="acme"))
    assert catalog.authenticate(key) is None


def test_models_resolve_by_alias_and_latest_suffix(catalog: Catalog) -> None:
    assert catalog.resolve_model("llama") == "llama3.2"
    assert catalog.resolve_model("llama3.2:latest") == "llama3.2"
    assert catalog.resolve_model("llama:latest") == "llama3.2"
    assert catalog.resolve_model("mistral") is None


def test_assignment_restricts_a_tenant_without_all_models(catalog: Catalog) -> None:
    run(catalog, m.CreateTenant(tenant_id="narrow", all_models=False))
    assert not catalog.tenant_may_use("narrow", "llama3.2")
    run(catalog, m.AssignModel(tenant_id="narrow", model_id="llama3.2"))
    assert catalog.tenant_may_use("narrow", "llama3.2")
    run(catalog, m.AssignModel(tenant_id="narrow", model_id="llama3.2", enabled=False))
    assert not catalog.tenant_may_use("narrow", "llama3.2")


def test_endpoints_serving_a_model_come_highest_priority_first(catalog: Catalog) -> None:
    run(catalog, m.RegisterEndpoint(endpoint_id="ep-0", provider_id="ollama-local", base_url="http://h:1",
                                    models=("llama",), priority=9))
    assert [e.endpoint_id for e in catalog.endpoints_serving("llama3.2")] == ["ep-0", "ep-1"]


def test_revoking_a_revoked_key_again_records_nothing_and_succeeds(catalog: Catalog) -> None:
    _, _, key_id = run(catalog, m.IssueKey(tenant_id="acme", name="ci runner — ünïcode ok"))
    revoked, _, _ = run(catalog, m.RevokeKey(key_id=key_id))
    assert len(revoked) == 1 and key_id in catalog.revoked
    again, _, _ = run(catalog, m.RevokeKey(key_id=key_id))
    assert again == [] and key_id in catalog.revoked
