"""The Lua scripts ``RedisState`` runs server-side: each check-and-change is one atomic step.

Scripts are constants: nothing from a request is ever part of their source, only of their
KEYS and ARGV. Times come from the server's ``TIME`` (allowed since Redis 7 replicates
script effects), so replicas' clocks never have to agree.
"""

from __future__ import annotations

__all__ = [
    "BOARD_PUBLISH",
    "CACHE_CLEAR",
    "CACHE_DELETE",
    "CACHE_GET",
    "CACHE_GET_OR_CLAIM",
    "CACHE_PUT",
    "CACHE_PUT_RELEASE",
    "CLAIM_RELEASE",
    "LIMIT_RESERVE",
    "LIMIT_SETTLE",
    "LOCK_ACQUIRE",
]

# Milliseconds on the server's clock.
_NOW = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# Members (reservation ids) are handed to HMGET/HDEL in slices: Lua's unpack has a limit.
_SLICE = """
local function slice(list, from, to)
  local part = {}
  for i = from, math.min(to, #list) do part[#part + 1] = list[i] end
  return part
end
"""

# The limiter's scripts take their arguments as words of ARGV[1] (ids and integers, never
# spaces): one argument packs and sends faster than a dozen.
_WORDS = """
local argv = {}
for word in string.gmatch(ARGV[1], '%S+') do argv[#argv + 1] = word end
"""

# Settlements: from word `a` their count, then per settlement its reservation id, the tokens
# used (-1: release) and its bucket count; KEYS from `k` hold those buckets' (sorted set,
# hash) pairs. Both kinds are idempotent: a batch whose outcome is unknown is sent again.
_SETTLE = """
local function settle_all(a, k)
  local count = tonumber(argv[a])
  a = a + 1
  for _ = 1, count do
    local rid, tokens, n = argv[a], tonumber(argv[a + 1]), tonumber(argv[a + 2])
    a = a + 3
    for _ = 1, n do
      local z, h = KEYS[k], KEYS[k + 1]
      k = k + 2
      if tokens < 0 then
        if redis.call('ZREM', z, rid) == 1 then
          local v = redis.call('HGET', h, rid)
          if v then
            redis.call('HDEL', h, rid)
            redis.call('HINCRBY', h, '#', -tonumber(v))
          end
        end
      elseif redis.call('ZSCORE', z, rid) then
        local v = redis.call('HGET', h, rid)
        if v and tonumber(v) ~= tokens then
          redis.call('HSET', h, rid, tokens)
          redis.call('HINCRBY', h, '#', tokens - tonumber(v))
        end
      end
    end
  end
  return a, k
end
"""

LIMIT_SETTLE = _WORDS + _SETTLE + "\nsettle_all(1, 1)\nreturn 0\n"

# Pending settlements first (as in LIMIT_SETTLE: they ride along instead of costing a call of
# their own), then the reservation. KEYS after the settlements': per bucket a sorted set
# (reservation id -> time) and a hash (id -> tokens, and their total under "#"). Words after
# the settlements': window ms, id, tokens, then per bucket rpm and tpm (-1: none).
# Returns 0 once every bucket took the request, else the milliseconds until all may have room.
LIMIT_RESERVE = (
    _NOW
    + _SLICE
    + _WORDS
    + _SETTLE
    + """
local a, k = settle_all(1, 1)
local window = tonumber(argv[a])
local rid = argv[a + 1]
local tokens = tonumber(argv[a + 2])
local now = now_ms()
local start = now - window
local wait = 0
local refused = false

local function prune(z, h)
  local old = redis.call('ZRANGEBYSCORE', z, '-inf', start)
  if #old == 0 then return end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', start)
  local freed = 0
  for i = 1, #old, 1000 do
    local part = slice(old, i, i + 999)
    for _, v in ipairs(redis.call('HMGET', h, unpack(part))) do
      if v then freed = freed + tonumber(v) end
    end
    redis.call('HDEL', h, unpack(part))
  end
  if freed ~= 0 then redis.call('HINCRBY', h, '#', -freed) end
end

-- The time the oldest reservations holding `excess` tokens leave the window.
local function tokens_free_at(z, h, excess)
  local from = 0
  while true do
    local part = redis.call('ZRANGE', z, from, from + 199, 'WITHSCORES')
    if #part == 0 then return now + window end
    local ids = {}
    for j = 1, #part, 2 do ids[#ids + 1] = part[j] end
    for j, v in ipairs(redis.call('HMGET', h, unpack(ids))) do
      if v then excess = excess - tonumber(v) end
      if excess <= 0 then return tonumber(part[2 * j]) + window end
    end
    from = from + 200
  end
end

local n = (#KEYS - k + 1) / 2
for i = 1, n do
  local z, h = KEYS[k + 2 * i - 2], KEYS[k + 2 * i - 1]
  local rpm, tpm = tonumber(argv[a + 1 + 2 * i]), tonumber(argv[a + 2 + 2 * i])
  prune(z, h)
  if rpm >= 0 then
    local count = redis.call('ZCARD', z)
    if count >= rpm then
      refused = true
      if rpm == 0 then
        wait = math.max(wait, window)
      else
        local at = redis.call('ZRANGE', z, count - rpm, count - rpm, 'WITHSCORES')
        wait = math.max(wait, tonumber(at[2]) + window - now)
      end
    end
  end
  if tpm >= 0 then
    local used = tonumber(redis.call('HGET', h, '#') or 0)
    if used + tokens > tpm then
      refused = true
      if tokens > tpm then
        wait = math.max(wait, window)
      else
        wait = math.max(wait, tokens_free_at(z, h, used + tokens - tpm) - now)
      end
    end
  end
end
if refused then return math.max(math.ceil(wait), 1) end

for i = 1, n do
  local z, h = KEYS[k + 2 * i - 2], KEYS[k + 2 * i - 1]
  redis.call('ZADD', z, now, rid)
  redis.call('PEXPIRE', z, window)
  if tonumber(argv[a + 2 + 2 * i]) >= 0 then
    redis.call('HSET', h, rid, tokens)
    redis.call('HINCRBY', h, '#', tokens)
    redis.call('PEXPIRE', h, window)
  end
end
return 0
"""
)

