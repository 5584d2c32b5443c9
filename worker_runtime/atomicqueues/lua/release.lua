-- release: a worker gives up its lease on an entity.
-- KEYS[1] bucket base
-- ARGV  e, owner, token, mode, channel
--   mode 'idle': only when no job of the entity may start now (checked atomically, so a job
--                enqueued at that instant is never stranded); the lease is kept otherwise.
--   mode 'shutdown': always; a running job goes back to the head of the queue at once and the
--                attempt it used is given back.
-- Returns 'released', 'busy' (idle mode, work is there: lease kept) or 'lost'.
local bb, e, owner, token, mode, chan = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
when_full_run(bb)
local now = now_ms()
promote(bb, e, now)
if not check_lease(bb, e, owner, token, now) then
  sync(bb, e, chan, now)
  return 'lost'
end
if mode == 'idle' then
  local waiting = redis.call('ZCARD', ekey(bb, e, 'wait'))
  local running = redis.call('HEXISTS', ekey(bb, e, 'run'), owner)
  if running == 1 or (waiting > 0 and inflight(bb, e) < concurrency(bb, e)) then
    sync(bb, e, chan, now)  -- promote() above may have moved jobs into the wait queue
    return 'busy'
  end
end
drop_lease(bb, e, owner, false, now)
sync(bb, e, chan, now)
return 'released'
