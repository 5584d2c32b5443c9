-- dlq: requeue or purge an entity's dead letters.
-- KEYS[1] bucket base
-- ARGV  e, action ('requeue'|'purge'), channel, then the jslots (none: all of them)
-- Returns the number of jobs requeued or purged. A requeued job keeps its original place in
-- the order (its enqueue score), with its attempts reset.
local bb, e, action, chan = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
when_full_run(bb)
local dlq = ekey(bb, e, 'dlq')
local jslots = {}
for i = 4, #ARGV do table.insert(jslots, ARGV[i]) end
if #jslots == 0 then jslots = redis.call('ZRANGE', dlq, 0, -1) end
local n = 0
for _, jslot in ipairs(jslots) do
  if redis.call('ZREM', dlq, jslot) == 1 then
    count(bb, 'dead', -1)
    local jk = jkey(bb, jslot)
    if action == 'requeue' and redis.call('EXISTS', jk) == 1 then
      redis.call('PERSIST', jk)
      redis.call('HSET', jk, 'made', 0, 'fin', '')
      to_wait(bb, e, jslot)
    else
      redis.call('DEL', jk)
    end
    n = n + 1
  end
end
sync(bb, e, chan, now_ms())
return n
