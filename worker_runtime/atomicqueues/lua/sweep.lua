-- sweep: recover what no live worker will: expired leases (their running jobs go back to the
-- head of the queue with the attempt counted, or to the dead letters) and due delayed jobs.
-- KEYS[1] bucket base
-- ARGV  limit, channel
-- Returns {leases_recovered, entities_promoted}.
local bb, limit, chan = KEYS[1], tonumber(ARGV[1]), ARGV[2]
when_full_run(bb)
local now = now_ms()
local expired = redis.call('ZRANGEBYSCORE', bb .. 'leases', '-inf', now - 1, 'LIMIT', 0, limit)
for _, member in ipairs(expired) do
  local sep = string.find(member, '|', 1, true)
  local owner, e = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
  drop_lease(bb, e, owner, true, now)
  promote(bb, e, now)
  sync(bb, e, chan, now)
end
local due = redis.call('ZRANGEBYSCORE', bb .. 'delayed', '-inf', now, 'LIMIT', 0, limit)
for _, e in ipairs(due) do
  promote(bb, e, now)
  sync(bb, e, chan, now)
end
return {#expired, #due}
