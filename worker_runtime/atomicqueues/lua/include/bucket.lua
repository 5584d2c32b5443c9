-- bucket: what packed workers do across the entities of one bucket.
-- @include job

-- Promote the due delayed jobs and retries of up to `limit` entities of the bucket (their
-- counts added to `tally`: entity.lua's save).
local function promote_due(bb, now, chan, limit, tally)
  local due = redis.call('ZRANGEBYSCORE', bb .. 'delayed', '-inf', now, 'LIMIT', 0, limit)
  for _, e in ipairs(due) do
    local E = load(bb, e)
    promote(E, now)
    save(E, chan, now, tally)
  end
  return #due
end

-- Take the oldest claimable entity of the bucket for owner and start its head job (counts
-- added to `tally`). Returns {e, token, jslot, <JOB_REPLY...>} or nil. Rings the bucket's bell
-- again when more may be claimable, for the next packed worker.
local function claim_first(bb, owner, ttl, now, us, chan, tally)
  local ready = redis.call('ZRANGE', bb .. 'ready', '0', '9')
  for i, e in ipairs(ready) do
    local E = load(bb, e, {'l:' .. owner})
    if not E['l:' .. owner] then  -- one lease per owner and entity
      local L, job = acquire(E, owner, ttl, now, us)
      save(E, chan, now, tally)
      if job then
        if i < #ready then ring(bb .. 'bell', true) end
        return {e, L.token, unpack(job)}
      end
    end
  end
  return nil
end
