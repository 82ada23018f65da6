"""Authentication without I/O: registry keys, HS256 JWTs, and single-user mode."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from switchyard_gateway.catalog.state import Catalog, hash_key
from switchyard_gateway.contracts.events import KeyIssued, KeyRevoked, TenantCreated
from switchyard_gateway.services.gateway.edge import auth
from switchyard_gateway.services.gateway.edge.errors import AuthError, ForbiddenError

SECRET = "a-test-secret-of-32-bytes-or-more!"
KEY = "sy_abc123_secretsecretsecret"


def catalog() -> Catalog:
    c = Catalog()
    c.apply(TenantCreated(tenant_id="acme"))
    c.apply(KeyIssued(key_id="sy_abc123", tenant_id="acme", key_sha256=hash_key(KEY), role="member"))
    return c


def token(secret: str = SECRET, **claims: object) -> str:
    base = {"iss": "switchyard", "tenant": "acme", "role": "member", "sub": "alice", "exp": int(time.time()) + 60}
    return jwt.encode({**base, **claims}, secret, algorithm="HS256")


def bearer(value: str) -> dict[str, str]:
    return {"authorization": f"Bearer {value}"}


def test_registry_key_is_accepted_as_bearer_and_x_api_key_until_revoked() -> None:
    c = catalog()
    keys = auth.Authenticator(c)
    assert keys.authenticate(bearer(KEY)).key_id == "sy_abc123"
    assert keys.authenticate({"x-api-key": KEY}).tenant_id == "acme"
    c.apply(KeyRevoked(key_id="sy_abc123", tenant_id="acme"))
    with pytest.raises(AuthError):
        keys.authenticate(bearer(KEY))


def test_expired_registry_key_is_refused() -> None:
    c = catalog()
    c.apply(KeyIssued(key_id="sy_old", tenant_id="acme", key_sha256=hash_key("sy_old_x"),
                      expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    with pytest.raises(AuthError):
        auth.Authenticator(c).authenticate(bearer("sy_old_x"))


def test_jwt_with_tenant_and_role_claims_is_accepted_in_multi_tenant_mode() -> None:
    caller = auth.Authenticator(catalog(), jwt_secret=SECRET).authenticate(bearer(token(role="admin")))
    assert (caller.tenant_id, caller.role, caller.key_id) == ("acme", "admin", "jwt:alice")
    assert auth.require_admin(caller) is caller


def test_jwt_with_a_wrong_signature_is_refused() -> None:
    with pytest.raises(AuthError) as refused:
        auth.Authenticator(catalog(), jwt_secret=SECRET).authenticate(
            bearer(token(secret="another-secret-of-32-bytes-or-more")))
    assert refused.value.status == 401 and refused.value.body() == {"error": "Invalid or expired token"}


def test_expired_jwt_is_refused_even_after_it_was_accepted_once() -> None:
    config = auth.Authenticator(catalog(), jwt_secret=SECRET)
    with pytest.raises(AuthError):
        config.authenticate(bearer(token(exp=int(time.time()) - 1)))
    fresh = token(exp=int(time.time()) + 5)
    assert config.token_caller(fresh) is not None
    assert config.token_caller(fresh, now=time.time() + 10) is None           # the cache honours `exp`


def test_jwt_without_the_admin_role_gets_403_on_admin_routes() -> None:
    caller = auth.Authenticator(catalog(), jwt_secret=SECRET).authenticate(bearer(token()))
    with pytest.raises(ForbiddenError) as refused:
        auth.require_admin(caller)
    assert refused.value.status == 403 and refused.value.body() == {"error": "Admin role required"}


def test_jwt_for_an_unknown_tenant_or_without_exp_is_refused() -> None:
    jwts = auth.Authenticator(catalog(), jwt_secret=SECRET)
    with pytest.raises(AuthError):
        jwts.authenticate(bearer(token(tenant="nobody")))
    no_exp = jwt.encode({"iss": "switchyard", "tenant": "acme", "role": "admin"}, SECRET, algorithm="HS256")
    with pytest.raises(AuthError):
        jwts.authenticate(bearer(no_exp))


def test_jwts_are_refused_when_no_secret_is_configured() -> None:
    with pytest.raises(AuthError):
        auth.Authenticator(catalog()).authenticate(bearer(token()))


def test_single_user_mode_accepts_only_its_one_key_as_admin() -> None:
    caller = auth.Authenticator(Catalog(), "single-user", api_key="the-only-key-0123456789",
                                jwt_secret=SECRET).authenticate({"x-api-key": "the-only-key-0123456789"})
    assert (caller.role, caller.tenant_id) == ("admin", auth.SINGLE_USER_TENANT)
    single = auth.Authenticator(catalog(), "single-user", api_key="the-only-key-0123456789", jwt_secret=SECRET)
    for refused in (KEY, token()):
        with pytest.raises(AuthError):
            single.authenticate(bearer(refused))


def test_single_user_mode_without_a_key_does_not_start() -> None:
    with pytest.raises(ValueError):
        auth.Authenticator(Catalog(), "single-user")


def test_the_anonymous_tenant_stands_for_requests_without_a_key_only_where_asked() -> None:
    authenticator = auth.Authenticator(catalog(), anonymous_tenant="acme")
    caller = authenticator.authenticate({}, anonymous=True)
    assert (caller.tenant_id, caller.role, caller.key_id) == ("acme", "member", "anonymous")
    with pytest.raises(AuthError):
        authenticator.authenticate({})                                  # admin and monitoring routes
    with pytest.raises(AuthError):
        authenticator.authenticate(bearer("sy_wrong"), anonymous=True)  # a wrong key is never anonymous
    for header in ({"authorization": "sy_wrong"}, {"authorization": "Token x"},
                   {"authorization": "Basic dXNlcjpwYXNz"}, {"authorization": "Bearer "}, {"x-api-key": "sy_wrong"}):
        with pytest.raises(AuthError):                                  # nor any other credential not accepted
            authenticator.authenticate(header, anonymous=True)
    assert authenticator.authenticate({"authorization": " ", "x-api-key": ""}, anonymous=True).key_id == "anonymous"
    assert authenticator.authenticate(bearer(KEY), anonymous=True).key_id == "sy_abc123"
    with pytest.raises(AuthError):                                      # off by default
        auth.Authenticator(catalog()).authenticate({}, anonymous=True)
    with pytest.raises(AuthError):                                      # a tenant the registry does not know
        auth.Authenticator(catalog(), anonymous_tenant="nobody").authenticate({}, anonymous=True)


def test_a_jwt_without_our_issuer_is_refused() -> None:
    jwts = auth.Authenticator(catalog(), jwt_secret=SECRET)
    for claims in ({"iss": "someone-else"}, {"iss": ""}):
        with pytest.raises(AuthError):
            jwts.authenticate(bearer(token(**claims)))
    no_iss = jwt.encode({"tenant": "acme", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    with pytest.raises(AuthError):
        jwts.authenticate(bearer(no_iss))
    other = auth.Authenticator(catalog(), jwt_secret=SECRET, jwt_issuer="https://id.example")
    assert other.authenticate(bearer(token(iss="https://id.example"))).tenant_id == "acme"


def test_x_tenant_id_must_name_the_callers_tenant() -> None:
    keys = auth.Authenticator(catalog())
    assert keys.authenticate({**bearer(KEY), "x-tenant-id": "acme"}).tenant_id == "acme"
    with pytest.raises(ForbiddenError) as refused:
        keys.authenticate({**bearer(KEY), "x-tenant-id": "other"})
    assert refused.value.status == 403 and "X-Tenant-ID" in refused.value.body()["error"]


def test_an_empty_x_tenant_id_names_no_tenant() -> None:
    keys = auth.Authenticator(catalog())
    for empty in ("", " "):
        assert keys.authenticate({**bearer(KEY), "x-tenant-id": empty}).tenant_id == "acme"


def test_a_jwt_secret_shorter_than_32_bytes_does_not_start() -> None:
    with pytest.raises(ValueError, match="SWITCHYARD_JWT_SECRET must be at least 32 bytes"):
        auth.Authenticator(catalog(), jwt_secret="changeme")
    assert auth.Authenticator(catalog(), "single-user", api_key="the-only-key-0123456789", jwt_secret="changeme")


@pytest.mark.parametrize(("spelling", "mode"), [("single_user", "single-user"), ("SINGLE-USER", "single-user"),
                                                ("multi_user", "multi-tenant"), ("multi-tenant", "multi-tenant")])
def test_the_embeddings_services_auth_mode_spellings_are_accepted(spelling: str, mode: str) -> None:
    assert auth.Authenticator(Catalog(), spelling, api_key="the-only-key-0123456789").mode == mode


def test_an_unknown_auth_mode_does_not_start() -> None:
    with pytest.raises(ValueError, match="single_user"):
        auth.Authenticator(Catalog(), "everyone")
