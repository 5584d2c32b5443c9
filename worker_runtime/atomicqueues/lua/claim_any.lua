-- claim_any: a packed worker takes the oldest claimable entity of one bucket and its head job.
-- KEYS[1] bucket base
-- ARGV  owner, lease_ttl_ms, channel
-- Returns {'job', e, token, jslot, <JOB_FIELDS...>} or {'none'}.
local bb, owner, ttl, chan = KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3]
when_full_run(bb)
local now = now_ms()
for _, e in ipairs(redis.call('ZRANGEBYSCORE', bb .. 'delayed', '-inf', now, 'LIMIT', 0, 20)) do
  promote(bb, e, now)
  sync(bb, e, chan, now)
end
for _, e in ipairs(redis.call('ZRANGE', bb .. 'ready', 0, 9)) do
  if redis.call('HEXISTS', ekey(bb, e, 'leases'), owner) == 0 then
    local token, job = acquire_and_start(bb, e, owner, ttl, now)
    sync(bb, e, chan, now)
    if job then
      if redis.call('ZCARD', bb .. 'ready') > 0 then
        ring(bb .. 'bell')
      end
      return {'job', e, token, unpack(job)}
    end
  end
end
return {'none'}
