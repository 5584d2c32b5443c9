-- lock_release: the holder gives its lock up; or an operator frees it whoever holds it.
-- KEYS[1] lock base of the resource type
-- ARGV  r, owner, token, force ('1': release whoever holds it; owner and token are ignored)
-- Returns {1, owner, owner_type, token, acquired_ms, expires_ms} (what was released), or {0}
-- when it was not held (by owner under token): nothing is changed then.
-- @flags allow-oom
-- @include locks
local lb, r, owner, token, force = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'
when_full_run(lb)
local now = now_ms()
lock_expire(lb, now, 100)
local h = lock_holder(lb, r, now)
if not h or (not force and (h[1] ~= owner or h[3] ~= token)) then
  return {0}
end
lock_free(lb, r, now)
return {1, h[1], h[2], h[3], h[4], h[5]}
