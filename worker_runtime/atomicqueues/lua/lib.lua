-- lib.lua: functions shared by every script; prepended to each script when it is loaded.
--
-- Layout (bb = bucket base "PREFIX:{TYPE:BUCKET}:", e = percent-encoded entity id):
--   entity  bb..'e:'..e..':wait'     ZSET jslot -> score (priority band, then FIFO sequence)
--           bb..'e:'..e..':delayed'  ZSET jslot -> due ms (not yet due; holds no slot)
--           bb..'e:'..e..':retry'    ZSET jslot -> due ms (waiting for a retry; holds a slot)
--           bb..'e:'..e..':run'      HASH owner -> jslot (the job each lease is running)
--           bb..'e:'..e..':leases'   HASH owner -> fencing token
--           bb..'e:'..e..':meta'     HASH seq, token
--           bb..'e:'..e..':done'     ZSET jslot -> finished us (completed, kept for retention)
--           bb..'e:'..e..':dlq'      ZSET jslot -> finished us (dead letters)
--           bb..'e:'..e..':bell'     LIST (at most one element: "a job may be claimable")
--   job     bb..'j:'..jslot          HASH (fields below)
--   index   bb..'pending'  HASH e -> jobs waiting        bb..'work'    ZSET e -> ms since it has work
--           bb..'ready'    ZSET e -> ms (claimable by a new lease holder)
--           bb..'leases'   ZSET owner..'|'..e -> lease expiry ms
--           bb..'delayed'  ZSET e -> next due ms        bb..'dead'    HASH e -> dead jobs
--           bb..'conc'     HASH e -> concurrency (absent: 1)
--           bb..'counts'   HASH state -> jobs           bb..'bell'    LIST (packed workers)
--           bb..'oom'      never written (see when_full_run below)
-- Job fields: id eid name payload state prio score made max backoff enq due start fin owner
--             token error result keep keepn keepf waiters
-- Times are the Redis server's (TIME), in milliseconds; one clock for every client. The done
-- and dlq lists order by microseconds, so jobs that ended within one millisecond keep their
-- order (equal scores would be ordered by job slot instead).

-- When Redis is out of memory (maxmemory reached, policy noeviction) it refuses a script's first
-- write command that may add memory (HSET, ZADD, ...), and lets every later one through so that
-- no script stops half-way; a refused script has changed nothing (RedisOutOfMemory). Which write
-- comes first therefore decides whether a script runs when memory is full, and each script says
-- it outright as its first write:
--   when_full_refuse  in what adds new work (enqueue): a ZADD XX on a key that never exists, a
--                     write that writes nothing but is refused, whatever path the script takes.
--   when_full_run     in what moves work already in Redis along (claim, finish, renew, release,
--                     sweep, cancel, dead letters, watch, locks): a DEL of that key, a write
--                     that never adds memory, so the rest runs even over maxmemory (a few bytes a
--                     job): a running job's lease, renewal and outcome never fail for memory.
-- This holds on Redis 6.2 and 7.x alike for scripts without flags, as ours are. (A `#!lua` line
-- would change it: on 7.x such a script is refused at its start unless flagged allow-oom, a
-- flag 6.2 cannot parse.)
local function when_full_refuse(base)
  redis.call('ZADD', base .. 'oom', 'XX', 0, '')
end

local function when_full_run(base)
  redis.call('DEL', base .. 'oom')
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function int(x)
  return string.format('%.0f', x)
end

-- Microseconds, formatted (a Lua number as a Redis argument keeps only 14 digits).
local function now_us()
  local t = redis.call('TIME')
  return int(tonumber(t[1]) * 1000000 + tonumber(t[2]))
end

local JOB_FIELDS = {'id', 'eid', 'name', 'payload', 'state', 'prio', 'made', 'max', 'backoff',
                    'enq', 'start', 'token', 'error', 'result', 'fin'}

local function ekey(bb, e, suffix)
  return bb .. 'e:' .. e .. ':' .. suffix
end

local function jkey(bb, jslot)
  return bb .. 'j:' .. jslot
end

local function count(bb, state, delta)
  redis.call('HINCRBY', bb .. 'counts', state, delta)
end

local function ring(list)
  if redis.call('LLEN', list) == 0 then
    redis.call('RPUSH', list, '1')
  end
end

local function concurrency(bb, e)
  return tonumber(redis.call('HGET', bb .. 'conc', e)) or 1
end

local function inflight(bb, e)
  return redis.call('HLEN', ekey(bb, e, 'run')) + redis.call('ZCARD', ekey(bb, e, 'retry'))
end

