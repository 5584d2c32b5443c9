-- keys: the key layout of the job scripts, documented here and nowhere else (keys.py builds
-- the bucket base and the names Python reads; tests/runtime/test_queue.py's check_index
-- recomputes the index from the entity keys).
--
-- bb = bucket base "PREFIX:{TYPE:BUCKET}:", e = percent-encoded entity id.
--
-- One entity:
--   ekey(bb, e, 'wait')     ZSET jslot -> score (priority band, then FIFO sequence)
--   ekey(bb, e, 'delayed')  ZSET jslot -> due ms (not yet due; holds no slot)
--   ekey(bb, e, 'retry')    ZSET jslot -> due ms (waiting for a retry; holds a slot)
--   ekey(bb, e, 'done')     ZSET jslot -> finished us (completed and cancelled jobs kept for
--                           retention)
--   ekey(bb, e, 'dlq')      ZSET jslot -> finished us (dead letters)
--   ekey(bb, e, 'bell')     LIST  rung when a job of the entity may start (entity-bound workers)
--   ekey(bb, e, 'starts')   LIST  start ms of its last jobs, newest first, while it has a rate
--                           limit (job.lua; expires after the limit's period)
--   ekey(bb, e, 'meta')     HASH  the entity's summary, read and written once per script
--                           (entity.lua): s its numbers, packed (waiting, active, retrying,
--                           lease holders, dead, concurrency, next due ms of a delayed job or
--                           retry, FIFO sequence, last fencing token granted, when the done
--                           list expires), ctl its controls: paused, rate-limited until,
--                           limits (entity.lua), 'l:'..owner a lease (lease.lua), 'n:'..jslot
--                           result() waiters.
--                           Deleted when the entity has nothing left (idle) and is not
--                           paused itself.
-- One job:
--   jkey(bb, jslot)         HASH  d "<enqueued ms> <header json>\n<payload json>" (written once,
--                           at enqueue; the header is what the client sends, jobs.py), s state
--                           (absent: waiting), m attempts made, t token and st start ms of the
--                           last attempt, sc wait score (while out of the queue), du due ms,
--                           er error (or why it was cancelled), r result, f finished ms,
--                           x why its cancellation was asked for while it ran (cancel.lua),
--                           pg progress (JSON) its handler last reported (progress.lua).
--   bb..'jw:'..jslot        LIST  one element per result() waiter once the job has ended
-- The bucket's index (what spans entities; changed only on an entity's transitions):
--   bb..'pending'  HASH e -> jobs waiting         bb..'work'    ZSET e -> ms since it has work
--   bb..'ready'    ZSET e -> ms (claimable by a new lease holder)
--   bb..'leases'   ZSET owner..'|'..e -> lease expiry ms (for the sweep)
--   bb..'delayed'  ZSET e -> next due ms         bb..'dead'    HASH e -> dead jobs
--   bb..'conc'     HASH e -> concurrency (absent: 1)
--   bb..'paused'   HASH e -> p of the paused entities with a summary
--   bb..'caps'     HASH e -> the entity's own max backlog (limit.lua)
--   bb..'rates'    HASH e -> the starts per period of the entity's own rate limit (limit.lua)
--   bb..'limited'  ZSET e -> until when (ms) its rate limit lets no job start
--   bb..'defaults' HASH p 2 while the entity type is paused, mb its max backlog, rn rp its
--                  rate limit: what its entities' summaries carry (take_type_defaults)
--   bb..'counts'   HASH delayed active retrying dead -> jobs; completed, cancelled -> every
--                  completion, every cancellation of a running job
--                  (waiting is the sum of pending)
--   bb..'bell'     LIST rung when an entity of the bucket becomes claimable (packed workers)
--   bb..'oom'      never written (oom.lua)
-- The bucket's schedules (schedules.py; each lives in the bucket of the entity its jobs go to,
-- so firing one enqueues its job in the same script):
--   bb..'sched'       ZSET name -> next fire ms
--   skey(bb, name)    HASH  sid (a new random id on every add: a ticker's read of an older
--                     schedule of the same name fires nothing), def (the definition, json:
--                     schedules.py), n jobs fired, last the tick (ms) of the last one
-- Outside the buckets (keys.py), without a hash tag: PREFIX:schedules:TYPE, a HASH
-- name -> entity id (where each schedule of the type lives), and PREFIX:schedules-changed, a
-- HASH type -> a counter bumped on every add and remove (tickers read it to learn of changes).
local function ekey(bb, e, suffix)
  return bb .. 'e:' .. e .. ':' .. suffix
end

local function jkey(bb, jslot)
  return bb .. 'j:' .. jslot
end

local function skey(bb, name)
  return bb .. 's:' .. name
end

-- Ring a doorbell: a list of (at most) one element that wakes one blocked BLPOP. `busy` says
-- which is likelier: that it still holds a ring not heard yet (a bucket's bell under load: then
-- it costs one LLEN), or that it is empty (an entity's: one RPUSH).
local function ring(list, busy)
  if busy then
    if redis.call('LLEN', list) == 0 then redis.call('RPUSH', list, '1') end
  elseif redis.call('RPUSH', list, '1') > 1 then
    redis.call('LTRIM', list, '0', '0')
  end
end
