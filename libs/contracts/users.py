"""User contracts: people who sign in with a username and a password (registry service).

Users are registry facts like keys: created, updated, their password changed, removed, and their
sessions ended, each an event in the log and on `REGISTRY`. A user's password travels only as an
Argon2id hash (salt and cost parameters inside the string), the way a key travels only as its
SHA-256: every gateway and router folds these events, and a hash is what lets the registry check
a password without ever storing it. `UserView` is what anyone else is shown of a user.
"""

from __future__ import annotations

import msgspec

from switchyard_gateway.contracts import subjects as s
from switchyard_gateway.contracts.events import Event, Instant, Role


class UserCreated(Event, frozen=True, tag=s.USER_CREATED):
    """A user was created: its tenant, its role and the hash of its password (never the password)."""

    username: str
    tenant_id: str
    role: Role = "member"
    display_name: str = ""
    password_hash: str = ""         # Argon2id, PHC string format ("$argon2id$v=19$m=...,t=...,p=...$salt$hash")

    @property
    def identifier(self) -> str:
        return self.username


class UserUpdated(Event, frozen=True, tag=s.USER_UPDATED):
    """A user's tenant, role or display name changed (full state, the password aside)."""

    username: str
    tenant_id: str
    role: Role = "member"
    display_name: str = ""

    @property
    def identifier(self) -> str:
        return self.username


class UserPasswordChanged(Event, frozen=True, tag=s.USER_PASSWORD_CHANGED):
    """A user's password was replaced; the tokens signed for its credentials before stop working (its event id is
    the user's new credential version)."""

    username: str
    tenant_id: str
    password_hash: str

    @property
    def identifier(self) -> str:
        return self.username


class UserRemoved(Event, frozen=True, tag=s.USER_REMOVED):
    """A user was removed; its tokens stop working everywhere."""

    username: str
    tenant_id: str

    @property
    def identifier(self) -> str:
        return self.username


class UserTokenRevoked(Event, frozen=True, tag=s.USER_TOKEN_REVOKED):
    """A session was ended (the user signed out, or a spent refresh token was presented again): its refresh and
    access tokens stop working.

    `expires_at` is when the token would have expired anyway: past it, the revocation can be forgotten.
    """

    username: str
    tenant_id: str
    token_id: str                   # the session's id, which its tokens carry as `sid` (before rotation: the refresh
                                    # token's `jti`, which was its session's id)
    expires_at: Instant | None = None

    @property
    def identifier(self) -> str:
        return self.username


class UserView(msgspec.Struct, frozen=True, kw_only=True):
    """A user as anyone is shown it: never the password, never its hash."""

    username: str
    tenant_id: str
    role: Role
    display_name: str = ""


UserEvent = UserCreated | UserUpdated | UserPasswordChanged | UserRemoved | UserTokenRevoked

# The events this module defines; `codec` joins them with the others. All are registry facts.
EVENT_CLASSES: tuple[type[Event], ...] = (UserCreated, UserUpdated, UserPasswordChanged, UserRemoved,
                                          UserTokenRevoked)