-- Bring the index in line with the entity's queues. Every script calls it after it changes an
-- entity, so the index is changed in the same atomic step as the queues and never drifts.
local function sync(bb, e, chan, now)
  local waiting = redis.call('ZCARD', ekey(bb, e, 'wait'))
  local busy = inflight(bb, e)
  local holders = redis.call('HLEN', ekey(bb, e, 'leases'))
  local conc = concurrency(bb, e)
  if waiting > 0 then
    redis.call('HSET', bb .. 'pending', e, waiting)
  else
    redis.call('HDEL', bb .. 'pending', e)
  end
  if waiting > 0 or busy > 0 then
    redis.call('ZADD', bb .. 'work', 'NX', now, e)
  else
    redis.call('ZREM', bb .. 'work', e)
  end
  if waiting > 0 and busy < conc then
    ring(ekey(bb, e, 'bell'))
  end
  if waiting > 0 and busy < conc and holders < conc then
    if redis.call('ZADD', bb .. 'ready', 'NX', now, e) == 1 then
      ring(bb .. 'bell')
      if chan ~= '' then
        redis.call('PUBLISH', chan, e)
      end
    end
  else
    redis.call('ZREM', bb .. 'ready', e)
  end
  local nxt = redis.call('ZRANGE', ekey(bb, e, 'delayed'), 0, 0, 'WITHSCORES')
  local nxr = redis.call('ZRANGE', ekey(bb, e, 'retry'), 0, 0, 'WITHSCORES')
  local due = nil
  if nxt[2] then due = tonumber(nxt[2]) end
  if nxr[2] and (due == nil or tonumber(nxr[2]) < due) then due = tonumber(nxr[2]) end
  if due then
    redis.call('ZADD', bb .. 'delayed', due, e)
  else
    redis.call('ZREM', bb .. 'delayed', e)
  end
  local dead = redis.call('ZCARD', ekey(bb, e, 'dlq'))
  if dead > 0 then
    redis.call('HSET', bb .. 'dead', e, dead)
  else
    redis.call('HDEL', bb .. 'dead', e)
  end
  if waiting == 0 and busy == 0 and holders == 0 and due == nil and dead == 0 then
    -- Fully idle: drop the per-entity bookkeeping. Tokens stay monotonic through the time floor
    -- in grant(); the FIFO sequence may restart because nothing is left to order against (a
    -- dead letter is: requeued, it goes back to its place by its score, so it keeps the meta).
    redis.call('DEL', ekey(bb, e, 'meta'), ekey(bb, e, 'bell'))
  end
  return due
end

-- Put a job (back) into the wait queue at the score it was given at enqueue: a job that returns
-- goes ahead of every job enqueued after it in its priority band (the head of the queue).
local function to_wait(bb, e, jslot)
  local jk = jkey(bb, jslot)
  local score = redis.call('HGET', jk, 'score')
  redis.call('ZADD', ekey(bb, e, 'wait'), score, jslot)
  redis.call('HSET', jk, 'state', 'waiting', 'owner', '', 'token', '')
  count(bb, 'waiting', 1)
end

-- The wait-queue score of a job joining now: higher priority first (2001 bands of 2^42
-- sequence numbers), FIFO within a priority.
local function next_score(bb, e, prio)
  local seq = redis.call('HINCRBY', ekey(bb, e, 'meta'), 'seq', 1)
  return int((1000 - prio) * 4398046511104 + seq)
end

-- Move due delayed jobs and due retries of one entity into its wait queue. A delayed job joins
-- the queue when it falls due (behind what is waiting then); a retry keeps its place (head).
local function promote(bb, e, now)
  local moved = 0
  for _, which in ipairs({'delayed', 'retry'}) do
    local zk = ekey(bb, e, which)
    local due = redis.call('ZRANGEBYSCORE', zk, '-inf', now, 'LIMIT', 0, 1000)
    for _, jslot in ipairs(due) do
      redis.call('ZREM', zk, jslot)
      if which == 'delayed' then
        local jk = jkey(bb, jslot)
        local prio = tonumber(redis.call('HGET', jk, 'prio')) or 0
        redis.call('HSET', jk, 'score', next_score(bb, e, prio))
      end
      count(bb, which == 'delayed' and 'delayed' or 'retrying', -1)
      to_wait(bb, e, jslot)
      moved = moved + 1
    end
  end
  return moved
end

-- Wake the callers blocked in result() on this job (one list element each).
local function notify_waiters(bb, jslot)
  local jk = jkey(bb, jslot)
  local waiters = tonumber(redis.call('HGET', jk, 'waiters')) or 0
  if waiters > 0 then
    local wl = bb .. 'jw:' .. jslot
    for _ = 1, waiters do redis.call('RPUSH', wl, '1') end
    redis.call('PEXPIRE', wl, 60000)
    redis.call('HSET', jk, 'waiters', 0)
  end
