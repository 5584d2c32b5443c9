-- cancel: remove a job that has not started (waiting or delayed).
-- KEYS[1] bucket base
-- ARGV  e, jslot, channel
-- Returns {1, 'cancelled'} or {0, state} (state '' when there is no such job).
local bb, e, jslot = KEYS[1], ARGV[1], ARGV[2]
when_full_run(bb)
local jk = jkey(bb, jslot)
local state = redis.call('HGET', jk, 'state')
if state ~= 'waiting' and state ~= 'delayed' then
  return {0, state or ''}
end
local from = state == 'waiting' and 'wait' or 'delayed'
redis.call('ZREM', ekey(bb, e, from), jslot)
count(bb, state, -1)
notify_waiters(bb, jslot)  -- callers blocked in result() learn at once that it is gone
redis.call('DEL', jk)
sync(bb, e, ARGV[3], now_ms())
return {1, 'cancelled'}
