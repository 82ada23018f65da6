"""The Lua scripts that keep quota counters in Valkey: reserve, settle from the log, expire, release, rebuild.

Each runs atomically in Valkey, so a reservation checks and charges every limit
in one round trip (granting the output tokens every limit has room for), and a
settlement moves counters and the log checkpoint together.
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
-- ARGV: hold name, deadline (ms), output wanted, output needed at least,
--       per measure (tokens, requests, nano-USD) its fixed amount and its amount per output token,
--       then per counter: field, limit, mode and measure (`pt`: period tokens, `rr`: rate requests, ...), expire_at
-- Reads every counter, grants the most output each has room for (the wanted, or less; never below the
-- needed), then charges them all and records the hold. Returns {1, output, counter values after} or
-- {0, index of the counter that refused, its value, every counter's value}.
local n = #KEYS - 2
local out = tonumber(ARGV[3])
local least = tonumber(ARGV[4])
local fixed = {t = tonumber(ARGV[5]), r = tonumber(ARGV[7]), u = tonumber(ARGV[9])}
local per = {t = tonumber(ARGV[6]), r = tonumber(ARGV[8]), u = tonumber(ARGV[10])}
local used, measures = {}, {}
local limiter, refused = 0, 0
for i = 1, n do
  local b = 11 + (i - 1) * 4
  local measure = string.sub(ARGV[b + 2], 2, 2)
  measures[i] = measure
  local now = tonumber(redis.call('HGET', KEYS[i + 2], ARGV[b]) or '0')
  used[i] = now
  local room = tonumber(ARGV[b + 1]) - now - fixed[measure]
  if room < 0 then
    if refused == 0 then refused = i end
  else
    local each = per[measure]
    if each > 0 and room < each * out then
      out = math.floor(room / each)
      limiter = i
    end
  end
end
if refused == 0 and out < least then refused = limiter end
if refused > 0 then
  local reply = {0, refused, used[refused]}
  for i = 1, n do reply[i + 3] = used[i] end
  return reply
end
local charged, texts = {}, {}
for m, f in pairs(fixed) do
  charged[m] = f + math.ceil(per[m] * out)
  texts[m] = string.format('%d', charged[m])
end
local hold = {}
local reply = {1, out}
for i = 1, n do
  local b = 11 + (i - 1) * 4
  local measure = measures[i]
  local amount = texts[measure]
  local now = redis.call('HINCRBY', KEYS[i + 2], ARGV[b], amount)
  if now == charged[measure] then redis.call('EXPIREAT', KEYS[i + 2], ARGV[b + 3], 'NX') end
  hold[i] = KEYS[i + 2] .. '\\t' .. ARGV[b] .. '\\t' .. amount .. '\\t' .. string.sub(ARGV[b + 2], 1, 1) .. '\\t' ..
    measure .. '\\t' .. ARGV[b + 3] .. '\\n'
  reply[i + 2] = now
end
local text = table.concat(hold)
if redis.call('HSETNX', KEYS[2], ARGV[1], text) == 0 then
  -- the same hold named twice (a caller of quota.reserve may repeat its name): one hold covering both
  redis.call('HSET', KEYS[2], ARGV[1], redis.call('HGET', KEYS[2], ARGV[1]) .. text)
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return reply
"""

# one hold entry per line: key, field, amount, mode, measure, expire_at (tab-separated)
_ENTRIES = "string.gmatch(raw, '([^\\t]*)\\t([^\\t]*)\\t([^\\t]*)\\t([^\\t]*)\\t([^\\t]*)\\t([^\\n]*)\\n')"
# settle(raw, actual): a hold's period counters refunded (the log counts them), its rate windows corrected to
# the `actual` amounts per measure; its entry is then the caller's to remove
_SETTLE = """
local function settle(raw, actual)
  for key, fld, amount, mode, measure in ENTRIES do
    if redis.call('EXISTS', key) == 1 then
      local delta = -tonumber(amount)
      if mode == 'r' then delta = actual[measure] + delta end
      redis.call('HINCRBY', key, fld, string.format('%d', delta))
    end
  end
end
""".replace("ENTRIES", _ENTRIES)

