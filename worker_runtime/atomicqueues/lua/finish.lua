-- finish: end the job a lease is running (completed, retry later, or dead) and, in the same
-- round trip, start the entity's next job under the same lease.
-- KEYS[1] bucket base
-- ARGV  e, owner, token, jslot, outcome ('completed'|'retry'|'dead'), value (result json or
--       error text), retry_delay_ms, claim_next ('1'|'0'), lease_ttl_ms, channel
-- Returns {'ok', ''} / {'ok', 'job', jslot, <JOB_FIELDS...>} (next job started), or {'lost'}
-- when the lease is no longer this worker's: then nothing was changed by this call.
local bb, e, owner, token, jslot = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local outcome, value, chan = ARGV[5], ARGV[6], ARGV[10]
local ttl = tonumber(ARGV[9])
when_full_run(bb)
local now = now_ms()
if not check_lease(bb, e, owner, token, now) or
    redis.call('HGET', ekey(bb, e, 'run'), owner) ~= jslot then
  sync(bb, e, chan, now)
  return {'lost'}
end
redis.call('HDEL', ekey(bb, e, 'run'), owner)
count(bb, 'active', -1)
local jk = jkey(bb, jslot)
if outcome == 'completed' then
  redis.call('HSET', jk, 'state', 'completed', 'result', value, 'fin', now, 'owner', '')
  count(bb, 'completed', 1)
  notify_waiters(bb, jslot)
  local keep = tonumber(redis.call('HGET', jk, 'keep')) or 0
  local keepn = tonumber(redis.call('HGET', jk, 'keepn')) or 0
  local done = ekey(bb, e, 'done')
  if keep == 0 or keepn == 0 then
    redis.call('DEL', jk)
  else
    redis.call('PEXPIRE', jk, keep)
    local us = now_us()  -- the cap below drops the oldest, also within one millisecond
    redis.call('ZADD', done, us, jslot)
    redis.call('ZREMRANGEBYSCORE', done, '-inf', int(tonumber(us) - keep * 1000))
    local extra = redis.call('ZCARD', done) - keepn
    if extra > 0 then
      local popped = redis.call('ZPOPMIN', done, extra)
      for i = 1, #popped, 2 do redis.call('DEL', jkey(bb, popped[i])) end
    end
    redis.call('PEXPIRE', done, keep)
  end
elseif outcome == 'retry' then
  local due = now + tonumber(ARGV[7])
  redis.call('HSET', jk, 'state', 'retrying', 'error', value, 'due', due, 'owner', '')
  redis.call('ZADD', ekey(bb, e, 'retry'), due, jslot)
  count(bb, 'retrying', 1)
else
  add_dead(bb, e, jslot, value, now)
end
local job = nil
if ARGV[8] == '1' then
  promote(bb, e, now)
  job = start_next(bb, e, owner, token, ttl, now)
else
  redis.call('ZADD', bb .. 'leases', now + ttl, owner .. '|' .. e)
end
local due = sync(bb, e, chan, now)
if job then
  return {'ok', 'job', unpack(job)}
end
return {'ok', due and int(due) or ''}
