"""Sign-in tokens without I/O: what the gateway signs, what it accepts as a bearer, and when a session ends."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from switchyard_gateway.catalog.state import Catalog
from switchyard_gateway.contracts.events import TenantCreated
from switchyard_gateway.contracts.users import (
    UserCreated, UserPasswordChanged, UserRemoved, UserTokenRevoked, UserUpdated, UserView,
)
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


def version(catalog: Catalog) -> str:
    """alice's credential version, as the registry answers it with a sign-in check."""
    return str(catalog.users["alice"].event_id)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_an_access_token_stands_for_its_user_until_the_session_ends(catalog: Catalog) -> None:
    pair = tokens().sign_in(alice(), version(catalog))
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
    access = tokens().sign_in(alice(), version(catalog)).access_token
    gate = auth.Authenticator(catalog, jwt_secret=SECRET)
    gate.authenticate(bearer(access))
    catalog.apply(change)
    with pytest.raises(AuthError):
        gate.authenticate(bearer(access))


def test_a_refresh_token_is_not_a_bearer_and_an_access_token_is_not_a_refresh(catalog: Catalog) -> None:
    pair = tokens().sign_in(alice(), version(catalog))
    with pytest.raises(AuthError):
        auth.Authenticator(catalog, jwt_secret=SECRET).authenticate(bearer(pair.refresh_token))
    assert tokens().read(pair.access_token, "refresh") is None
    assert tokens().read(pair.refresh_token, "access") is None


def test_tokens_of_another_issuer_or_secret_or_past_their_time_are_not_read() -> None:
    pair = tokens().sign_in(alice(), "v1", now=time.time() - 8 * 86400)
    assert tokens().read(pair.refresh_token, "refresh") is None                 # expired
    fresh = tokens().sign_in(alice(), "v1").refresh_token
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
    pair = tokens().sign_in(alice(), version(catalog), now=time.time() - 50)
    gate = auth.Authenticator(catalog, jwt_secret=SECRET)
    gate.authenticate(bearer(pair.access_token))
    catalog.apply(UserUpdated(username="alice", **{"tenant_id": "acme", "role": "admin", **change},
                              occurred_at=ago(40)))
    catalog.apply(UserUpdated(username="alice", tenant_id="acme", role="admin", occurred_at=ago(30)))
    with pytest.raises(AuthError):
        gate.authenticate(bearer(pair.access_token))
    session = tokens().read(pair.refresh_token, "refresh")
    assert session is not None and catalog.user_session("alice", session.session, session.version) is None
    fresh = tokens().sign_in(alice(), version(catalog)).access_token
    assert gate.authenticate(bearer(fresh)).role == "admin"


def test_a_display_name_change_leaves_the_tokens_standing(catalog: Catalog) -> None:
    catalog.apply(UserCreated(username="alice", tenant_id="acme", role="admin", password_hash="$h",
                              occurred_at=ago(60)))
    access = tokens().sign_in(alice(), version(catalog), now=time.time() - 50).access_token
    gate = auth.Authenticator(catalog, jwt_secret=SECRET)
    catalog.apply(UserUpdated(username="alice", tenant_id="acme", role="admin", display_name="Alice A.",
                              occurred_at=ago(40)))
    assert gate.authenticate(bearer(access)).name == "alice"


# --- credential versions: a token stands for the very credentials whose password was checked ---------------------


def test_a_token_signed_for_credentials_since_replaced_is_refused_whenever_it_was_signed(catalog: Catalog) -> None:
    """The race of a sign-in checked against the old password and signed after the change: the token's `iat` is
    later than the change, but its `ver` names the credentials the registry checked, which are no longer the
    user's (before, `iat` was compared with the change's time, and such a token stood for its 7 days)."""
    checked = version(catalog)
    catalog.apply(UserPasswordChanged(username="alice", tenant_id="acme", password_hash="$new"))
    late = tokens().sign_in(alice(), checked)                     # signed after the change
    gate = auth.Authenticator(catalog, jwt_secret=SECRET)
    with pytest.raises(AuthError):
        gate.authenticate(bearer(late.access_token))
    session = tokens().read(late.refresh_token, "refresh")
    assert session is not None and catalog.user_session("alice", session.session, session.version) is None
    assert gate.authenticate(bearer(tokens().sign_in(alice(), version(catalog)).access_token)).name == "alice"


