"""Sign-in for users: `/api/auth/login`, `/refresh`, `/logout` and `/me`.

The password is checked by the registry (`verify_credentials` on `registry.command.v1`), which alone
holds the hashes: the gateway never sees one, and the slow Argon2id check stays off its hot path. The
registry answers with the user's credential version the password was checked against; the tokens, signed here
with `SWITCHYARD_JWT_SECRET` (edge/tokens.py), carry it, and stand while it is the user's (the local catalog's
answer, no round trip). A refresh spends its refresh token for a new pair (rotation, edge/rotations.py: when each
was first used is kept in Valkey); one presented again past its grace ends its whole session. Signing out is a
registry event, so every gateway refuses the session's tokens once it has folded it. Failures are counted per
username and per client address in Valkey (edge/login_guard.py), each attempt from before its password is
checked: too many, and the next attempt waits (429). Bodies are read by the admin routes' reader (`json_object`):
one that is not an object, or nested too deeply, is a 400. Every error here, the framework's too, is in the
admin API's shape, `{"error": {"code", "message"}}` (edge/errors.py, the `admin` shape).
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Request, Response, get, post

from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.contracts.users import UserView
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.services.gateway.api.common import AppDeps, ask, caller, json_object
from switchyard_gateway.services.gateway.deps import Deps
from switchyard_gateway.services.gateway.edge.rotations import Unavailable
from switchyard_gateway.services.gateway.edge.tokens import TokenClaims, TokenPair

Req = Request[Any, Any, Any]
_reply = msgspec.json.Decoder(m.CommandReply)
NAME_MAX, PASSWORD_MAX = 64, 1024          # longer cannot be a user's: refused without asking the registry


class LoginRequest(msgspec.Struct, frozen=True):
    username: str
    password: str


class RefreshRequest(msgspec.Struct, frozen=True):
    refresh_token: str


class LogoutRequest(msgspec.Struct, frozen=True):
    refresh_token: str | None = None     # else the session of the access token in Authorization


class SignedOut(msgspec.Struct, frozen=True):
    revoked: bool                        # False: the session had already ended


class Me(msgspec.Struct, frozen=True, omit_defaults=True):
    """Who the caller is: a signed-in user (`kind: user`), or a key or an outside JWT (no username)."""

    kind: str
    tenant_id: str
    role: str
    username: str | None = None
    display_name: str | None = None
    key_id: str | None = None


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None,
           **extra: Any) -> Response[bytes]:
    return Response(encode({"error": {"code": code, "message": message, **extra}}), status_code=status,
                    headers=headers, media_type="application/json")


def _invalid_token() -> Response[bytes]:
    return _error(401, "INVALID_TOKEN", "Invalid or expired token")


def _enabled(deps: Deps) -> Response[bytes] | None:
    """Why sign-in cannot work on this gateway, as the answer; None when it can."""
    if deps.auth.mode != "multi-tenant":
        return _error(404, "SIGN_IN_DISABLED", "There are no users in single-user mode: use the API key")
    if not deps.tokens.enabled:
        return _error(503, "SIGN_IN_DISABLED", "Sign-in needs SWITCHYARD_JWT_SECRET on the gateway")
    return None


def client_address(request: Req, trust_forwarded_for: bool) -> str:
    """The client's address: the peer's, or behind a trusted proxy the last entry of X-Forwarded-For, the one the
    proxy appended (the entries before it are whatever the client sent, and a client that names a new address with
    each guess must not get a new budget with each); several X-Forwarded-For headers read as one list."""
    if trust_forwarded_for:
        values = request.headers.getall("x-forwarded-for", [])
        forwarded = ",".join(values).rsplit(",", 1)[-1].strip()
        if forwarded:
            return forwarded[:64]
    return request.client.host if request.client is not None else "unknown"


def _too_many(wait_s: float) -> Response[bytes]:
    seconds = max(1, math.ceil(wait_s))
    return _error(429, "TOO_MANY_ATTEMPTS", f"Too many sign-in attempts; try again in {seconds} s",
                  {"retry-after": str(seconds)}, retry_after=seconds)


def json_bodies(connection: Any, _handler: Any) -> None:
    """A guard: a body must say it is JSON. A browser sends `text/plain` from any page without asking (no CORS
    preflight), so without this any site its user opens could try passwords in their name and lock them out."""
    sent = connection.headers.get("content-length", "0") not in ("", "0") or "transfer-encoding" in connection.headers
    media = connection.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if sent and media != "application/json":
        raise ServiceError(415, m.ErrorBody("UNSUPPORTED_MEDIA_TYPE", "the body must be sent as application/json",
                                            "content-type"))


@post("/api/auth/login", status_code=200, guards=[json_bodies])
async def login(request: Req, deps: AppDeps) -> Response[bytes] | TokenPair:
    """A username and password for an access token (15 minutes) and a refresh token (7 days)."""
    if (refusal := _enabled(deps)) is not None:
        return refusal
    data = msgspec.convert(await json_object(request), LoginRequest)
    guard, address = deps.login_guard, client_address(request, deps.settings.trust_forwarded_for)
    attempt, wait_s = await guard.begin(data.username, address)      # the slot is taken before the check
    if wait_s > 0:
        return _too_many(wait_s)
    user: UserView | None = None
    version: str | None = None
    try:
        if 0 < len(data.username) <= NAME_MAX and 0 < len(data.password) <= PASSWORD_MAX:
            try:
                reply = _reply.decode(await ask(deps, subjects.REGISTRY_COMMAND,
                                                m.VerifyCredentials(username=data.username, password=data.password)))
                user, version = reply.user, reply.user_version
                if user is not None and version is None:       # a registry of a build before credential versions
                    raise ServiceError(503, m.ErrorBody("SERVICE_UNAVAILABLE", "The registry did not say which "
                                                        "credentials it checked; try again shortly"))
            except ServiceError as exc:
                if exc.status != 401:
                    raise
    except BaseException:           # not checked (the registry busy, away or failing): the slot is given back
        await asyncio.shield(guard.unchecked(attempt, data.username, address))
        raise
    if user is None or version is None:
        wait_s = await guard.failed(attempt, data.username, address)
        headers = {"retry-after": str(max(1, math.ceil(wait_s)))} if wait_s > 0 else None
        return _error(401, "INVALID_CREDENTIALS", "Invalid username or password", headers)
    await guard.succeeded(attempt, data.username, address)
    if not await _current_here(deps, user.username, version):
        return _error(401, "INVALID_CREDENTIALS", "Invalid username or password")
    return deps.tokens.sign_in(user, version)


async def _current_here(deps: Deps, username: str, version: str) -> bool:
    """Whether the credential version the registry checked is the user's on this gateway, waiting a moment for
    this gateway to fold it (a user made or changed just before signing in): tokens that it would refuse at once
    are not signed. False when the user changed again since the check (rare; the user signs in again)."""
    if deps.catalog.user_session(username, "", version) is None \
            and not await deps.state.wait_for({version}, deps.settings.request_timeout_s):
        raise ServiceError(503, m.ErrorBody("SERVICE_UNAVAILABLE", "This gateway has not caught up with the registry "
                                                                   "yet; try again shortly"))
    return deps.catalog.user_session(username, "", version) is not None


@post("/api/auth/refresh", status_code=200, guards=[json_bodies])
async def refresh(request: Req, deps: AppDeps) -> Response[bytes] | TokenPair:
    """A new access token and a new refresh token for a refresh token whose session still stands; the one presented
    is spent. Presented again within the grace it answers the same new pair; later, it ends its whole session."""
    if (refusal := _enabled(deps)) is not None:
        return refusal
    data = msgspec.convert(await json_object(request), RefreshRequest)
    claims = deps.tokens.read(data.refresh_token, "refresh")
    user = deps.catalog.user_session(claims.username, claims.session, claims.version) if claims else None
    if claims is None or user is None:
        return _invalid_token()
    try:
        first_used, reused = await deps.rotations.use(claims.token_id, claims.expires_at)
    except Unavailable:
        return _error(503, "SERVICE_UNAVAILABLE", "Sessions cannot be refreshed right now (Valkey is not "
                                                  "answering); try again shortly")
    if reused:
        await _end_session(deps, claims)
        return _error(401, "INVALID_TOKEN", "This refresh token was used already: its session has ended, every "
                                            "token of it; sign in again")
    view = UserView(username=user.username, tenant_id=user.tenant_id, role=user.role, display_name=user.display_name)
    return deps.tokens.rotate(claims, view, first_used)


@post("/api/auth/logout", status_code=200, guards=[json_bodies])
async def logout(request: Req, deps: AppDeps) -> Response[bytes] | SignedOut:
    """End a session: its refresh token and every access token of it stop working on every gateway."""
    if (refusal := _enabled(deps)) is not None:
        return refusal
    sent = (await request.body()).strip()
    data = msgspec.convert(await json_object(request), LogoutRequest) if sent else None
    claims = _session_claims(request, deps, data)
    if claims is None:
        return _invalid_token()
    return SignedOut(revoked=await _end_session(deps, claims))


async def _end_session(deps: Deps, claims: TokenClaims) -> bool:
    """Revoke the session of a token (a registry event every gateway folds), once this gateway has folded it too;
    False when it had ended already."""
    expires = claims.expires_at if claims.kind == "refresh" else claims.issued_at + deps.tokens.refresh_ttl_s
    command = m.RevokeUserToken(username=claims.username, token_id=claims.session,
                                expires_at=datetime.fromtimestamp(expires, UTC))
    reply = _reply.decode(await ask(deps, subjects.REGISTRY_COMMAND, command))
    await deps.state.wait_for({str(e.event_id) for e in reply.recorded})
    return bool(reply.recorded)


def _session_claims(request: Req, deps: Deps, data: LogoutRequest | None) -> TokenClaims | None:
    if data is not None and data.refresh_token:
        return deps.tokens.read(data.refresh_token, "refresh")
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return deps.tokens.read(token.strip(), "access") if scheme.lower() == "bearer" else None


@get("/api/auth/me")
async def me(request: Req, deps: AppDeps) -> Me:
    """The caller: a user's name, role and tenant; for a key, its id, role and tenant."""
    key = caller(request, deps)
    if key.key_id.startswith("user:"):
        user = deps.catalog.users.get(key.name)
        return Me(kind="user", tenant_id=key.tenant_id, role=key.role, username=key.name,
                  display_name=user.display_name if user is not None else "")
    return Me(kind="jwt" if key.key_id.startswith("jwt:") else "key", tenant_id=key.tenant_id, role=key.role,
              key_id=key.key_id)


ROUTES = [login, refresh, logout, me]
