-- watch_job: read a job's outcome, or register a waiter that finish/dead will wake.
-- KEYS[1] bucket base
-- ARGV  jslot
-- Returns {state, result, error}; state '' when there is no such job. When the state is not
-- final (completed or dead), one element will be pushed to bb..'jw:'..jslot when it becomes so.
local bb, jslot = KEYS[1], ARGV[1]
when_full_run(bb)
local jk = jkey(bb, jslot)
local f = redis.call('HMGET', jk, 'state', 'result', 'error')
if not f[1] then
  return {'', '', ''}
end
if f[1] ~= 'completed' and f[1] ~= 'dead' then
  redis.call('HINCRBY', jk, 'waiters', 1)
end
return {f[1], f[2] or '', f[3] or ''}
