"""Sign-in tokens: a short-lived access token and a longer refresh token, HS256 JWTs this gateway signs.

Both carry `iss` (`SWITCHYARD_JWT_ISSUER`), `sub` (the username), `tenant`, `role`, `iat`, `exp`, `jti`
and `typ` (`access` or `refresh`); an access token also carries `sid`, the `jti` of the refresh token
of its session, so that signing out (revoking the refresh token) ends its access tokens too. Whether
a token still stands beyond its signature and `exp` (user removed, role changed, password changed,
signed out) is the local catalog's answer (`Catalog.user_session`), never a round trip.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Literal

import jwt
import msgspec

from switchyard_gateway.contracts.users import UserView

ALGORITHM = "HS256"
TokenType = Literal["access", "refresh"]


class TokenClaims(msgspec.Struct, frozen=True):
    """What a verified token of ours says."""

    username: str
    tenant_id: str
    role: str
    token_id: str
    session: str
    issued_at: float
    expires_at: float
    kind: TokenType


class TokenPair(msgspec.Struct, frozen=True):
    """The answer to a sign-in or a refresh (OAuth 2.0's token response fields)."""

    access_token: str
    refresh_token: str
    token_type: str
    expires_in: int
    refresh_expires_in: int
    user: UserView


class Tokens:
    """Signs and reads sign-in tokens with the gateway's JWT secret."""

    def __init__(self, secret: str, issuer: str, access_ttl_s: float, refresh_ttl_s: float) -> None:
        self.secret, self.issuer = secret, issuer
        self.access_ttl_s, self.refresh_ttl_s = int(access_ttl_s), int(refresh_ttl_s)

    @property
    def enabled(self) -> bool:
        return bool(self.secret)

    def sign_in(self, user: UserView, now: float | None = None) -> TokenPair:
        """A new session: a refresh token and the first access token of it."""
        issued = round(time.time() if now is None else now, 3)
        session = secrets.token_hex(16)
        refresh = self._sign(user, "refresh", session, session, issued, self.refresh_ttl_s)
        return TokenPair(access_token=self.access(user, session, issued), refresh_token=refresh,
                         token_type="bearer", expires_in=self.access_ttl_s,
                         refresh_expires_in=self.refresh_ttl_s, user=user)

    def access(self, user: UserView, session: str, now: float | None = None) -> str:
        """An access token of a session."""
        issued = round(time.time() if now is None else now, 3)
        return self._sign(user, "access", secrets.token_hex(16), session, issued, self.access_ttl_s)

    def _sign(self, user: UserView, kind: TokenType, token_id: str, session: str, issued: float, ttl_s: int) -> str:
        # `iat` to the millisecond (RFC 7519 allows a fraction), so that a password changed within the same
        # second still ends the tokens issued before it
        claims: dict[str, Any] = {"iss": self.issuer, "sub": user.username, "tenant": user.tenant_id,
                                  "role": user.role, "iat": issued, "exp": int(issued) + ttl_s, "jti": token_id,
                                  "typ": kind}
        if kind == "access":
            claims["sid"] = session
        return jwt.encode(claims, self.secret, algorithm=ALGORITHM)

    def read(self, token: str, kind: TokenType) -> TokenClaims | None:
        """The claims of a token of ours of this kind with a good signature, our issuer and time left; else None."""
        if not self.secret or not isinstance(token, str) or token.count(".") != 2 or len(token) > 4096:
            return None
        try:
            claims = jwt.decode(token, self.secret, algorithms=[ALGORITHM], issuer=self.issuer,
                                options={"require": ["exp", "iat", "iss", "sub", "jti"]})
        except jwt.PyJWTError:
            return None
        if claims.get("typ") != kind or not all(isinstance(claims.get(k), str) for k in ("sub", "tenant", "role")):
            return None
        session = claims.get("sid") if kind == "access" else claims["jti"]
        if not isinstance(session, str):
            return None
        return TokenClaims(username=claims["sub"], tenant_id=claims["tenant"], role=claims["role"],
                           token_id=str(claims["jti"]), session=session, issued_at=float(claims["iat"]),
                           expires_at=float(claims["exp"]), kind=kind)
