-- sweep: recover what no live worker will: expired leases (their running jobs go back to the
-- head of the queue with the attempt counted, or to the dead letters) and due delayed jobs,
-- and ring the bucket's doorbell while an entity is claimable.
-- KEYS[1] bucket base
-- ARGV  limit, channel
-- Returns {leases_recovered, entities_promoted}.
-- @flags allow-oom
-- @include oom
-- @include bucket
local bb, limit, chan = KEYS[1], tonumber(ARGV[1]), ARGV[2]
when_full_run(bb)
local now, us = clock()
local expired = redis.call('ZRANGEBYSCORE', bb .. 'leases', '-inf', now - 1, 'LIMIT', 0, limit)
local tally = {}
for _, member in ipairs(expired) do
  local sep = string.find(member, '|', 1, true)
  local owner, e = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
  local E = load(bb, e, {'l:' .. owner})
  if E['l:' .. owner] then
    drop_lease(E, owner, true, now, us)
  else
    redis.call('ZREM', bb .. 'leases', member)  -- an index entry without its lease
  end
  promote(E, now)
  save(E, chan, now, tally)
end
local promoted = promote_due(bb, now, chan, limit, tally)
write_counts(bb, tally)
-- A doorbell popped by a packed worker that died before it claimed: ring it again.
if redis.call('ZCARD', bb .. 'ready') > 0 then ring(bb .. 'bell', true) end
return {#expired, promoted}
