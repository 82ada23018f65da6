"""The Lua scripts that keep quota counters in Valkey: reserve, settle from the log, expire, rebuild.

Each runs atomically in Valkey, so a reservation checks and charges every limit
in one round trip, and a settlement moves counters and the log checkpoint together.
A hold is text, one line per counter: key, field, amount, mode, measure, expire_at;
mode `p` (period counter) is refunded at settlement, where the log's actual usage
is counted; mode `r` (rate window) is corrected in place to the actual amount.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from switchyard_gateway.contracts.quota import Counter
from switchyard_gateway.quotas.periods import Keys
from switchyard_gateway.resp import Valkey

RESERVE = """
-- KEYS: holds zset, hold data hash, then one counter hash per counter
-- ARGV: request id, deadline (ms), hold text, then per counter: field, limit, amount, expire_at
-- Charge first, roll back on the first counter that goes over: the common case is one call per counter.
local n = #KEYS - 2
for i = 1, n do
  local b = 3 + (i - 1) * 4
  local amount = tonumber(ARGV[b + 3])
  local now = redis.call('HINCRBY', KEYS[i + 2], ARGV[b + 1], amount)
  if now == amount then redis.call('EXPIREAT', KEYS[i + 2], ARGV[b + 4], 'NX') end
  if now > tonumber(ARGV[b + 2]) then
    for j = 1, i do
      local c = 3 + (j - 1) * 4
      redis.call('HINCRBY', KEYS[j + 2], ARGV[c + 1], -tonumber(ARGV[c + 3]))
    end
    return {0, i, now - amount}
  end
end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[3]) == 0 then
  -- the same request id twice (clients may choose it): one hold covering both
  redis.call('HSET', KEYS[2], ARGV[1], redis.call('HGET', KEYS[2], ARGV[1]) .. ARGV[3])
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return {1}
"""

# one hold entry per line: key, field, amount, mode, measure, expire_at (tab-separated)
_ENTRIES = "string.gmatch(raw, '([^\\t]*)\\t([^\\t]*)\\t([^\\t]*)\\t([^\\t]*)\\t([^\\t]*)\\t([^\\n]*)\\n')"

APPLY = """
-- KEYS: checkpoint, rebuilding flag, holds zset, hold data hash
-- ARGV: from position, to position, settlements S, S x (request id, tokens, requests, nanos),
--       then deltas x (key, field, delta, expire_at)
if redis.call('EXISTS', KEYS[2]) == 1 then return {2, 0} end
local at = tonumber(redis.call('GET', KEYS[1]) or '0')
if at ~= tonumber(ARGV[1]) then return {0, at} end
local s = tonumber(ARGV[3])
for i = 0, s - 1 do
  local b = 4 + i * 4
  local raw = redis.call('HGET', KEYS[4], ARGV[b])
  if raw then
    local actual = {t = tonumber(ARGV[b + 1]), r = tonumber(ARGV[b + 2]), u = tonumber(ARGV[b + 3])}
    for key, fld, amount, mode, measure in ENTRIES do
      if redis.call('EXISTS', key) == 1 then
        local delta = -tonumber(amount)
        if mode == 'r' then delta = actual[measure] + delta end
        redis.call('HINCRBY', key, fld, string.format('%d', delta))
      end
    end
    redis.call('HDEL', KEYS[4], ARGV[b])
    redis.call('ZREM', KEYS[3], ARGV[b])
  end
end
local d = 4 + s * 4
while d <= #ARGV do
  redis.call('HINCRBY', ARGV[d], ARGV[d + 1], ARGV[d + 2])
  redis.call('EXPIREAT', ARGV[d], ARGV[d + 3])
  d = d + 4
end
redis.call('SET', KEYS[1], ARGV[2])
return {1, tonumber(ARGV[2])}
""".replace("ENTRIES", _ENTRIES)

EXPIRE = """
-- KEYS: holds zset, hold data hash; ARGV: now (ms), at most this many
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, rid in ipairs(ids) do
  local raw = redis.call('HGET', KEYS[2], rid)
  if raw then
    for key, fld, amount in ENTRIES do
      if redis.call('EXISTS', key) == 1 then
        redis.call('HINCRBY', key, fld, string.format('%d', -tonumber(amount)))
      end
    end
  end
  redis.call('HDEL', KEYS[2], rid)
  redis.call('ZREM', KEYS[1], rid)
end
return #ids
""".replace("ENTRIES", _ENTRIES)

REBUILD = """
-- KEYS: checkpoint, rebuilding flag, holds zset, hold data hash
-- ARGV: flag token, position, K, K old counter keys, S, S settled request ids,
--       then counters x (key, field, value, expire_at)
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local k = tonumber(ARGV[3])
for i = 4, 3 + k do redis.call('DEL', ARGV[i]) end
local s = tonumber(ARGV[4 + k])
for i = 5 + k, 4 + k + s do
  redis.call('HDEL', KEYS[4], ARGV[i])
  redis.call('ZREM', KEYS[3], ARGV[i])
end
local holds = redis.call('HVALS', KEYS[4])
for _, raw in ipairs(holds) do
  for key, fld, amount, mode in ENTRIES do
    if mode == 'p' then redis.call('DEL', key) end
  end
end
local d = 5 + k + s
while d <= #ARGV do
  redis.call('HINCRBY', ARGV[d], ARGV[d + 1], ARGV[d + 2])
  redis.call('EXPIREAT', ARGV[d], ARGV[d + 3])
  d = d + 4
end
for _, raw in ipairs(holds) do
  for key, fld, amount, mode, measure, expire in ENTRIES do
    if mode == 'p' then
      redis.call('HINCRBY', key, fld, amount)
      redis.call('EXPIREAT', key, expire, 'NX')
    end
  end
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2])
return 1
""".replace("ENTRIES", _ENTRIES)


def reserve_call(keys: Keys, request_id: str, deadline_ms: int, counters: list[Counter],
                 amounts: dict[str, int] | None = None) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of RESERVE for a call's counters; the hold is one tab-separated line per counter.

    `amounts` (measure -> amount) overrides the counters' own amounts, so a plan can be reused.
    """
    names = [keys.holds, keys.hold_data]
    args: list[Any] = [request_id, deadline_ms, ""]
    hold = []
    for c in counters:
        amount = amounts[c.measure] if amounts is not None else c.amount
        hold.append(f"{c.key}\t{c.field}\t{amount}\t{c.mode}\t{c.measure}\t{c.expire_at}\n")
        names.append(c.key)
        args += (c.field, c.limit, amount, c.expire_at)
    args[2] = "".join(hold)
    return names, args


LEAD = """
-- KEYS: the projection lock; ARGV: this runner's token, lease (ms).
-- 0 if this runner leads (now or still); else the milliseconds left of the other runner's lease.
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 0 end
if owner then
  local left = redis.call('PTTL', KEYS[1])
  if left < 1 then return tonumber(ARGV[2]) end
  return left
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 0
"""


class Script:
    """A Lua script and its SHA-1, for EVALSHA (falling back to EVAL when the server lost it)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def run(self, valkey: Valkey, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run it on `valkey` with these KEYS and ARGV."""
        return await valkey.evalsha(self.sha, self.source, list(keys), list(args))


RESERVE_SCRIPT, APPLY_SCRIPT, EXPIRE_SCRIPT, REBUILD_SCRIPT, LEAD_SCRIPT = (
    Script(s) for s in (RESERVE, APPLY, EXPIRE, REBUILD, LEAD))
