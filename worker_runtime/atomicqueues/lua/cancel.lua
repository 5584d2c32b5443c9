-- cancel: remove a job that has not started (waiting, delayed or waiting for a retry), or ask
-- for a running one to be cancelled: its job hash gets x = why, the worker running it hears
-- of it (the heartbeat's renew.lua, and a message the client publishes) and cancels its
-- handler, and the job ends 'cancelled' (never retried); a lease that ends before the worker
-- records that ends the job so too (lease.lua).
-- KEYS[1] bucket base
-- ARGV  jslot, channel, why
-- Returns {1, 'cancelled'}, {1, 'cancelling'} (running: asked for) or {0, state} (state ''
-- when there is no such job).
-- @flags allow-oom
-- @include oom
-- @include job
local bb, jslot, chan, why = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
when_full_run(bb)
local jk = jkey(bb, jslot)
local f = redis.call('HMGET', jk, 'd', 's')
if not f[1] then return {0, ''} end
local state = f[2] or 'waiting'
if state == 'active' then
  redis.call('HSET', jk, 'x', why)
  return {1, 'cancelling'}
end
if state ~= 'waiting' and state ~= 'delayed' and state ~= 'retrying' then return {0, state} end
local now = now_ms()
local e = entity_of(f[1])
local E = load(bb, e, {'n:' .. jslot})
if state == 'waiting' then
  redis.call('ZREM', ekey(bb, e, 'wait'), jslot)
  E.w = E.w - 1
elseif state == 'delayed' then
  redis.call('ZREM', ekey(bb, e, 'delayed'), jslot)
  count(E, 'delayed', -1)
  refresh_due(E)
else
  redis.call('ZREM', ekey(bb, e, 'retry'), jslot)
  E.r = E.r - 1
  count(E, 'retrying', -1)
  refresh_due(E)
end
notify_waiters(E, jslot)  -- callers blocked in result() learn at once that it is gone
redis.call('DEL', jk)
save(E, chan, now)
return {1, 'cancelled'}
