"""Brute-force protection for sign-in: failures counted per username and per client address, in Valkey.

After `login_user_failures` failed sign-ins of one username (or `login_address_failures`
from one address) within `login_window_s` of each other, the next attempt must wait
`login_backoff_s`, doubling with every further failure up to `login_backoff_max_s`;
an attempt made while waiting is refused (429 with `Retry-After`) before any password
is checked, so it costs the registry nothing. A success forgets the username's count
(never the address's: one good account must not launder an address's guesses).

The counters live in Valkey and one script reads and moves them with Valkey's own clock,
so every gateway agrees on who waits and until when. Valkey being down or slow lets
sign-ins through unguarded (logged): the registry's password check is itself slow and
bounded, and refusing every sign-in would lock everyone out.
"""

from __future__ import annotations

import asyncio
import hashlib

import structlog

from switchyard_gateway.kit.logs import Throttle
from switchyard_gateway.resp import Valkey, ValkeyError

log = structlog.get_logger()

WARN_EVERY_S = 30.0
TIMEOUT_S = 0.5

# KEYS: the username's counter, the address's. ARGV: op (check | fail), the two thresholds, first wait,
# longest wait and window (ms). Returns the milliseconds left to wait (0: none).
GUARD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limits = {tonumber(ARGV[2]), tonumber(ARGV[3])}
local wait = 0
for i = 1, 2 do
  local key = KEYS[i]
  if ARGV[1] == 'fail' then
    local n = redis.call('HINCRBY', key, 'n', 1)
    local keep = tonumber(ARGV[6])
    if n >= limits[i] then
      local w = math.floor(math.min(tonumber(ARGV[5]), tonumber(ARGV[4]) * 2 ^ math.min(n - limits[i], 40)))
      redis.call('HSET', key, 'until', now + w)
      keep = math.max(keep, w)
    end
    redis.call('PEXPIRE', key, keep)
  end
  local untl = tonumber(redis.call('HGET', key, 'until') or '0')
  if untl - now > wait then wait = untl - now end
end
return wait
"""
GUARD_SHA = hashlib.sha1(GUARD.encode()).hexdigest()


class LoginGuard:
    """Who must wait before trying to sign in again, as every gateway sees it."""

    def __init__(self, valkey: Valkey, prefix: str, *, user_failures: int, address_failures: int, backoff_s: float,
                 backoff_max_s: float, window_s: float) -> None:
        self.valkey, self.prefix = valkey, prefix
        self.args = [max(1, user_failures), max(1, address_failures), int(backoff_s * 1000),
                     int(backoff_max_s * 1000), max(1, int(window_s * 1000))]
        self._warnings = Throttle(WARN_EVERY_S)

    def _keys(self, username: str, address: str) -> list[str]:
        # a hash keeps any username (or a hostile string posing as one) to one short key
        user = hashlib.sha256(username.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return [f"{self.prefix}u:{user}", f"{self.prefix}a:{address}"]

    async def wait_s(self, username: str, address: str) -> float:
        """Seconds this username or address must still wait before its next attempt (0: go ahead)."""
        return await self._run("check", username, address)

    async def failed(self, username: str, address: str) -> float:
        """Count a failed attempt; the seconds the next one must wait."""
        return await self._run("fail", username, address)

    async def succeeded(self, username: str, address: str) -> None:
        try:
            async with asyncio.timeout(TIMEOUT_S):
                await self.valkey.call("DEL", self._keys(username, address)[0])
        except (ConnectionError, ValkeyError, TimeoutError) as exc:
            self._warn(exc)

    async def _run(self, op: str, username: str, address: str) -> float:
        try:
            async with asyncio.timeout(TIMEOUT_S):
                waited = await self.valkey.evalsha(GUARD_SHA, GUARD, self._keys(username, address), [op, *self.args])
        except (ConnectionError, ValkeyError, TimeoutError) as exc:
            self._warn(exc)
            return 0.0
        return max(0, int(waited)) / 1000

    def _warn(self, exc: BaseException) -> None:
        since = self._warnings.due()
        if since is not None:
            log.warning("sign_in.guard_unavailable", error=str(exc) or type(exc).__name__,
                        **({"repeated": since} if since else {}))

    async def close(self) -> None:
        await self.valkey.close()
