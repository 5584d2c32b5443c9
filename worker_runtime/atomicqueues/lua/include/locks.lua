-- locks: what the lock scripts (lock_*.lua) share.
-- @include oom
-- @include time
--
-- Resource locks (locks.py). lb = lock base "PREFIX:lock:{TYPE}:", r = percent-encoded id:
--   lb..'l:'..r  HASH owner otype token at exp (holder fields only while held; token always)
--   lb..'held'   ZSET r -> expiry ms (the type's held locks, for listing)
--   lb..'used'   ZSET r -> when last acquired or released, ms (least recently used first)
--   lb..'oom'    never written (oom.lua)
-- A lock is held while now < exp, checked here with TIME: an expired lock is free even before
-- it is cleaned up. Key TTLs only clean up; they are longer than any lock they could cut.
local LOCK_KEEP_MS = 86400000  -- a free lock's last token and last use are kept this long

local function lock_key(lb, r)
  return lb .. 'l:' .. r
end

-- Forget a lock's holder; its token stays, so the next grant continues from it.
local function lock_free(lb, r, at)
  local k = lock_key(lb, r)
  redis.call('HDEL', k, 'owner', 'otype', 'at', 'exp')
  redis.call('PEXPIRE', k, LOCK_KEEP_MS)
  redis.call('ZREM', lb .. 'held', r)
  redis.call('ZADD', lb .. 'used', at, r)
end

-- Free up to `limit` locks that have expired, and drop last-use times too old to matter
-- (a resource without one counts as the least recently used).
local function lock_expire(lb, now, limit)
  local gone = redis.call('ZRANGEBYSCORE', lb .. 'held', '-inf', now, 'WITHSCORES',
                          'LIMIT', 0, limit)
  for i = 1, #gone, 2 do
    lock_free(lb, gone[i], tonumber(gone[i + 1]))
  end
  redis.call('ZREMRANGEBYSCORE', lb .. 'used', '-inf', now - LOCK_KEEP_MS)
end

-- The live holder of r as {owner, otype, token, at, exp}, or nil when r is free.
local function lock_holder(lb, r, now)
  local h = redis.call('HMGET', lock_key(lb, r), 'owner', 'otype', 'token', 'at', 'exp')
  if not h[1] then
    return nil
  end
  if tonumber(h[5]) <= now then
    lock_free(lb, r, tonumber(h[5]))
    return nil
  end
  return h
end

-- Give r to owner for ttl ms. The token grows on every grant and, with the time floor (as in
-- grant()), keeps growing across a restart that lost the last writes or a lock key that expired.
local function lock_grant(lb, r, owner, otype, ttl, now)
  local k = lock_key(lb, r)
  local last = tonumber(redis.call('HGET', k, 'token')) or 0
  local token = int(math.max(last + 1, tonumber(select(2, clock()))))
  local exp = now + ttl
  redis.call('HSET', k, 'owner', owner, 'otype', otype, 'token', token, 'at', now, 'exp', exp)
  redis.call('PEXPIRE', k, ttl + LOCK_KEEP_MS)
  redis.call('ZADD', lb .. 'held', exp, r)
  redis.call('ZADD', lb .. 'used', now, r)
  return {token, int(now), int(exp)}
end
