-- job: starting and ending jobs.
-- @include lease

-- The fields of a job in a script's reply, in this order (jobs.py's REPLY_FIELDS; a test
-- checks they are the same).
local JOB_REPLY = {'d', 's', 'm', 't', 'st', 'er', 'r', 'f'}

-- Whether the entity's rate limit (its own, else its type's: at most n starts in any period
-- ms, kept as the times of its last n starts, newest first, in ekey(bb, e, 'starts')) lets a
-- job start now. When it does not, the entity is held until it will (E.rl, also a due time:
-- the sweep, or the worker bound to it, comes back then).
local function rate_allows(E, now)
  local n, period = E.rn, E.rp
  if n == 0 then n, period = E.trn, E.trp end
  if n == 0 then return true end
  E.rate = {n, period}
  local starts = ekey(E.bb, E.e, 'starts')
  if redis.call('LLEN', starts) < n then return true end
  local at = tonumber(redis.call('LINDEX', starts, n - 1)) + period
  if at <= now then return true end
  E.rl = at
  if E.due == nil or at < E.due then E.due = at end
  return false
end

-- Count a job's start against the rate limit rate_allows found.
local function rate_take(E, now)
  if not E.rate then return end
  local starts = ekey(E.bb, E.e, 'starts')
  redis.call('LPUSH', starts, int(now))
  redis.call('LTRIM', starts, 0, E.rate[1] - 1)
  redis.call('PEXPIRE', starts, E.rate[2])
end

-- Start the head job of the entity under lease L of owner (checked or just granted) when a
-- slot is free and its rate limit lets it; `head` is the head (ZPOPMIN's reply) when the
-- caller popped it already (having checked both). Returns the job's reply
-- {jslot, <JOB_REPLY...>}, or nil.
local function start_next(E, owner, L, now, head)
  if not head then
    if L.jslot or not startable(E.w, E.a, E.r, E.c, E.p + E.rl) then return nil end
    if not rate_allows(E, now) then return nil end
    head = redis.call('ZPOPMIN', ekey(E.bb, E.e, 'wait'))
  end
  rate_take(E, now)
  if not head[1] then return nil end
  local jslot = head[1]
  local jk = jkey(E.bb, jslot)
  local f = redis.call('HMGET', jk, unpack(JOB_REPLY))
  local made = (tonumber(f[3]) or 0) + 1
  redis.call('HSET', jk, 's', 'active', 'm', int(made), 't', L.token, 'st', int(now))
  f[2], f[3], f[4], f[5] = 'active', made, L.token, now
  E.w, E.a = E.w - 1, E.a + 1
  count(E, 'active', 1)
  L.score, L.jslot = head[2], jslot
  set_lease(E, owner, L)
  table.insert(f, 1, jslot)
  return f
end

-- Grant owner a new lease on the entity if a job can start and a lease slot is free, and
-- start that job. Returns the lease and the job's reply, or nil.
local function acquire(E, owner, ttl, now, us)
  if not claimable(E.w, E.a, E.r, E.h, E.c, E.p + E.rl) or not rate_allows(E, now) then
    return nil
  end
  local L = grant(E, owner, ttl, now, us)
  return L, start_next(E, owner, L, now)
end

-- End the job lease L runs: 'completed' (value: the result), 'cancelled' (value: why), 'retry'
-- (value: the error; due at `due`) or 'dead' (value: the error). keep_ms and keep_n: the
-- job's retention.
local function end_job(E, owner, L, outcome, value, due, keep_ms, keep_n, now, us)
  local jslot = L.jslot
  local jk = jkey(E.bb, jslot)
  E.a = E.a - 1
  count(E, 'active', -1)
  if outcome ~= 'completed' then
    -- A job whose cancellation was asked for while it ran ends so, with the reason given,
    -- also when its attempt failed at the same moment: it is never retried.
    local why = redis.call('HGET', jk, 'x')
    if why then outcome, value = 'cancelled', why end
  end
  if outcome == 'completed' or outcome == 'cancelled' then
    add_done(E, jslot, outcome, value, L.score, keep_ms, keep_n, now, us)
  elseif outcome == 'retry' then
    redis.call('HSET', jk, 's', 'retrying', 'er', value, 'du', due, 'sc', L.score)
    redis.call('ZADD', ekey(E.bb, E.e, 'retry'), due, jslot)
    E.r = E.r + 1
    count(E, 'retrying', 1)
    if E.due == nil or due < E.due then E.due = due end
  else
    redis.call('HSET', jk, 'sc', L.score)
    add_dead(E, jslot, value, now, us)
  end
  L.jslot, L.score = nil, nil
  set_lease(E, owner, L)
end
