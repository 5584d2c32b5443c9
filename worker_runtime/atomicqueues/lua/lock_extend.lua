-- lock_extend: the current holder pushes its lock's expiry to now + ttl.
-- KEYS[1] lock base of the resource type
-- ARGV  r, owner, token, ttl_ms
-- Returns {1, expires_ms}, or {0} when owner does not hold it under token (expired, released,
-- taken over): nothing is changed then.
-- @flags allow-oom
-- @include locks
local lb, r, owner, token, ttl = KEYS[1], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
when_full_run(lb)
local now = now_ms()
lock_expire(lb, now, 100)
local h = lock_holder(lb, r, now)
if not h or h[1] ~= owner or h[3] ~= token then
  return {0}
end
local exp = now + ttl
redis.call('HSET', lock_key(lb, r), 'exp', exp)
redis.call('PEXPIRE', lock_key(lb, r), ttl + LOCK_KEEP_MS)
redis.call('ZADD', lb .. 'held', exp, r)
return {1, int(exp)}
