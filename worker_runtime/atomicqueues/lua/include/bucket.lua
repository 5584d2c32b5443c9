-- bucket: what packed workers do across the entities of one bucket.
-- @include job

-- Promote the due delayed jobs and retries of up to `limit` entities of the bucket.
local function promote_due(bb, now, chan, limit)
  local due = redis.call('ZRANGEBYSCORE', bb .. 'delayed', '-inf', now, 'LIMIT', 0, limit)
  for _, e in ipairs(due) do
    local E = load(bb, e)
    promote(E, now)
    save(E, chan, now)
  end
  return #due
end

-- Take the oldest claimable entity of the bucket for owner and start its head job. Returns
-- {e, token, jslot, <JOB_REPLY...>} or nil. Rings the bucket's bell again when more may be
-- claimable, for the next packed worker.
local function claim_first(bb, owner, ttl, now, us, chan)
  local ready = redis.call('ZRANGE', bb .. 'ready', 0, 9)
  for i, e in ipairs(ready) do
    local E = load(bb, e, {'l:' .. owner})
    if not E['l:' .. owner] then  -- one lease per owner and entity
      local L, job = acquire(E, owner, ttl, now, us)
      save(E, chan, now)
      if job then
        if i < #ready then ring(bb .. 'bell') end
        return {e, L.token, unpack(job)}
      end
    end
  end
  return nil
end
