-- claim: a worker bound to one entity takes its next job, acquiring a lease when it has none.
-- KEYS[1] bucket base
-- ARGV  e, owner, token ('' when the worker holds no lease), lease_ttl_ms, channel
-- Returns {'job', token, jslot, <JOB_REPLY...>}
--      or {'idle', token or '', next_due_ms or ''}  (nothing may start now)
--      or {'lost'}                                  (the presented lease is gone)
-- @flags allow-oom
-- @include oom
-- @include job
local bb, e, owner, token, ttl, chan = KEYS[1], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]),
  ARGV[5]
when_full_run(bb)
local now, us = clock()
local E = load(bb, e, {'l:' .. owner})
promote(E, now)
local L, job = nil, nil
if token ~= '' then
  L = check_lease(E, owner, token, now, us)
  if not L then
    save(E, chan, now)
    return {'lost'}
  end
  extend(E, owner, L, now + ttl)
  job = start_next(E, owner, L, now)
else
  L, job = acquire(E, owner, ttl, now, us)
end
save(E, chan, now)
if job then
  return {'job', L.token, unpack(job)}
end
return {'idle', L and L.token or '', E.due and int(E.due) or ''}