end

local function add_dead(bb, e, jslot, err, now)
  local jk = jkey(bb, jslot)
  redis.call('HSET', jk, 'state', 'dead', 'error', err, 'fin', now, 'owner', '')
  redis.call('ZADD', ekey(bb, e, 'dlq'), now_us(), jslot)
  count(bb, 'dead', 1)
  local keepf = tonumber(redis.call('HGET', jk, 'keepf')) or 0
  if keepf > 0 then
    redis.call('PEXPIRE', jk, keepf)
  end
  notify_waiters(bb, jslot)
end

-- Give up a lease. Its running job, if any, goes back to the head of the queue; a stalled job
-- (stalled = true) keeps the attempt it used and is dead-lettered once it has used them all.
local function drop_lease(bb, e, owner, stalled, now)
  local run = ekey(bb, e, 'run')
  local jslot = redis.call('HGET', run, owner)
  redis.call('HDEL', ekey(bb, e, 'leases'), owner)
  redis.call('ZREM', bb .. 'leases', owner .. '|' .. e)
  if not jslot then
    return 0
  end
  redis.call('HDEL', run, owner)
  count(bb, 'active', -1)
  local jk = jkey(bb, jslot)
  if stalled then
    local made = tonumber(redis.call('HGET', jk, 'made')) or 1
    local max = tonumber(redis.call('HGET', jk, 'max')) or 1
    local err = 'stalled: the lease of worker ' .. owner .. ' expired during attempt ' .. made
    if made >= max then
      add_dead(bb, e, jslot, err, now)
      return 1
    end
    redis.call('HSET', jk, 'error', err)
  else
    redis.call('HINCRBY', jk, 'made', -1)
  end
  to_wait(bb, e, jslot)
  return 1
end

-- Check that owner holds the lease on e under token and that it has not expired. An expired
-- lease is recovered on the spot (its job given back), so a late caller can never act on it.
local function check_lease(bb, e, owner, token, now)
  local cur = redis.call('HGET', ekey(bb, e, 'leases'), owner)
  if not cur or cur ~= token then
    return false
  end
  local exp = tonumber(redis.call('ZSCORE', bb .. 'leases', owner .. '|' .. e))
  if not exp or exp < now then
    drop_lease(bb, e, owner, true, now)
    return false
  end
  return true
end

local function grant(bb, e, owner)
  local meta = ekey(bb, e, 'meta')
  local last = tonumber(redis.call('HGET', meta, 'token')) or 0
  -- The time floor keeps tokens growing even if Redis restarts having lost its last writes.
  local t = redis.call('TIME')
  local floor = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local token = int(math.max(last + 1, floor))
  redis.call('HSET', meta, 'token', token)
  redis.call('HSET', ekey(bb, e, 'leases'), owner, token)
  return token
end

-- Start the head job of e under owner's lease (which the caller has checked or granted).
-- Returns the job's reply fields, or nil when nothing may start now.
local function start_next(bb, e, owner, token, ttl, now)
  redis.call('ZADD', bb .. 'leases', now + ttl, owner .. '|' .. e)
  if redis.call('HEXISTS', ekey(bb, e, 'run'), owner) == 1 then
    return nil
  end
  if inflight(bb, e) >= concurrency(bb, e) then
    return nil
  end
  local head = redis.call('ZPOPMIN', ekey(bb, e, 'wait'))
  if not head[1] then
    return nil
  end
  local jslot = head[1]
  local jk = jkey(bb, jslot)
  redis.call('HSET', ekey(bb, e, 'run'), owner, jslot)
  redis.call('HINCRBY', jk, 'made', 1)
  redis.call('HSET', jk, 'state', 'active', 'owner', owner, 'token', token, 'start', now)
  count(bb, 'waiting', -1)
  count(bb, 'active', 1)
  local reply = redis.call('HMGET', jk, unpack(JOB_FIELDS))
  table.insert(reply, 1, jslot)
  return reply
end

-- Grant owner a new lease on e if a job can start and a lease slot is free; start that job.
local function acquire_and_start(bb, e, owner, ttl, now)
  local conc = concurrency(bb, e)
  if redis.call('ZCARD', ekey(bb, e, 'wait')) == 0 or inflight(bb, e) >= conc then
    return nil, nil
  end
  if redis.call('HLEN', ekey(bb, e, 'leases')) >= conc then
    return nil, nil
  end
  local token = grant(bb, e, owner)
  return token, start_next(bb, e, owner, token, ttl, now)
end