# A bounded store of entries under one namespace. KEYS: the entry, then the namespace's
# index (member -> last use), expiry (member -> ms), sizes (member -> bytes), byte total
# and use counter. ARGV[1]: the member; ARGV[2]: the prefix that makes a member its key.
_STORE = """
local entry, idx, exp, sizes, total, seq = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local member, prefix = ARGV[1], ARGV[2]

local function drop(m)
  local existed = redis.call('DEL', prefix .. m)
  redis.call('ZREM', idx, m)
  redis.call('ZREM', exp, m)
  local size = redis.call('HGET', sizes, m)
  if size then
    redis.call('HDEL', sizes, m)
    redis.call('DECRBY', total, size)
  end
  return existed
end
"""

# ARGV[3..]: value, ttl ms, max entries, max bytes. Returns how many entries were evicted.
CACHE_PUT = (
    _NOW
    + _STORE
    + """
local value, ttl = ARGV[3], tonumber(ARGV[4])
local max_entries, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_ms()
-- Forget some entries whose time has passed, so the bounds count live ones.
for _, m in ipairs(redis.call('ZRANGEBYSCORE', exp, '-inf', now, 'LIMIT', 0, 64)) do
  drop(m)
end
drop(member)
redis.call('SET', entry, value, 'PX', ttl)
redis.call('ZADD', idx, redis.call('INCR', seq), member)
redis.call('ZADD', exp, now + ttl, member)
redis.call('HSET', sizes, member, #value)
local bytes = redis.call('INCRBY', total, #value)
local evicted = 0
while bytes > max_bytes or redis.call('ZCARD', idx) > max_entries do
  local oldest = redis.call('ZRANGE', idx, 0, 0)[1]
  if not oldest or oldest == member then break end
  drop(oldest)
  evicted = evicted + 1
  bytes = tonumber(redis.call('GET', total) or 0)
end
return evicted
"""
)

# CACHE_PUT, then the claim (KEYS[7]) given up when this caller's token (ARGV[7]) holds it.
CACHE_PUT_RELEASE = CACHE_PUT.replace(
    "\nreturn evicted\n",
    "\nif redis.call('GET', KEYS[7]) == ARGV[7] then redis.call('DEL', KEYS[7]) end"
    "\nreturn evicted\n",
)

# KEYS: the entry, the namespace's index and use counter, the entry's claim; ARGV: the
# member, this caller's token, the claim's ms. The entry (marked as used last); else 1 when
# this caller now holds the claim, 0 when another does.
CACHE_GET_OR_CLAIM = """
local value = redis.call('GET', KEYS[1])
if value then
  redis.call('ZADD', KEYS[2], 'XX', redis.call('INCR', KEYS[3]), ARGV[1])
  return value
end
if redis.call('SET', KEYS[4], ARGV[2], 'NX', 'PX', ARGV[3]) then return 1 end
return 0
"""

# KEYS: the entry, the namespace's index and use counter; ARGV[1]: the member. The entry,
# marked as used last (a lapsed one's bookkeeping goes with the next put's sweep).
CACHE_GET = """
local value = redis.call('GET', KEYS[1])
if value then redis.call('ZADD', KEYS[2], 'XX', redis.call('INCR', KEYS[3]), ARGV[1]) end
return value
"""

# 1 if the entry was there.
CACHE_DELETE = _STORE + "\nreturn drop(member)\n"

# Every entry of the namespace, by its index; returns how many there were.
CACHE_CLEAR = (
    _STORE
    + _SLICE
    + """
local members = redis.call('ZRANGE', idx, 0, -1)
local count = 0
for i = 1, #members, 500 do
  local part = slice(members, i, i + 499)
  for j = 1, #part do part[j] = prefix .. part[j] end
  count = count + redis.call('DEL', unpack(part))
end
redis.call('DEL', idx, exp, sizes, total)
return count
"""
)

# KEYS[1]: a claim; ARGV[1]: our token. Deletes the claim only if it is ours.
CLAIM_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1]: the lock; ARGV: our token, ttl ms. 1 when we hold it (taken or renewed).
LOCK_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS[1]: the breakers hash; ARGV: (provider, at, event JSON) triples. An event replaces
# the provider's only when it is newer, whichever replica wrote last (or when what is there
# is not an event this version reads).
BOARD_PUBLISH = """
local function at_of(current)
  local ok, event = pcall(cjson.decode, current)
  if ok and type(event) == 'table' then return tonumber(event.at) end
end
for i = 1, #ARGV, 3 do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  local at = current and at_of(current)
  if not at or at < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
  end
end
return 0
"""
