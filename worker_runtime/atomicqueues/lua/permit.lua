-- permit: may one more handler of an entity type start now, under the rate limit its whole
-- type shares (a downstream API all its entities call)? Kept as the start times of its last n
-- handlers, newest first, expiring after the period.
-- KEYS[1] the type's permit list (keys.py)
-- ARGV  n, period_ms
-- Returns 0 (granted, and counted), or how many ms until one may be.
-- @include time
local k, n, period = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_ms()
if redis.call('LLEN', k) >= n then
  local wait = tonumber(redis.call('LINDEX', k, n - 1)) + period - now
  if wait > 0 then return math.ceil(wait) end
end
redis.call('LPUSH', k, int(now))
redis.call('LTRIM', k, 0, n - 1)
redis.call('PEXPIRE', k, period)
return 0
