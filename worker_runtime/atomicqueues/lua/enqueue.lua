-- enqueue: add one job to an entity's queue (idempotent on the job's slot).
-- KEYS[1] bucket base
-- ARGV  e, jslot, id, eid, name, payload, prio, delay_ms, max_attempts, backoff_json,
--       keep_ms, keep_count, keep_failed_ms, channel
-- Returns {1, state} when added, {0, state} when a job with this id already exists.
local bb = KEYS[1]
local e, jslot = ARGV[1], ARGV[2]
local jk = jkey(bb, jslot)
local existing = redis.call('HGET', jk, 'state')
if existing then
  return {0, existing}
end
when_full_refuse(bb)
local now = now_ms()
promote(bb, e, now)
local prio = tonumber(ARGV[7])
local score = next_score(bb, e, prio)
local delay = tonumber(ARGV[8])
local state = 'waiting'
if delay > 0 then state = 'delayed' end
redis.call('HSET', jk, 'id', ARGV[3], 'eid', ARGV[4], 'name', ARGV[5], 'payload', ARGV[6],
  'state', state, 'prio', prio, 'score', score, 'made', 0, 'max', ARGV[9], 'backoff', ARGV[10],
  'enq', now, 'keep', ARGV[11], 'keepn', ARGV[12], 'keepf', ARGV[13], 'waiters', 0)
if delay > 0 then
  redis.call('HSET', jk, 'due', now + delay)
  redis.call('ZADD', ekey(bb, e, 'delayed'), now + delay, jslot)
  count(bb, 'delayed', 1)
else
  redis.call('ZADD', ekey(bb, e, 'wait'), score, jslot)
  count(bb, 'waiting', 1)
end
sync(bb, e, ARGV[14], now)
return {1, state}
