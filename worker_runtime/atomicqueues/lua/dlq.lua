-- dlq: requeue or purge an entity's dead letters.
-- KEYS[1] bucket base
-- ARGV  e, action ('requeue'|'purge'), channel, then the jslots (none: all of them)
-- Returns the number of jobs requeued or purged. A requeued job keeps its original place in
-- the order (its wait score), with its attempts reset.
-- @flags allow-oom
-- @include oom
-- @include queue
local bb, e, action, chan = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
when_full_run(bb)
local now = clock()
local dlq = ekey(bb, e, 'dlq')
local jslots = {}
for i = 4, #ARGV do table.insert(jslots, ARGV[i]) end
if #jslots == 0 then jslots = redis.call('ZRANGE', dlq, 0, -1) end
local E = load(bb, e)
local n = 0
for _, jslot in ipairs(jslots) do
  if redis.call('ZREM', dlq, jslot) == 1 then
    count(E, 'dead', -1)
    E.x = E.x - 1
    local jk = jkey(bb, jslot)
    local score = redis.call('HGET', jk, 'sc')
    if action == 'requeue' and score then
      redis.call('PERSIST', jk)
      redis.call('HSET', jk, 'm', 0, 'f', '')
      to_wait(E, jslot, score)
    else
      redis.call('DEL', jk)
    end
    n = n + 1
  end
end
save(E, chan, now)
return n
