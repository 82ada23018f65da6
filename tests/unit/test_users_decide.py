"""Users as registry facts: decisions, the catalog's fold, sessions, and the hash never shown."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from switchyard_gateway.catalog.state import Catalog
from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts.users import UserCreated, UserPasswordChanged, UserTokenRevoked, UserUpdated
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.services.registry import views
from switchyard_gateway.services.registry.decide import decide
from switchyard_gateway.services.registry.passwords import Passwords

HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"


def run(catalog: Catalog, command: m.Command, password_hash: str | None = None) -> list:
    events, _, _ = decide(catalog, command, password_hash)
    for event in events:
        catalog.apply(event)
    return events


def refused(catalog: Catalog, command: m.Command) -> tuple[int, str, str | None]:
    with pytest.raises(ServiceError) as caught:
        decide(catalog, command, HASH)
    return caught.value.status, caught.value.body.code, caught.value.body.field


@pytest.fixture
def catalog() -> Catalog:
    c = Catalog()
    run(c, m.CreateTenant(tenant_id="acme"))
    run(c, m.CreateTenant(tenant_id="other"))
    run(c, m.CreateUser(username="alice", tenant_id="acme", password="correct horse", role="admin"), HASH)
    return c


def test_a_created_user_carries_the_hash_and_never_the_password(catalog: Catalog) -> None:
    user = catalog.users["alice"]
    assert (user.tenant_id, user.role, user.password_hash) == ("acme", "admin", HASH)
    assert "correct horse" not in repr(user)
    shown = views.answer(catalog, m.RegistryQuery("users", id="alice"))
    assert "password_hash" not in shown and HASH not in repr(shown)
    assert shown["username"] == "alice" and shown["password_changed_at"]


@pytest.mark.parametrize(("command", "expected"), [
    (m.CreateUser(username="alice", tenant_id="acme", password="long enough"), (409, "CONFLICT", "username")),
    (m.CreateUser(username="Alice", tenant_id="acme", password="long enough"), (409, "CONFLICT", "username")),
    (m.CreateUser(username="bob", tenant_id="nobody", password="long enough"), (404, "TENANT_NOT_FOUND", "tenant_id")),
    (m.CreateUser(username="bob", tenant_id="acme", password="short"), (422, "VALIDATION_ERROR", "password")),
    (m.CreateUser(username="bob", tenant_id="acme", password="tab\tinside it"), (422, "VALIDATION_ERROR", "password")),
    (m.CreateUser(username="bob smith", tenant_id="acme", password="long enough"),
     (400, "INVALID_IDENTIFIER", "username")),
    (m.CreateUser(username="-bob", tenant_id="acme", password="long enough"), (400, "INVALID_IDENTIFIER", "username")),
    (m.CreateUser(username="bob", tenant_id="acme", password="long enough", display_name="a\u202eb"),
     (400, "VALIDATION_ERROR", "display_name")),
    (m.UpdateUser(username="ghost", role="admin"), (404, "USER_NOT_FOUND", "username")),
    (m.UpdateUser(username="alice", password="1234567"), (422, "VALIDATION_ERROR", "password")),
    (m.RemoveUser(username="ghost"), (404, "USER_NOT_FOUND", "username")),
])
def test_invalid_user_commands_name_status_code_and_field(catalog: Catalog, command, expected) -> None:
    assert refused(catalog, command) == expected


def test_an_update_records_only_what_changed(catalog: Catalog) -> None:
    assert run(catalog, m.UpdateUser(username="alice", role="admin")) == []
    events = run(catalog, m.UpdateUser(username="alice", tenant_id="other", password="another secret"), "$new")
    assert [type(e) for e in events] == [UserUpdated, UserPasswordChanged]
    user = catalog.users["alice"]
    assert (user.tenant_id, user.role, user.password_hash) == ("other", "admin", "$new")


def test_a_session_stands_until_signed_out_role_changed_password_changed_or_user_removed(catalog: Catalog) -> None:
    signed_for = str(catalog.users["alice"].event_id)        # the credential version a sign-in check answers
    assert catalog.session_live("alice", "acme", "admin", "s1", signed_for)
    assert not catalog.session_live("alice", "acme", "member", "s1", signed_for), "a role the user no longer has"
    assert not catalog.session_live("alice", "other", "admin", "s1", signed_for), "another tenant"
    [ended] = run(catalog, m.RevokeUserToken(username="alice", token_id="s1", expires_at=datetime.now(UTC)))
    assert isinstance(ended, UserTokenRevoked)
    assert run(catalog, m.RevokeUserToken(username="alice", token_id="s1")) == [], "ending it twice records nothing"
    assert not catalog.session_live("alice", "acme", "admin", "s1", signed_for)
    assert catalog.session_live("alice", "acme", "admin", "s2", signed_for)
    earlier = catalog.users["alice"].occurred_at - timedelta(seconds=5)      # a clock behind: the version counts
    changed = UserPasswordChanged(username="alice", tenant_id="acme", password_hash="$x", occurred_at=earlier)
    catalog.apply(changed)
    assert not catalog.session_live("alice", "acme", "admin", "s2", signed_for), "signed for the old password"
    assert catalog.session_live("alice", "acme", "admin", "s3", str(changed.event_id))
    run(catalog, m.RemoveUser(username="alice"))
    assert not catalog.session_live("alice", "acme", "admin", "s3", str(changed.event_id))


def test_revocations_are_forgotten_once_their_tokens_expired_anyway(catalog: Catalog) -> None:
    now = datetime.now(UTC)
    catalog.apply(UserTokenRevoked(username="alice", tenant_id="acme", token_id="old", expires_at=now))
    catalog.apply(UserTokenRevoked(username="alice", tenant_id="acme", token_id="new",
                                   expires_at=now + timedelta(days=7), occurred_at=now + timedelta(seconds=1)))
    assert set(catalog.sessions_ended) == {"new"}


def test_removing_a_tenant_removes_its_users(catalog: Catalog) -> None:
    run(catalog, m.RemoveTenant(tenant_id="acme"))
    assert "alice" not in catalog.users


def test_passwords_hash_with_argon2id_and_check_in_constant_shape() -> None:
    async def scenario() -> None:
        passwords = Passwords(concurrency=1)
        stored = await passwords.hash("correct horse battery")
        assert stored.startswith("$argon2id$") and "correct horse" not in stored
        assert await passwords.check(stored, "correct horse battery")
        assert not await passwords.check(stored, "correct horse battery!")
        assert not await passwords.check(None, "a password nobody has"), "an unknown user never matches"
        assert not await passwords.check("not a hash", "anything")

    asyncio.run(scenario())


def test_a_user_event_round_trip_keeps_the_hash_for_the_registry() -> None:
    event = UserCreated(username="a", tenant_id="t", password_hash=HASH)
    assert event.password_hash == HASH and event.identifier == "a"
