-- claim: a worker bound to one entity takes its next job, acquiring a lease when it has none.
-- KEYS[1] bucket base
-- ARGV  e, owner, token ('' when the worker holds no lease), lease_ttl_ms, channel
-- Returns {'job', token, jslot, <JOB_FIELDS...>}
--      or {'idle', token or '', next_due_ms or ''}  (nothing may start now)
--      or {'lost'}                                  (the presented lease is gone)
local bb, e, owner, token, ttl = KEYS[1], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
when_full_run(bb)
local now = now_ms()
promote(bb, e, now)
local job = nil
if token ~= '' then
  if not check_lease(bb, e, owner, token, now) then
    sync(bb, e, ARGV[5], now)
    return {'lost'}
  end
  job = start_next(bb, e, owner, token, ttl, now)
else
  token, job = acquire_and_start(bb, e, owner, ttl, now)
end
local due = sync(bb, e, ARGV[5], now)
if job then
  return {'job', token, unpack(job)}
end
return {'idle', token or '', due and int(due) or ''}
