"""Catalog: providers, endpoints, models, tenants, assignments, keys and users, folded from registry events."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime

import msgspec

from switchyard_gateway.catalog.rules import resolve_model_name
from switchyard_gateway.contracts.events import (
    EndpointRegistered, EndpointRemoved, Event, KeyIssued, KeyRevoked, ModelRegistered, ModelRemoved,
    ProviderRegistered, ProviderRemoved, TenantCreated, TenantModelAssigned, TenantModelUnassigned,
    TenantRemoved,
)
from switchyard_gateway.contracts.messages import ErrorBody
from switchyard_gateway.contracts.routing import EndpointModelsDiscovered, ModelWarmed
from switchyard_gateway.contracts.users import (
    UserCreated, UserPasswordChanged, UserRemoved, UserTokenRevoked, UserUpdated,
)

KEY_PREFIX = "sy_"


def hash_key(secret: str) -> str:
    """The SHA-256 hex digest under which a key is stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


def key_id_of(secret: str) -> str | None:
    """The visible id inside a Switchyard key (`sy_<id>_<random>`), or None for a foreign format."""
    if secret.startswith(KEY_PREFIX):
        parts = secret.split("_", 2)
        if len(parts) == 3 and parts[1]:
            return f"{KEY_PREFIX}{parts[1]}"
    return None


