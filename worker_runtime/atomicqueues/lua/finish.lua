-- finish: end the job a lease is running (completed, cancelled, retry later, or dead) and, in
-- the same round trip, start the next job: the entity's, or (mode 'any', packed workers) when
-- the entity has none, the oldest claimable entity's of the same bucket, under a new lease, the
-- old one released; mode 'release' releases the lease when the entity has none and takes
-- nothing.
-- KEYS[1] bucket base
-- ARGV  e, owner, token, jslot, outcome ('completed'|'cancelled'|'retry'|'dead'), value (result
--       json, or why it was cancelled, or error text), retry_delay_ms, next
--       ('none'|'same'|'any'|'release'), lease_ttl_ms, channel, keep_ms, keep_n (the job's
--       retention, from its header)
-- Returns {'ok', ''} or {'ok', next_due_ms}  (nothing started; the lease is kept in modes
--       'none' and 'same')
--      or {'ok', 'job', jslot, <JOB_REPLY...>}  (the entity's next job started, same lease)
--      or {'ok', 'other', e, token, jslot, <JOB_REPLY...>}  (lease released, another taken)
--      or {'lost'} when the lease is no longer this worker's: then nothing was changed.
-- The same call made again after its first reply was lost answers what the first one did
-- (unless that one handed the lease over: then 'lost'), and changes nothing.
-- @flags allow-oom
-- @include oom
-- @include bucket
local bb, e, owner, token, jslot = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local outcome, value, nxt, ttl, chan = ARGV[5], ARGV[6], ARGV[8], tonumber(ARGV[9]), ARGV[10]
local now, us = clock()
local E = load(bb, e, {'l:' .. owner, 'n:' .. jslot})
local L = lease_of(E, owner)
if L and L.token == token and L.exp >= now and L.jslot ~= jslot and
    redis.call('HGET', jkey(bb, jslot), 't') == token then
  -- The same call again (a worker sends it again when its reply was lost): the job ended in
  -- the first one, under this lease. Answer as that call did; change nothing.
  if L.jslot then
    local f = redis.call('HMGET', jkey(bb, L.jslot), unpack(JOB_REPLY))
    return {'ok', 'job', L.jslot, unpack(f)}
  end
  return {'ok', E.due and int(E.due) or ''}
end
if not L or L.token ~= token or L.exp < now or L.jslot ~= jslot then
  when_full_run(bb)
  check_lease(E, owner, token, now, us)  -- recovers the lease if it expired
  save(E, chan, now)
  return {'lost'}
end
local head = nil
if nxt ~= 'none' and outcome ~= 'retry' and startable(E.w, E.a - 1, E.r, E.c, E.p + E.rl) and
    not (E.due and E.due <= now) and rate_allows(E, now) then
  -- The next job is the head of the queue: popped first, a write that frees memory (oom.lua).
  head = redis.call('ZPOPMIN', ekey(bb, e, 'wait'))
else
  when_full_run(bb)
end
end_job(E, owner, L, outcome, value, now + tonumber(ARGV[7]), tonumber(ARGV[11]),
  tonumber(ARGV[12]), now, us)
local job = nil
if head then
  job = start_next(E, owner, L, now, head)
elseif nxt ~= 'none' then
  promote(E, now)
  job = start_next(E, owner, L, now)
end
if job or nxt == 'none' or nxt == 'same' then
  save(E, chan, now)
  if job then return {'ok', 'job', unpack(job)} end
  return {'ok', E.due and int(E.due) or ''}
end
drop_lease(E, owner, false, now, us)
local tally = {}
save(E, chan, now, tally)
local other = nxt == 'any' and claim_first(bb, owner, ttl, now, us, chan, tally)
write_counts(bb, tally)
if other then
  return {'ok', 'other', unpack(other)}
end
return {'ok', ''}
