-- schedule_fire: fire due schedules of one bucket. For each, in one step: enqueue its job (as
-- enqueue.lua does) and move its next fire time on, only if the schedule is still the one the
-- caller read (same sid) and still due at the time the caller read (compare-and-set): of any
-- number of tickers that read the same tick, one fires it and the others change nothing.
-- KEYS[1] bucket base
-- ARGV  channel, then 10 per schedule: name, sid, due ms (as read), next fire ms (computed by
--       the caller from the definition, later than due), then its job's enqueue arguments
--       (enqueue.lua): e, jslot, prio, delay_ms, header, payload
-- Returns {next, due...}: the bucket's earliest next fire time in ms ('' when it has no
-- schedule left), then the due time of each schedule that fired (its job added). A tick whose
-- entity's max backlog is reached adds nothing and is passed over like one already fired.
-- When Redis is out of memory the first job's write is refused, so nothing fires (oom.lua).
-- @include enqueue
local bb, chan = KEYS[1], ARGV[1]
local sched = bb .. 'sched'
local now = clock()
local B, fired = batch(), {}
for i = 2, #ARGV, 10 do
  local name, due = ARGV[i], ARGV[i + 2]
  local sk = skey(bb, name)
  local score = redis.call('ZSCORE', sched, name)
  if score and tonumber(score) == tonumber(due) and redis.call('HGET', sk, 'sid') == ARGV[i + 1]
  then
    local added = add_job(B, bb, ARGV[i + 4], ARGV[i + 5], tonumber(ARGV[i + 6]),
      tonumber(ARGV[i + 7]), ARGV[i + 8], ARGV[i + 9], now)
    redis.call('ZADD', sched, ARGV[i + 3], name)
    if added == 1 then
      redis.call('HINCRBY', sk, 'n', 1)
      redis.call('HSET', sk, 'last', due)
      table.insert(fired, due)
    end
  end
end
save_batch(B, chan, now)
local first = redis.call('ZRANGE', sched, 0, 0, 'WITHSCORES')
table.insert(fired, 1, first[2] or '')
return fired