APPLY = _SETTLE + """
-- KEYS: checkpoint, rebuilding flag, holds zset, hold data hash
-- ARGV: from position, to position, settlements S, S x (hold name, tokens, requests, nanos),
--       P, P key prefixes of removed tenants, K, K keys of theirs,
--       M, M field suffixes of removed models, C, C counter keys that may hold such fields,
--       then deltas x (key, field, delta, expire_at)
-- A removed tenant's holds are dropped (a call of it settling later refunds nothing) and its keys deleted
-- before the deltas are added: the deltas then hold only usage of the tenant created again after it. A removed
-- model's fields are deleted from every counter and its entries from every hold, the same way.
if redis.call('EXISTS', KEYS[2]) == 1 then return {2, 0} end
local at = tonumber(redis.call('GET', KEYS[1]) or '0')
if at ~= tonumber(ARGV[1]) then return {0, at} end
local s = tonumber(ARGV[3])
for i = 0, s - 1 do
  local b = 4 + i * 4
  local raw = redis.call('HGET', KEYS[4], ARGV[b])
  if raw then
    settle(raw, {t = tonumber(ARGV[b + 1]), r = tonumber(ARGV[b + 2]), u = tonumber(ARGV[b + 3])})
    redis.call('HDEL', KEYS[4], ARGV[b])
    redis.call('ZREM', KEYS[3], ARGV[b])
  end
end
local d = 4 + s * 4
local p = tonumber(ARGV[d])
if p > 0 then
  local all = redis.call('HGETALL', KEYS[4])
  for j = 1, #all, 2 do
    local ended = false
    for key in string.gmatch(all[j + 1], '([^\\t\\n]*)\\t[^\\n]*\\n') do
      for i = d + 1, d + p do
        if string.sub(key, 1, #ARGV[i]) == ARGV[i] then ended = true end
      end
    end
    if ended then
      redis.call('HDEL', KEYS[4], all[j])
      redis.call('ZREM', KEYS[3], all[j])
    end
  end
end
d = d + 1 + p
local k = tonumber(ARGV[d])
for i = d + 1, d + k do redis.call('DEL', ARGV[i]) end
d = d + 1 + k
local m = tonumber(ARGV[d])
local function ended_field(fld)
  for i = d + 1, d + m do
    local suffix = ARGV[i]
    if #fld >= #suffix and string.sub(fld, -#suffix) == suffix then return true end
  end
  return false
end
if m > 0 then
  local all = redis.call('HGETALL', KEYS[4])
  for j = 1, #all, 2 do
    local kept, changed = {}, false
    for line in string.gmatch(all[j + 1], '[^\\n]*\\n') do
      local fld = string.match(line, '^[^\\t]*\\t([^\\t]*)\\t')
      if fld and ended_field(fld) then changed = true else kept[#kept + 1] = line end
    end
    if changed then
      if #kept == 0 then
        redis.call('HDEL', KEYS[4], all[j])
        redis.call('ZREM', KEYS[3], all[j])
      else
        redis.call('HSET', KEYS[4], all[j], table.concat(kept))
      end
    end
  end
end
local c = tonumber(ARGV[d + 1 + m])
for i = d + 2 + m, d + 1 + m + c do
  for _, fld in ipairs(redis.call('HKEYS', ARGV[i])) do
    if ended_field(fld) then redis.call('HDEL', ARGV[i], fld) end
  end
end
d = d + 2 + m + c
while d <= #ARGV do
  redis.call('HINCRBY', ARGV[d], ARGV[d + 1], ARGV[d + 2])
  redis.call('EXPIREAT', ARGV[d], ARGV[d + 3])
  d = d + 4
end
redis.call('SET', KEYS[1], ARGV[2])
return {1, tonumber(ARGV[2])}
"""

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

RELEASE = _SETTLE + """
-- KEYS: holds zset, hold data hash; ARGV: hold name, actual tokens, requests, nanos
-- Settles one hold now, as the log's settlement would (period counters refunded, to be counted from the
-- log; rate windows corrected to the actual amounts): a call whose client left frees its quota at once.
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then return 0 end
settle(raw, {t = tonumber(ARGV[2]), r = tonumber(ARGV[3]), u = tonumber(ARGV[4])})
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""

REBUILD = """
-- KEYS: checkpoint, rebuilding flag, holds zset, hold data hash
-- ARGV: flag token, position, K, K old counter keys, S, S settled hold names,
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


MEASURES = ("t", "r", "u")            # tokens, requests, nano-USD


def reserve_call(keys: Keys, hold: str, deadline_ms: int, counters: list[Counter],
                 amounts: dict[str, tuple[int, float]] | None = None, want: int = 0,
                 least: int = 0) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of RESERVE for a call's counters.

    `amounts` (measure -> (fixed amount, amount per output token)) overrides the counters' own amounts, so a
    plan can be reused; the script grants up to `want` output tokens (at least `least`). Without it each
    measure is charged the amount its counters carry and no output is asked for.
    """
    if amounts is None:
        amounts = {c.measure: (c.amount, 0) for c in counters}
    names = [keys.holds, keys.hold_data]
    args: list[Any] = [hold, deadline_ms, want, least]
    for measure in MEASURES:
        args += amounts.get(measure, (0, 0))
    for c in counters:
        names.append(c.key)
        args += (c.field, c.limit, c.mode + c.measure, c.expire_at)
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


RESERVE_SCRIPT, APPLY_SCRIPT, EXPIRE_SCRIPT, RELEASE_SCRIPT, REBUILD_SCRIPT, LEAD_SCRIPT = (
    Script(s) for s in (RESERVE, APPLY, EXPIRE, RELEASE, REBUILD, LEAD))