def test_a_user_removed_and_made_again_under_its_name_is_new_credentials(catalog: Catalog) -> None:
    checked = version(catalog)
    catalog.apply(UserRemoved(username="alice", tenant_id="acme"))
    catalog.apply(UserCreated(username="alice", tenant_id="acme", role="admin", password_hash="$h"))
    late = tokens().sign_in(alice(), checked)
    with pytest.raises(AuthError):
        auth.Authenticator(catalog, jwt_secret=SECRET).authenticate(bearer(late.access_token))


def test_a_change_moments_after_signing_in_ends_the_tokens_whatever_the_clocks_say(catalog: Catalog) -> None:
    """A promotion recorded 10 ms after the sign-in (or by a registry whose clock is behind) ended nothing within
    50 ms of slack: the old refresh token minted an admin access token. Versions are equal or not."""
    member = UserView(username="alice", tenant_id="acme", role="member")
    catalog.apply(UserUpdated(username="alice", tenant_id="acme", role="member"))
    pair = tokens().sign_in(member, version(catalog))
    catalog.apply(UserUpdated(username="alice", tenant_id="acme", role="admin", occurred_at=ago(60)))
    session = tokens().read(pair.refresh_token, "refresh")
    assert session is not None and catalog.user_session("alice", session.session, session.version) is None


def test_tokens_signed_before_tokens_carried_a_version_are_refused() -> None:
    """The rule for tokens issued before this version of the gateway: no `ver` (and a refresh token without `sid`)
    is not ours any more; their users sign in again."""
    catalog = Catalog()
    catalog.apply(TenantCreated(tenant_id="acme"))
    catalog.apply(UserCreated(username="alice", tenant_id="acme", role="admin", password_hash="$h"))
    now = time.time()
    old = {"iss": "switchyard", "sub": "alice", "tenant": "acme", "role": "admin", "iat": now, "exp": int(now) + 900}
    access = jwt.encode({**old, "jti": "a1", "typ": "access", "sid": "r1"}, SECRET, algorithm="HS256")
    refresh = jwt.encode({**old, "jti": "r1", "typ": "refresh"}, SECRET, algorithm="HS256")
    with pytest.raises(AuthError):
        auth.Authenticator(catalog, jwt_secret=SECRET).authenticate(bearer(access))
    assert tokens().read(refresh, "refresh") is None and tokens().read(access, "access") is None


# --- rotation --------------------------------------------------------------------------------------------------


def test_a_rotated_pair_is_new_of_the_same_session_and_the_same_for_the_same_first_use(catalog: Catalog) -> None:
    signer = tokens()
    pair = signer.sign_in(alice(), version(catalog), now=time.time() - 60)
    spent = signer.read(pair.refresh_token, "refresh")
    assert spent is not None
    first_use = round(time.time() - 30, 3)
    rotated = signer.rotate(spent, alice(), first_use)
    assert rotated == signer.rotate(spent, alice(), first_use), "a refresh answered twice answers one pair"
    new = signer.read(rotated.refresh_token, "refresh")
    access = signer.read(rotated.access_token, "access")
    assert new is not None and access is not None
    assert new.token_id not in (spent.token_id, access.token_id) and rotated.refresh_token != pair.refresh_token
    assert (new.session, new.version, new.expires_at) == (spent.session, spent.version, spent.expires_at), \
        "the same session, ending when it would have: refreshing does not extend it"
    assert access.session == spent.session and rotated.refresh_expires_in == int(spent.expires_at) - int(first_use)
    assert signer.read(signer.rotate(new, alice(), first_use + 5).refresh_token, "refresh").token_id != new.token_id
