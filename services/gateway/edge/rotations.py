"""Refresh-token rotation: when each refresh token was first used, in Valkey, so that every gateway agrees.

A refresh token is good for one refresh (RFC 9700 §4.14.2, rotation with reuse detection). `use` records,
atomically, the first time a token is presented, and says when that was: the refresh that came first is answered
with the pair that replaces the token (`Tokens.rotate`, derived from the token and that time), and so is any other
within `grace_s` of it, the same pair again. Later, the token is being reused: someone
kept a copy, and as the server cannot tell the thief from its owner the whole session is ended (a registry event,
`user.token_revoked.v1`, as signing out is), every token of it on every gateway.

Why a grace and not "any second use ends the session": a client racing itself (two tabs, a retry after a lost
answer) sends one token twice within moments; ending its session would sign an honest user out. Within the grace
both get the same new pair, so there is still one live refresh token per session: a thief who won the race holds
the same pair as the owner, and whichever of them refreshes next makes the other's next refresh a reuse, which ends
the session. The grace delays that detection by one refresh, and lasts seconds, not the token's life.

A record lives as long as its token could be presented (until its `exp`) and holds two times: the grace is
measured by Valkey's clock, one for every gateway, and the new pair's `iat` is by the first gateway's own. Valkey
down or slow: the refresh is refused (503) rather than answered unrecorded, which would hand out a second live
refresh token unseen; signing in still works (the sign-in guard lets attempts through when Valkey is away).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time

from switchyard_gateway.resp import Valkey, ValkeyError

TIMEOUT_S = 1.0

# KEYS: the token's record. ARGV: when the token expires and this gateway's time now (both unix ms). The record is
# when the token was first used by Valkey's clock (`at`, for the grace: one clock for every gateway) and by the clock of
# the gateway that used it (`iat`, the replacing pair's: Valkey's time in a token could be ahead of a gateway reading
# it). Returns {at, Valkey's now, 1 if this is the first use, iat}.
USE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seen = redis.call('HMGET', KEYS[1], 'at', 'iat')
if seen[1] then
  return {tonumber(seen[1]), now, 0, tonumber(seen[2])}
end
redis.call('HSET', KEYS[1], 'at', now, 'iat', ARGV[2])
redis.call('PEXPIRE', KEYS[1], math.max(1000, tonumber(ARGV[1]) - now))
return {now, now, 1, tonumber(ARGV[2])}
"""
USE_SHA = hashlib.sha1(USE.encode()).hexdigest()


class Unavailable(Exception):
    """Valkey did not say whether the refresh token was used before."""


class Rotations:
    """Which refresh tokens were used, and when, as every gateway sees it."""

    def __init__(self, valkey: Valkey, prefix: str, grace_s: float) -> None:
        self.valkey, self.prefix, self.grace_ms = valkey, prefix, max(0, int(grace_s * 1000))

    async def use(self, token_id: str, expires_at: float) -> tuple[float, bool]:
        """Record a use of a refresh token (its `jti`; it expires at `expires_at`, unix seconds): when it was first
        used (unix seconds, by the clock of the gateway that used it: the replacing pair's `iat`), and whether this
        use is a reuse past the grace (with a grace of 0, any use but the first). Unavailable when Valkey does not
        answer."""
        try:
            async with asyncio.timeout(TIMEOUT_S):
                at, now, fresh, issued = await self.valkey.evalsha(USE_SHA, USE, [f"{self.prefix}r:{token_id}"], [
                    math.ceil(expires_at * 1000), int(time.time() * 1000)])
        except (ConnectionError, ValkeyError, TimeoutError) as exc:
            raise Unavailable(str(exc) or type(exc).__name__) from None
        return int(issued) / 1000, not fresh and (not self.grace_ms or int(now) - int(at) > self.grace_ms)

    async def close(self) -> None:
        await self.valkey.close()
