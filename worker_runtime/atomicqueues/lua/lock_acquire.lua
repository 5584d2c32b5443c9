-- lock_acquire: take one resource's lock if it is free (never held, released, or expired).
-- KEYS[1] lock base of the resource type
-- ARGV  r (encoded resource id), owner, owner_type, ttl_ms
-- Returns {1, token, acquired_ms, expires_ms} or {0, owner, owner_type, expires_ms} (held;
-- also when owner itself holds it: a lock is not re-entrant).
-- @flags allow-oom
-- @include locks
local lb, r, owner, otype, ttl = KEYS[1], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
when_full_run(lb)
local now = now_ms()
lock_expire(lb, now, 100)
local h = lock_holder(lb, r, now)
if h then
  return {0, h[1], h[2], h[5]}
end
local g = lock_grant(lb, r, owner, otype, ttl, now)
return {1, g[1], g[2], g[3]}
