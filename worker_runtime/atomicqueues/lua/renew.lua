-- renew: extend a worker's leases (its heartbeat). Several entities of one bucket in one call.
-- KEYS[1] bucket base
-- ARGV  owner, lease_ttl_ms, channel, then (e, token) pairs
-- Returns one 1 (renewed) or 0 (lost: expired or taken over, nothing renewed) per pair.
local bb, owner, ttl, chan = KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3]
when_full_run(bb)
local now = now_ms()
local out = {}
for i = 4, #ARGV, 2 do
  local e, token = ARGV[i], ARGV[i + 1]
  if check_lease(bb, e, owner, token, now) then
    redis.call('ZADD', bb .. 'leases', now + ttl, owner .. '|' .. e)
    table.insert(out, 1)
  else
    sync(bb, e, chan, now)
    table.insert(out, 0)
  end
end
return out
