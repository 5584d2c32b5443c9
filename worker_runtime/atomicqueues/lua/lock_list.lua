-- lock_list: the held locks of one resource type (reads only; expired ones are left out).
-- KEYS[1] lock base of the resource type
-- ARGV  limit
-- Returns r, owner, owner_type, token, acquired_ms, expires_ms for each, soonest expiry first.
-- @flags no-writes
-- @include locks
local lb, limit = KEYS[1], tonumber(ARGV[1])
local now = now_ms()
local out = {}
for _, r in ipairs(redis.call('ZRANGEBYSCORE', lb .. 'held', '(' .. int(now), '+inf',
                              'LIMIT', 0, limit)) do
  local h = redis.call('HMGET', lock_key(lb, r), 'owner', 'otype', 'token', 'at', 'exp')
  if h[1] and tonumber(h[5]) > now then
    for _, v in ipairs({r, h[1], h[2], h[3], h[4], h[5]}) do
      out[#out + 1] = v
    end
  end
end
return out
