"""Authenticate a caller from its headers, with no I/O: registry keys, JWTs, or the single-user key.

Two modes (`SWITCHYARD_AUTH_MODE`):
- `multi-tenant` (default): keys issued by the registry, checked against the local
  catalog (SHA-256, constant-time compare, expiry, revocation); and, when
  `SWITCHYARD_JWT_SECRET` is set, HS256 JWT bearer tokens whose claims name the
  `tenant` and `role` (`member` or `admin`) and carry an `exp`.
- `single-user`: only the key in `SWITCHYARD_API_KEY` is accepted, as an admin of
  the `admin` tenant.
Keys come as `Authorization: Bearer <key>` or `X-API-Key: <key>`.
"""

from __future__ import annotations

import hmac
import time
from datetime import UTC, datetime
from typing import Any, Protocol

import jwt

from switchyard_gateway.catalog.state import Catalog, hash_key
from switchyard_gateway.contracts.events import KeyIssued
from switchyard_gateway.services.gateway.settings import Settings
from switchyard_gateway.services.gateway.edge.errors import AuthError, ForbiddenError

SINGLE_USER_TENANT = "admin"
SINGLE_USER_KEY_ID = "single-user"
JWT_CACHE_SIZE = 4096
JWT_MAX_BYTES = 8192                  # a longer bearer token is not one of ours
LATEST_EXPIRY = datetime(9999, 12, 31, tzinfo=UTC)   # an `exp` past this (10^18, inf) means "never"


class HeaderLookup(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...


class Authenticator:
    """Who a request's key stands for, checked against the local catalog: one per gateway, built at start."""

    def __init__(self, catalog: Catalog, mode: str = "multi-tenant", api_key: str = "", jwt_secret: str = "") -> None:
        if mode not in ("multi-tenant", "single-user"):
            raise ValueError(f"SWITCHYARD_AUTH_MODE must be 'multi-tenant' or 'single-user', not '{mode}'")
        if mode == "single-user" and not api_key:
            raise ValueError("single-user mode needs SWITCHYARD_API_KEY")
        self.catalog = catalog
        self.mode = mode
        self.single_user: KeyIssued | None = None
        if mode == "single-user":
            self.single_user = KeyIssued(key_id=SINGLE_USER_KEY_ID, tenant_id=SINGLE_USER_TENANT,
                                         key_sha256=hash_key(api_key), role="admin", name="single-user key")
        self.jwt_secret = jwt_secret if mode == "multi-tenant" else ""
        self._tokens: dict[str, KeyIssued] = {}    # verified tokens -> caller, until they expire

    @classmethod
    def from_settings(cls, catalog: Catalog, settings: Settings) -> Authenticator:
        return cls(catalog, settings.auth_mode, settings.api_key, settings.jwt_secret)

    def authenticate(self, headers: HeaderLookup) -> KeyIssued:
        """The caller's live key (or JWT, or the single-user key), or AuthError."""
        secret = presented_key(headers)
        key = self.caller(secret) if secret else None
        if key is None:
            raise AuthError()
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
        """The caller of a JWT: signature (HS256), `exp`, `tenant` and `role` checked; cached until it expires."""
        now = time.time() if now is None else now
        key = self._tokens.get(token)
        if key is None:
            if len(token) > JWT_MAX_BYTES:
                return None
            try:       # a hostile token may carry an absurd exp, or JSON nested too deeply to read
                claims = jwt.decode(token, self.jwt_secret, algorithms=["HS256"], options={"require": ["exp"]})
                expires_at = _expiry(claims["exp"])
            except (jwt.PyJWTError, ValueError, TypeError, OverflowError, RecursionError):
                return None
            tenant, role = claims.get("tenant", claims.get("tenant_id")), claims.get("role", "member")
            if not isinstance(tenant, str) or not tenant or role not in ("member", "admin"):
                return None
            subject = str(claims.get("sub") or claims.get("jti") or tenant)[:200]
            key = KeyIssued(key_id=f"jwt:{subject}", tenant_id=tenant, key_sha256="", role=role,
                            name="jwt", expires_at=expires_at)
            if len(self._tokens) >= JWT_CACHE_SIZE:
                del self._tokens[next(iter(self._tokens))]
            self._tokens[token] = key
        assert key.expires_at is not None
        if key.expires_at.timestamp() <= now:
            self._tokens.pop(token, None)
            return None
        return key


def _expiry(exp: object) -> datetime:
    """A JWT's `exp` as a time; one past year 9999 (10^18, infinity) is read as year 9999, not a crash."""
    if isinstance(exp, bool) or not isinstance(exp, int | float) or exp != exp:
        raise ValueError("exp is not a number")
    if exp >= LATEST_EXPIRY.timestamp():
        return LATEST_EXPIRY
    return datetime.fromtimestamp(exp, UTC)


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
