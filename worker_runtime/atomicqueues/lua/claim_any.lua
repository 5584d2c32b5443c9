-- claim_any: a packed worker takes the oldest claimable entity of one bucket and its head job.
-- KEYS[1] bucket base
-- ARGV  owner, lease_ttl_ms, channel
-- Returns {'job', e, token, jslot, <JOB_REPLY...>} or {'none'}.
-- @flags allow-oom
-- @include oom
-- @include bucket
local bb, owner, ttl, chan = KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3]
when_full_run(bb)
local now, us = clock()
local tally = {}
promote_due(bb, now, chan, 20, tally)
local got = claim_first(bb, owner, ttl, now, us, chan, tally)
write_counts(bb, tally)
if got then
  return {'job', unpack(got)}
end
return {'none'}
