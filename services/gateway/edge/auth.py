"""Authenticate a caller from its headers, with no I/O: registry keys, JWTs, or the single-user key.

Two modes (`SWITCHYARD_AUTH_MODE`; the spellings `multi_user` and `single_user` are accepted too):
- `multi-tenant` (default): keys issued by the registry, checked against the local
  catalog (SHA-256, constant-time compare, expiry, revocation); and, when
  `SWITCHYARD_JWT_SECRET` is set, HS256 JWT bearer tokens whose claims name the
  `tenant` and `role` (`member` or `admin`), carry an `exp` and the issuer
  `SWITCHYARD_JWT_ISSUER` (`iss`). Access tokens of signed-in users (`typ: access`,
  edge/tokens.py) must also still stand in the catalog: user, role, session, and the credential
  version (`ver`) they were signed for.
- `single-user`: only the key in `SWITCHYARD_API_KEY` is accepted, as an admin of
  the `admin` tenant.
Keys come as `Authorization: Bearer <key>` or `X-API-Key: <key>`. A request that names a
tenant (`X-Tenant-ID`, not empty) must name the caller's own (403 otherwise). With `SWITCHYARD_ANONYMOUS_TENANT`
set (for trusted networks only), a call to the inference doors or the Ollama listings that presents no
credential at all is a member of that tenant; any credential presented and not accepted (a wrong key, or an
`Authorization` header of another scheme) is still refused, and admin routes always need a key.
`SWITCHYARD_JWT_SECRET` must be at least 32 bytes (settings.JWT_SECRET_MIN_BYTES): a shorter one can be guessed
offline from any token it signed.
"""

from __future__ import annotations

import hmac
import time
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

import jwt

from switchyard_gateway.catalog.state import Catalog, hash_key
from switchyard_gateway.contracts.events import KeyIssued
from switchyard_gateway.services.gateway.settings import AUTH_MODES, Settings, jwt_secret_problem
from switchyard_gateway.services.gateway.edge.errors import AuthError, ForbiddenError, TenantMismatch

SINGLE_USER_TENANT = "admin"
SINGLE_USER_KEY_ID = "single-user"
ANONYMOUS_KEY_ID = "anonymous"
JWT_CACHE_SIZE = 4096
JWT_MAX_BYTES = 8192                  # a longer bearer token is not one of ours
LATEST_EXPIRY = datetime(9999, 12, 31, tzinfo=UTC)   # an `exp` past this (10^18, inf) means "never"


def auth_mode(value: str) -> str:
    """The mode a SWITCHYARD_AUTH_MODE value names; ValueError for anything else."""
    mode = AUTH_MODES.get(value.strip().lower())
    if mode is None:
        raise ValueError(f"SWITCHYARD_AUTH_MODE must be 'multi-tenant' (or 'multi_user') or 'single-user' "
                         f"(or 'single_user'), not '{value}'")
    return mode


class _Verified(NamedTuple):
    """A verified JWT: the caller it stands for and, for a signed-in user's access token, what the catalog
    must still agree with."""

    key: KeyIssued
    user: str | None
    session: str
    version: str


