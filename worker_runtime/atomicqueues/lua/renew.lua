-- renew: extend a worker's leases (its heartbeat). Several entities of one bucket in one call.
-- KEYS[1] bucket base
-- ARGV  owner, lease_ttl_ms, channel, then (e, token) pairs
-- Returns one 1 (renewed), 2 (renewed, and the job it runs is to be cancelled: cancel.lua) or
-- 0 (lost: expired or taken over, nothing renewed) per pair.
-- @flags allow-oom
-- @include oom
-- @include lease
local bb, owner, ttl, chan = KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3]
when_full_run(bb)
local now, us = clock()
local out = {}
for i = 4, #ARGV, 2 do
  local E = load(bb, ARGV[i], {'l:' .. owner})
  local L = check_lease(E, owner, ARGV[i + 1], now, us)
  if L then
    extend(E, owner, L, now + ttl)
    table.insert(out, L.jslot and redis.call('HEXISTS', jkey(bb, L.jslot), 'x') == 1 and 2 or 1)
  else
    table.insert(out, 0)
  end
  save(E, chan, now)
end
return out
