-- watch_job: read a job's outcome, or register a waiter that the job's end will wake.
-- KEYS[1] bucket base
-- ARGV  jslot
-- Returns {state, result, error}; state '' when there is no such job. When the state is not
-- final (completed, cancelled or dead), one element will be pushed to bb..'jw:'..jslot when
-- it becomes so (or when the job is removed).
-- @flags allow-oom
-- @include oom
-- @include queue
local bb, jslot = KEYS[1], ARGV[1]
when_full_run(bb)
local f = redis.call('HMGET', jkey(bb, jslot), 'd', 's', 'r', 'er')
if not f[1] then
  return {'', '', ''}
end
local state = f[2] or 'waiting'
if state ~= 'completed' and state ~= 'cancelled' and state ~= 'dead' then
  redis.call('HINCRBY', ekey(bb, entity_of(f[1]), 'meta'), 'n:' .. jslot, 1)
end
return {state, f[3] or '', f[4] or ''}