@dataclass
class Catalog:
    """The registry's current state. `version` grows with every change, for cache invalidation.

    `registered` holds endpoints as an operator registered them; `endpoints` as they serve: one
    registered without a model list serves the models its probes discovered (`discovered`).
    """

    providers: dict[str, ProviderRegistered] = field(default_factory=dict)
    endpoints: dict[str, EndpointRegistered] = field(default_factory=dict)
    registered: dict[str, EndpointRegistered] = field(default_factory=dict)
    discovered: dict[str, tuple[str, ...]] = field(default_factory=dict)
    models: dict[str, ModelRegistered] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    tenants: dict[str, TenantCreated] = field(default_factory=dict)
    assignments: dict[str, dict[str, TenantModelAssigned]] = field(default_factory=dict)
    keys: dict[str, KeyIssued] = field(default_factory=dict)
    keys_by_hash: dict[str, KeyIssued] = field(default_factory=dict)
    revoked: dict[str, KeyIssued] = field(default_factory=dict)
    # the latest state of each user, hash included; its event_id and occurred_at are those of its last password,
    # role or tenant change: that event id is the user's credential version, which every token signed for the user
    # carries (`user_session`: a token stands only while the version it names is the user's)
    users: dict[str, UserCreated] = field(default_factory=dict)
    sessions_ended: dict[str, datetime | None] = field(default_factory=dict)   # revoked token id -> its expiry
    warmed: dict[tuple[str, str], ModelWarmed] = field(default_factory=dict)  # (endpoint, model) -> last warm-up
    version: int = 0

    def apply(self, event: Event) -> None:
        """Fold one registry event in; events of other families are ignored."""
        match event:
            case ProviderRegistered(provider_id=pid):
                self.providers[pid] = event
            case ProviderRemoved(provider_id=pid):
                self.providers.pop(pid, None)
            case EndpointRegistered(endpoint_id=eid):
                self.registered[eid] = event
                self._serve(eid)
            case EndpointModelsDiscovered(endpoint_id=eid):
                self.discovered[eid] = event.models
                self._serve(eid)
            case EndpointRemoved(endpoint_id=eid):
                self.endpoints.pop(eid, None)
                self.registered.pop(eid, None)
                self.discovered.pop(eid, None)
            case ModelRegistered(model_id=mid):
                self._drop_aliases(mid)
                self.models[mid] = event
                for alias in event.aliases:
                    self.aliases[alias] = mid
            case ModelRemoved(model_id=mid):
                self._drop_aliases(mid)
                self.models.pop(mid, None)
            case TenantCreated(tenant_id=tid):
                self.tenants[tid] = event
            case TenantRemoved(tenant_id=tid):
                self.tenants.pop(tid, None)
                self.assignments.pop(tid, None)
                for key in [k for k in self.keys.values() if k.tenant_id == tid]:
                    self._drop_key(key.key_id)
                for user in [u for u in self.users.values() if u.tenant_id == tid]:
                    del self.users[user.username]
            case TenantModelAssigned(tenant_id=tid, model_id=mid):
                self.assignments.setdefault(tid, {})[mid] = event
            case TenantModelUnassigned(tenant_id=tid, model_id=mid):
                self.assignments.get(tid, {}).pop(mid, None)
            case KeyIssued(key_id=kid):
                self.keys[kid] = event
                self.keys_by_hash[event.key_sha256] = event
                self.revoked.pop(kid, None)
            case KeyRevoked(key_id=kid):
                self._drop_key(kid)
            case UserCreated(username=name):
                self.users[name] = event
            case UserUpdated(username=name) if name in self.users:
                user = self.users[name]
                # a new role or tenant is a new version, as a new password is: the tokens of the one before never
                # count again, even once the change is reverted (they would otherwise name the role they had)
                since = event if (user.role, user.tenant_id) != (event.role, event.tenant_id) else user
                self.users[name] = msgspec.structs.replace(user, tenant_id=event.tenant_id, role=event.role,
                                                           display_name=event.display_name, event_id=since.event_id,
                                                           occurred_at=since.occurred_at)
            case UserPasswordChanged(username=name) if name in self.users:
                self.users[name] = msgspec.structs.replace(self.users[name], password_hash=event.password_hash,
                                                           event_id=event.event_id, occurred_at=event.occurred_at)
            case UserRemoved(username=name):
                self.users.pop(name, None)
            case UserTokenRevoked(token_id=tid):
                self._forget_ended_sessions(event.occurred_at)
                self.sessions_ended[tid] = event.expires_at
            case ModelWarmed(endpoint_id=eid, model_id=mid):
                self.warmed[(eid, mid)] = event
                return                                  # no routing change: plans stay valid
            case _:
                return
        self.version += 1

    def _serve(self, endpoint_id: str) -> None:
        registered = self.registered.get(endpoint_id)
        if registered is None:
            return
        discovered = self.discovered.get(endpoint_id)
        if registered.models or discovered is None:
            self.endpoints[endpoint_id] = registered
        else:
            self.endpoints[endpoint_id] = msgspec.structs.replace(registered, models=discovered)

    def copy(self) -> Catalog:
        """An independent copy (events are immutable; only the containers are copied)."""
        copied = Catalog(**{f.name: getattr(self, f.name) for f in fields(self)})
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                setattr(copied, f.name, {k: dict(v) if isinstance(v, dict) else v for k, v in value.items()})
        return copied

    def _drop_aliases(self, model_id: str) -> None:
        for alias in [a for a, m in self.aliases.items() if m == model_id]:
            del self.aliases[alias]

    def _forget_ended_sessions(self, now: datetime) -> None:
        """Revocations of tokens that have expired anyway are dropped (their tokens are refused by `exp`)."""
        stale = [t for t, until in self.sessions_ended.items() if until is not None and until < now]
        for token_id in stale:
            del self.sessions_ended[token_id]

    def _drop_key(self, key_id: str) -> None:
        key = self.keys.pop(key_id, None)
        if key is not None:
            self.keys_by_hash.pop(key.key_sha256, None)
            self.revoked[key_id] = key

    # --- reads ---------------------------------------------------------------

    def authenticate(self, secret: str, now: datetime | None = None) -> KeyIssued | None:
        """The live key matching a presented secret, compared in constant time; None if unknown,
        revoked or expired."""
        digest = hash_key(secret)
        key_id = key_id_of(secret)
        key = (self.keys.get(key_id) if key_id else None) or self.keys_by_hash.get(digest)
        if key is None or not hmac.compare_digest(key.key_sha256, digest):
            return None
        expires_at = key.expires_at
        if expires_at is not None and expires_at.tzinfo is None:       # recorded without an offset: UTC
            expires_at = expires_at.replace(tzinfo=UTC)
        if expires_at is not None and expires_at <= (now or datetime.now(UTC)):
            return None
        if key.tenant_id not in self.tenants:
            return None
        return key

    def user_session(self, username: str, session: str, version: str) -> UserCreated | None:
        """The user a token the gateway signed for it stands for, if the token still stands: the user exists
        (and its tenant), the session was not ended, and `version` (the token's `ver`: the credential version whose
        password the registry checked) is still the user's, equal, not earlier by some clock: any password, role
        or tenant change since, or the user removed and made again, is another version."""
        user = self.users.get(username)
        if user is None or user.tenant_id not in self.tenants:
            return None
        if session and session in self.sessions_ended:
            return None
        return user if str(user.event_id) == version else None

    def session_live(self, username: str, tenant_id: str, role: str, session: str, version: str) -> bool:
        """`user_session`, and the user still has the tenant and role the token names."""
        user = self.user_session(username, session, version)
        return user is not None and user.tenant_id == tenant_id and user.role == role

    def resolve_model(self, name: str) -> str | None:
        """A model id from a name or alias; `:latest` is the same model."""
        return resolve_model_name(name, self.models, self.aliases)

    def tenant_may_use(self, tenant_id: str, model_id: str) -> bool:
        """Whether a tenant may call a model: assigned and enabled, or the tenant may use all models."""
        assignment = self.assignments.get(tenant_id, {}).get(model_id)
        if assignment is not None:
            return assignment.enabled
        tenant = self.tenants.get(tenant_id)
        return bool(tenant and tenant.all_models)

    def models_for(self, tenant_id: str) -> list[ModelRegistered]:
        """The models a tenant may use, by name."""
        return [m for mid, m in sorted(self.models.items()) if self.tenant_may_use(tenant_id, mid)]

    def endpoints_serving(self, model_id: str) -> list[EndpointRegistered]:
        """Endpoints that serve a model (by id or one of its aliases), highest priority first."""
        model = self.models.get(model_id)
        names = {model_id, *(model.aliases if model else ())}
        found = [e for e in self.endpoints.values() if names.intersection(e.models)]
        return sorted(found, key=lambda e: (-e.priority, e.endpoint_id))

    def warm_targets(self, name: str, endpoint_id: str = "",
                     provider_id: str = "") -> tuple[str, list[EndpointRegistered]] | ErrorBody:
        """What a warm-up of the model `name` reaches: the model's id and its endpoints (every one serving it, or the
        one named, or the provider's), highest priority first; or, when none, why (the body of a 404)."""
        model_id = self.resolve_model(name)
        if model_id is None:
            return ErrorBody("MODEL_NOT_FOUND", f"Model '{name}' not found", "model")
        endpoints = [e for e in self.endpoints_serving(model_id) if (not endpoint_id or e.endpoint_id == endpoint_id)
                     and (not provider_id or e.provider_id == provider_id)]
        if endpoints:
            return model_id, endpoints
        what = f"endpoint '{endpoint_id}'" if endpoint_id else f"provider '{provider_id}'" if provider_id \
            else "any endpoint"
        return ErrorBody("ENDPOINT_NOT_FOUND", f"Model '{model_id}' is not served by {what}",
                         "endpoint" if endpoint_id else "provider" if provider_id else "model")


def upstream_name(endpoint: EndpointRegistered, model: ModelRegistered) -> str:
    """The name an endpoint knows a model by: its id if listed, else the first listed alias."""
    if model.model_id in endpoint.models:
        return model.model_id
    for alias in model.aliases:
        if alias in endpoint.models:
            return alias
    return model.model_id
