"""Brute-force protection for sign-in: attempts counted per username and per client address, in Valkey.

After `login_user_failures` failed sign-ins of one username (or `login_address_failures`
from one address) within `login_window_s` of each other, the next attempt must wait
`login_backoff_s`, doubling with every further failure up to `login_backoff_max_s`;
an attempt made while waiting is refused (429 with `Retry-After`) before any password
is checked, so it costs the registry nothing. A success forgets the username's failures
(never the address's: one good account must not launder an address's guesses).

An attempt takes its slot of both budgets before its password is checked (`begin`), so
attempts sent together cannot all slip past the count: while checks are in flight, the
failures so far and the checks in flight together may not exceed the budget, and once the
budget is spent only one check at a time goes ahead. The attempt then ends as a failure
(`failed`, counted), a success (`succeeded`), or unchecked (`unchecked`: the registry did not
check it, e.g. answered 503 because too many checks wait; its slot is given back, and it
counts as no failure). A slot whose gateway never ends it is given back after `hold_s`.

The counters live in Valkey and one script reads and moves them with Valkey's own clock,
so every gateway agrees on who waits and until when. Valkey being down or slow lets
sign-ins through unguarded (logged): the registry's password check is itself slow and
bounded, and refusing every sign-in would lock everyone out.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import structlog

from switchyard_gateway.kit.logs import Throttle
from switchyard_gateway.resp import Valkey, ValkeyError

log = structlog.get_logger()

WARN_EVERY_S = 30.0
TIMEOUT_S = 0.5

# KEYS: the username's failure counter, its checks in flight, the address's counter, its checks in flight.
# ARGV: op (begin | fail | ok | unchecked), the two thresholds, first wait, longest wait and window (ms), the attempt's
# id and how long (ms) an attempt may hold its slot. Returns the milliseconds left to wait (0: none; for begin, 0 is
# "go ahead, the slots are taken").
# A counter is a hash: n (failures), until (ms: no attempt before); checks in flight are a sorted set of attempt ids
# scored by when their slot is given back anyway.
GUARD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op = ARGV[1]
local limits = {tonumber(ARGV[2]), tonumber(ARGV[3])}
local first, longest, window = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local id, hold = ARGV[7], tonumber(ARGV[8])
local wait = 0
for i = 1, 2 do
  local key, flight = KEYS[2 * i - 1], KEYS[2 * i]
  redis.call('ZREMRANGEBYSCORE', flight, '-inf', now)
  if op ~= 'begin' then
    redis.call('ZREM', flight, id)
  end
  if op == 'fail' then
    local n = redis.call('HINCRBY', key, 'n', 1)
    local keep = window
    if n >= limits[i] then
      local w = math.floor(math.min(longest, first * 2 ^ math.min(n - limits[i], 40)))
      redis.call('HSET', key, 'until', now + w)
      keep = math.max(keep, w)
    end
    redis.call('PEXPIRE', key, keep)
  elseif op == 'ok' and i == 1 then
    redis.call('DEL', key)
  end
  local untl = tonumber(redis.call('HGET', key, 'until') or '0')
  if untl - now > wait then wait = untl - now end
end
if op ~= 'begin' or wait > 0 then
  return wait
end
for i = 1, 2 do
  local inflight = redis.call('ZCARD', KEYS[2 * i])
  local n = tonumber(redis.call('HGET', KEYS[2 * i - 1], 'n') or '0')
  if inflight > 0 and n + inflight >= limits[i] then
    return math.max(first, 1000)
  end
end
for i = 1, 2 do
  redis.call('ZADD', KEYS[2 * i], now + hold, id)
  redis.call('PEXPIRE', KEYS[2 * i], hold)
end
return 0
"""
GUARD_SHA = hashlib.sha1(GUARD.encode()).hexdigest()


class LoginGuard:
    """Who must wait before trying to sign in again, as every gateway sees it."""

    def __init__(self, valkey: Valkey, prefix: str, *, user_failures: int, address_failures: int, backoff_s: float,
                 backoff_max_s: float, window_s: float, hold_s: float = 30.0) -> None:
        self.valkey, self.prefix = valkey, prefix
        self.args = [max(1, user_failures), max(1, address_failures), int(backoff_s * 1000),
                     int(backoff_max_s * 1000), max(1, int(window_s * 1000))]
        self.hold_ms = max(1, int(hold_s * 1000))
        self._warnings = Throttle(WARN_EVERY_S)

    def _keys(self, username: str, address: str) -> list[str]:
        # a hash keeps any username (or a hostile string posing as one) to one short key
        user = hashlib.sha256(username.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return [f"{self.prefix}u:{user}", f"{self.prefix}u:{user}:in", f"{self.prefix}a:{address}",
                f"{self.prefix}a:{address}:in"]

    async def begin(self, username: str, address: str) -> tuple[str, float]:
        """Take this attempt's slot of the username's and the address's budgets before its password is checked:
        the attempt's id and 0, or the seconds to wait (nothing taken) when either budget is spent or held by
        checks in flight. Every attempt begun must end in `failed`, `succeeded` or `unchecked`."""
        attempt = uuid.uuid4().hex
        return attempt, await self._run("begin", username, address, attempt)

    async def failed(self, attempt: str, username: str, address: str) -> float:
        """Count a failed attempt; the seconds the next one must wait."""
        return await self._run("fail", username, address, attempt)

    async def succeeded(self, attempt: str, username: str, address: str) -> None:
        """Give the attempt's slots back and forget the username's failures (not the address's)."""
        await self._run("ok", username, address, attempt)

    async def unchecked(self, attempt: str, username: str, address: str) -> None:
        """Give the slots back of an attempt whose password was never checked (the registry refused or failed to
        answer): it is no failure, and a flood of them stays bounded by the slots in flight."""
        await self._run("unchecked", username, address, attempt)

    async def _run(self, op: str, username: str, address: str, attempt: str) -> float:
        try:
            async with asyncio.timeout(TIMEOUT_S):
                waited = await self.valkey.evalsha(GUARD_SHA, GUARD, self._keys(username, address),
                                                   [op, *self.args, attempt, self.hold_ms])
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
