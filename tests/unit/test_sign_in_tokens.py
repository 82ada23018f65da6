"""Sign-in tokens without I/O: what the gateway signs, what it accepts as a bearer, and when a session ends."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from switchyard_gateway.catalog.state import Catalog
from switchyard_gateway.contracts.events import TenantCreated
from switchyard_gateway.contracts.users import UserCreated, UserRemoved, UserTokenRevoked, UserUpdated, UserView
from switchyard_gateway.services.gateway.edge import auth
from switchyard_gateway.services.gateway.edge.errors import AuthError
from switchyard_gateway.services.gateway.edge.tokens import Tokens

SECRET = "a-test-secret-of-32-bytes-or-more!"


@pytest.fixture
def catalog() -> Catalog:
    c = Catalog()
    c.apply(TenantCreated(tenant_id="acme"))
    c.apply(UserCreated(username="alice", tenant_id="acme", role="admin", password_hash="$h"))
    return c


def tokens() -> Tokens:
    return Tokens(SECRET, "switchyard", access_ttl_s=900, refresh_ttl_s=7 * 86400)


def alice() -> UserView:
    return UserView(username="alice", tenant_id="acme", role="admin")


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_an_access_token_stands_for_its_user_until_the_session_ends(catalog: Catalog) -> None:
    pair = tokens().sign_in(alice())
    gate = auth.Authenticator(catalog, jwt_secret=SECRET)
    caller = gate.authenticate(bearer(pair.access_token))
    assert (caller.key_id, caller.tenant_id, caller.role, caller.name) == ("user:alice", "acme", "admin", "alice")
    session = tokens().read(pair.refresh_token, "refresh")
    assert session is not None and session.session == tokens().read(pair.access_token, "access").session
    catalog.apply(UserTokenRevoked(username="alice", tenant_id="acme", token_id=session.session))
    with pytest.raises(AuthError):
        gate.authenticate(bearer(pair.access_token))                 # cached, and still refused


@pytest.mark.parametrize("change", [
    UserUpdated(username="alice", tenant_id="acme", role="member"),
    UserRemoved(username="alice", tenant_id="acme"),
])
def test_a_role_change_or_removal_ends_the_access_token(catalog: Catalog, change) -> None:
    access = tokens().sign_in(alice()).access_token
    gate = auth.Authenticator(catalog, jwt_secret=SECRET)
    gate.authenticate(bearer(access))
    catalog.apply(change)
    with pytest.raises(AuthError):
        gate.authenticate(bearer(access))


def test_a_refresh_token_is_not_a_bearer_and_an_access_token_is_not_a_refresh(catalog: Catalog) -> None:
    pair = tokens().sign_in(alice())
    with pytest.raises(AuthError):
        auth.Authenticator(catalog, jwt_secret=SECRET).authenticate(bearer(pair.refresh_token))
    assert tokens().read(pair.access_token, "refresh") is None
    assert tokens().read(pair.refresh_token, "access") is None


def test_tokens_of_another_issuer_or_secret_or_past_their_time_are_not_read() -> None:
    pair = tokens().sign_in(alice(), now=time.time() - 8 * 86400)
    assert tokens().read(pair.refresh_token, "refresh") is None                 # expired
    fresh = tokens().sign_in(alice()).refresh_token
    assert Tokens(SECRET, "elsewhere", 900, 60).read(fresh, "refresh") is None
    assert Tokens("another-secret-of-32-bytes-or-more", "switchyard", 900, 60).read(fresh, "refresh") is None
    claims = jwt.decode(fresh, SECRET, algorithms=["HS256"], issuer="switchyard")
    assert tokens().read(jwt.encode({**claims, "alg": "none"}, None, algorithm="none"), "refresh") is None
    assert tokens().read("x" * 5000 + ".a.b", "refresh") is None



def ago(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


@pytest.mark.parametrize("change", [{"role": "member"}, {"tenant_id": "other"}])
def test_a_token_cut_off_by_a_role_or_tenant_change_stays_cut_off_when_the_change_is_reverted(
        catalog: Catalog, change: dict[str, str]) -> None:
    """Reverting a demotion (or a move) must not revive the tokens issued before it: they could have been taken
    while the user was being locked out; only tokens signed after the last change stand."""
    catalog.apply(TenantCreated(tenant_id="other"))
    catalog.apply(UserCreated(username="alice", tenant_id="acme", role="admin", password_hash="$h",
                              occurred_at=ago(60)))
    pair = tokens().sign_in(alice(), now=time.time() - 50)
    gate = auth.Authenticator(catalog, jwt_secret=SECRET)
    gate.authenticate(bearer(pair.access_token))
    catalog.apply(UserUpdated(username="alice", **{"tenant_id": "acme", "role": "admin", **change},
                              occurred_at=ago(40)))
    catalog.apply(UserUpdated(username="alice", tenant_id="acme", role="admin", occurred_at=ago(30)))
    with pytest.raises(AuthError):
        gate.authenticate(bearer(pair.access_token))
    session = tokens().read(pair.refresh_token, "refresh")
    assert session is not None and catalog.user_session("alice", session.session, session.issued_at) is None
    fresh = tokens().sign_in(alice()).access_token
    assert gate.authenticate(bearer(fresh)).role == "admin"


def test_a_display_name_change_leaves_the_tokens_standing(catalog: Catalog) -> None:
    catalog.apply(UserCreated(username="alice", tenant_id="acme", role="admin", password_hash="$h",
                              occurred_at=ago(60)))
    access = tokens().sign_in(alice(), now=time.time() - 50).access_token
    gate = auth.Authenticator(catalog, jwt_secret=SECRET)
    catalog.apply(UserUpdated(username="alice", tenant_id="acme", role="admin", display_name="Alice A.",
                              occurred_at=ago(40)))
    assert gate.authenticate(bearer(access)).name == "alice"