class HeaderLookup(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...


class Authenticator:
    """Who a request's key stands for, checked against the local catalog: one per gateway, built at start."""

    def __init__(self, catalog: Catalog, mode: str = "multi-tenant", api_key: str = "", jwt_secret: str = "",
                 jwt_issuer: str = "switchyard", anonymous_tenant: str = "") -> None:
        mode = auth_mode(mode)
        if mode == "single-user" and not api_key:
            raise ValueError("single-user mode needs SWITCHYARD_API_KEY")
        if mode == "multi-tenant" and (problem := jwt_secret_problem(jwt_secret)):
            raise ValueError(problem)
        self.catalog = catalog
        self.mode = mode
        self.single_user: KeyIssued | None = None
        if mode == "single-user":
            self.single_user = KeyIssued(key_id=SINGLE_USER_KEY_ID, tenant_id=SINGLE_USER_TENANT,
                                         key_sha256=hash_key(api_key), role="admin", name="single-user key")
        self.jwt_secret = jwt_secret if mode == "multi-tenant" else ""
        self.jwt_issuer = jwt_issuer
        self.anonymous: KeyIssued | None = None       # the caller a request without a key stands for, if any
        if anonymous_tenant:
            self.anonymous = KeyIssued(key_id=ANONYMOUS_KEY_ID, tenant_id=anonymous_tenant, key_sha256="",
                                       role="member", name="anonymous")
        self._tokens: dict[str, _Verified] = {}    # verified tokens -> caller, until they expire

    @classmethod
    def from_settings(cls, catalog: Catalog, settings: Settings) -> Authenticator:
        return cls(catalog, settings.auth_mode, settings.api_key, settings.jwt_secret, settings.jwt_issuer,
                   settings.anonymous_tenant)

    def authenticate(self, headers: HeaderLookup, *, anonymous: bool = False) -> KeyIssued:
        """The caller's live key (or JWT, or the single-user key), or AuthError; TenantMismatch (403) when
        `X-Tenant-ID` names another tenant than the caller's. With `anonymous` (the inference doors and
        Ollama's listings), a request with no key is the anonymous tenant's, when one is configured and the
        registry knows it."""
        secret = presented_key(headers)
        key = self.caller(secret) if secret else None
        if key is None and anonymous and self.anonymous is not None and not credential_presented(headers) \
                and self.anonymous.tenant_id in self.catalog.tenants:
            key = self.anonymous
        if key is None:
            raise AuthError()
        asked = (headers.get("x-tenant-id") or "").strip()      # an empty header names no tenant
        if asked and asked != key.tenant_id:
            raise TenantMismatch()
        return key

    def caller(self, secret: str) -> KeyIssued | None:
        """The live caller a presented secret stands for, or None."""
        if self.single_user is not None:
            ok = hmac.compare_digest(hash_key(secret), self.single_user.key_sha256)
            return self.single_user if ok else None
        key = self.catalog.authenticate(secret)
        if key is None and self.jwt_secret and secret.count(".") == 2:
            key = self.token_caller(secret)
            if key is not None and key.tenant_id not in self.catalog.tenants:
                return None
        return key

    def token_caller(self, token: str, now: float | None = None) -> KeyIssued | None:
        """The caller of a JWT: signature (HS256), `iss`, `exp`, `tenant` and `role` checked, cached until it
        expires; a signed-in user's access token also asks the catalog whether it still stands, every time."""
        now = time.time() if now is None else now
        seen = self._tokens.get(token)
        if seen is None:
            seen = self._verify(token)
            if seen is None:
                return None
            if len(self._tokens) >= JWT_CACHE_SIZE:
                del self._tokens[next(iter(self._tokens))]
            self._tokens[token] = seen
        key = seen.key
        assert key.expires_at is not None
        if key.expires_at.timestamp() <= now:
            self._tokens.pop(token, None)
            return None
        if seen.user is not None and not self.catalog.session_live(seen.user, key.tenant_id, key.role, seen.session,
                                                                   seen.version):
            return None
        return key

    def _verify(self, token: str) -> _Verified | None:
        if len(token) > JWT_MAX_BYTES:
            return None
        try:       # a hostile token may carry an absurd exp, or JSON nested too deeply to read
            claims = jwt.decode(token, self.jwt_secret, algorithms=["HS256"], issuer=self.jwt_issuer,
                                options={"require": ["exp", "iss"]})
            expires = _expiry(claims["exp"])
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError, RecursionError):
            return None
        tenant, role = claims.get("tenant", claims.get("tenant_id")), claims.get("role", "member")
        if not isinstance(tenant, str) or not tenant or role not in ("member", "admin"):
            return None
        kind = claims.get("typ")
        if kind not in (None, "access"):            # a refresh token is not a bearer token
            return None
        if kind == "access":                        # signed by sign-in: a user of the catalog
            user, session, version = claims.get("sub"), claims.get("sid"), claims.get("ver")
            if not isinstance(user, str) or not isinstance(session, str) or not isinstance(version, str):
                return None                         # no `ver`: signed before tokens carried one, refused
            key = KeyIssued(key_id=f"user:{user}", tenant_id=tenant, key_sha256="", role=role, name=user,
                            expires_at=expires)
            return _Verified(key, user, session, version)
        subject = str(claims.get("sub") or claims.get("jti") or tenant)[:200]
        key = KeyIssued(key_id=f"jwt:{subject}", tenant_id=tenant, key_sha256="", role=role, name="jwt",
                        expires_at=expires)
        return _Verified(key, None, "", "")


def _expiry(exp: object) -> datetime:
    """A JWT's `exp` as a time; one past year 9999 (10^18, infinity) is read as year 9999, not a crash."""
    if isinstance(exp, bool) or not isinstance(exp, int | float) or exp != exp:
        raise ValueError("exp is not a number")
    if exp >= LATEST_EXPIRY.timestamp():
        return LATEST_EXPIRY
    return datetime.fromtimestamp(exp, UTC)


def credential_presented(headers: HeaderLookup) -> bool:
    """Whether the request presents any credential at all (an `Authorization` header of any scheme, or an
    `X-API-Key`): one that is not accepted is a 401, never the anonymous tenant."""
    return bool((headers.get("authorization") or "").strip() or (headers.get("x-api-key") or "").strip())


def presented_key(headers: HeaderLookup) -> str | None:
    """The key from `Authorization: Bearer <key>` or `X-API-Key: <key>` (lower-case header lookup)."""
    value = headers.get("authorization")
    if value:
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    value = headers.get("x-api-key")
    return value.strip() if value else None


def require_admin(key: KeyIssued) -> KeyIssued:
    """The key itself if it has the admin role; ForbiddenError otherwise."""
    if key.role != "admin":
        raise ForbiddenError()
    return key
