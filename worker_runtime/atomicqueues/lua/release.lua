-- release: a worker gives up its lease on an entity.
-- KEYS[1] bucket base
-- ARGV  e, owner, token, mode, channel
--   mode 'idle': only when no job of the entity may start now (checked atomically, so a job
--                enqueued at that instant is never stranded); the lease is kept otherwise.
--   mode 'shutdown': always; a running job goes back to the head of the queue at once and the
--                attempt it used is given back.
-- Returns 'released', 'busy' (idle mode, work is there: lease kept) or 'lost'.
-- @flags allow-oom
-- @include oom
-- @include lease
local bb, e, owner, token, mode, chan = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
when_full_run(bb)
local now, us = clock()
local E = load(bb, e, {'l:' .. owner})
promote(E, now)
local L = check_lease(E, owner, token, now, us)
local result = 'released'
if not L then
  result = 'lost'
elseif mode == 'idle' and (L.jslot or startable(E.w, E.a, E.r, E.c, E.p + E.rl)) then
  result = 'busy'
else
  drop_lease(E, owner, false, now, us)
end
save(E, chan, now)
return result
