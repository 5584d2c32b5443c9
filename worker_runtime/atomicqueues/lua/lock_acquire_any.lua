-- lock_acquire_any: take the first free resource of a pool, in the order `spread` gives.
-- KEYS[1] lock base of the resource type
-- ARGV  owner, owner_type, ttl_ms, spread, offset, then the candidates r... (encoded ids)
--   spread 'first':  in the order given
--          'random': in the order given, starting at index `offset` (0-based) and wrapping
--          'lru':    least recently acquired or released first (never used or not for a day
--                    first); ties in the order given
-- Returns {1, r, token, acquired_ms, expires_ms}
--      or {0, then r, owner, owner_type, expires_ms for every candidate} (all held)
-- @flags allow-oom
-- @include locks
local lb, owner, otype, ttl = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local spread, offset = ARGV[4], tonumber(ARGV[5])
when_full_run(lb)
local now = now_ms()
lock_expire(lb, now, 100)
local n = #ARGV - 5
local order = {}
for i = 0, n - 1 do
  if spread == 'random' then
    order[#order + 1] = ARGV[6 + (offset + i) % n]
  else
    order[#order + 1] = ARGV[6 + i]
  end
end
if spread == 'lru' then
  local rank, used = {}, {}
  for i, r in ipairs(order) do
    rank[r] = i
    used[r] = tonumber(redis.call('ZSCORE', lb .. 'used', r)) or -1
  end
  table.sort(order, function(a, b)
    if used[a] ~= used[b] then
      return used[a] < used[b]
    end
    return rank[a] < rank[b]
  end)
end
local held = {0}
for _, r in ipairs(order) do
  local h = lock_holder(lb, r, now)
  if not h then
    local g = lock_grant(lb, r, owner, otype, ttl, now)
    return {1, r, g[1], g[2], g[3]}
  end
  for _, v in ipairs({r, h[1], h[2], h[5]}) do
    held[#held + 1] = v
  end
end
return held
