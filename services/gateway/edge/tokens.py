"""Sign-in tokens: a short-lived access token and a longer refresh token, HS256 JWTs this gateway signs.

Both carry `iss` (`SWITCHYARD_JWT_ISSUER`), `sub` (the username), `tenant`, `role`, `ver`, `sid`, `iat`,
`exp`, `jti` and `typ` (`access` or `refresh`). `sid` names the session: every token of one sign-in carries it,
so that ending the session (signing out, or a refresh token presented twice) ends them all. `ver` is the user's
credential version the registry checked the password against (`CommandReply.user_version`, the id of the user's
last password, role or tenant change): a token stands while that is still the user's version, compared for
equality (`Catalog.user_session`), never a round trip and never a clock. A token without `ver` or `sid` (signed
before they existed) is not read: its user signs in again.

A refresh token is good for one refresh: `rotate` answers the pair that replaces it, the same pair for the same
token and the same time of first use, so that a refresh answered twice within its grace (a client racing itself,
or retrying an answer it lost) hands out one new refresh token, not two (`edge/rotations.py` keeps that time).
"""

from __future__ import annotations

import hashlib
import hmac
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
    version: str                    # the user's credential version it was signed for
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

    def sign_in(self, user: UserView, version: str, now: float | None = None) -> TokenPair:
        """A new session for the user at this credential version: its first refresh token and access token."""
        issued = round(time.time() if now is None else now, 3)
        return self._pair(user, version, secrets.token_hex(16), issued, int(issued) + self.refresh_ttl_s,
                          secrets.token_hex(16), secrets.token_hex(16))

    def rotate(self, spent: TokenClaims, user: UserView, issued: float) -> TokenPair:
        """The pair that replaces a refresh token, first used at `issued`: of its session and version, ending when
        the session does (7 days after sign-in, however often refreshed). The same claims and `issued` give the same
        pair, byte for byte: the new tokens' ids are derived from the spent one's with the secret."""
        return self._pair(user, spent.version, spent.session, round(issued, 3), int(spent.expires_at),
                          self._derived("refresh", spent.token_id), self._derived("access", spent.token_id))

    def _pair(self, user: UserView, version: str, session: str, issued: float, session_ends: int, refresh_id: str,
              access_id: str) -> TokenPair:
        refresh = self._sign(user, "refresh", version, refresh_id, session, issued, session_ends)
        access = self._sign(user, "access", version, access_id, session, issued, int(issued) + self.access_ttl_s)
        return TokenPair(access_token=access, refresh_token=refresh, token_type="bearer", expires_in=self.access_ttl_s,
                         refresh_expires_in=max(0, session_ends - int(issued)), user=user)

    def _derived(self, kind: TokenType, token_id: str) -> str:
        return hmac.new(self.secret.encode(), f"{kind}:{token_id}".encode(), hashlib.sha256).hexdigest()[:32]

    def _sign(self, user: UserView, kind: TokenType, version: str, token_id: str, session: str, issued: float,
              expires: int) -> str:
        claims: dict[str, Any] = {"iss": self.issuer, "sub": user.username, "tenant": user.tenant_id,
                                  "role": user.role, "ver": version, "sid": session, "iat": issued, "exp": expires,
                                  "jti": token_id, "typ": kind}
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
        if claims.get("typ") != kind or \
                not all(isinstance(claims.get(k), str) for k in ("sub", "tenant", "role", "ver", "sid")):
            return None
        return TokenClaims(username=claims["sub"], tenant_id=claims["tenant"], role=claims["role"],
                           token_id=str(claims["jti"]), session=claims["sid"], version=claims["ver"],
                           issued_at=float(claims["iat"]), expires_at=float(claims["exp"]), kind=kind)
