-- cancel: remove a job that has not started (waiting or delayed).
-- KEYS[1] bucket base
-- ARGV  jslot, channel
-- Returns {1, 'cancelled'} or {0, state} (state '' when there is no such job).
-- @include oom
-- @include job
local bb, jslot, chan = KEYS[1], ARGV[1], ARGV[2]
when_full_run(bb)
local jk = jkey(bb, jslot)
local f = redis.call('HMGET', jk, 'd', 's')
if not f[1] then return {0, ''} end
local state = f[2] or 'waiting'
if state ~= 'waiting' and state ~= 'delayed' then return {0, state} end
local now = now_ms()
local e = entity_of(f[1])
local E = load(bb, e, {'n:' .. jslot})
if state == 'waiting' then
  redis.call('ZREM', ekey(bb, e, 'wait'), jslot)
  E.w = E.w - 1
else
  redis.call('ZREM', ekey(bb, e, 'delayed'), jslot)
  count(E, 'delayed', -1)
  refresh_due(E)
end
notify_waiters(E, jslot)  -- callers blocked in result() learn at once that it is gone
redis.call('DEL', jk)
save(E, chan, now)
return {1, 'cancelled'}
