"""Authenticate a caller from its headers against the local catalog: no I/O."""

from __future__ import annotations

from typing import Any, Protocol

from libs.catalog.state import Catalog
from libs.contracts.events import KeyIssued
from services.gateway.errors import AuthError, ForbiddenError


class HeaderLookup(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...


def presented_key(headers: HeaderLookup) -> str | None:
    """The key from `Authorization: Bearer <key>` or `X-API-Key: <key>` (lower-case header lookup)."""
    value = headers.get("authorization")
    if value:
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    value = headers.get("x-api-key")
    return value.strip() if value else None


def authenticate(catalog: Catalog, headers: HeaderLookup) -> KeyIssued:
    """The caller's live key, or AuthError."""
    secret = presented_key(headers)
    key = catalog.authenticate(secret) if secret else None
    if key is None:
        raise AuthError()
    return key


def require_admin(key: KeyIssued) -> KeyIssued:
    if key.role != "admin":
        raise ForbiddenError()
    return key
