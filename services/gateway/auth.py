"""Authenticate a caller from its headers against the local catalog: no I/O."""

from __future__ import annotations

from collections.abc import Iterable

from libs.catalog.state import Catalog
from libs.contracts.events import KeyIssued
from services.gateway.errors import AuthError, ForbiddenError


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key from `Authorization: Bearer <key>` or `X-API-Key: <key>` (ASGI raw headers)."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value:
            return value.decode("latin-1").strip()
    return None


def authenticate(catalog: Catalog, headers: Iterable[tuple[bytes, bytes]]) -> KeyIssued:
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
