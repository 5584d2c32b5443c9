-- job: starting and ending jobs.
-- @include lease

-- The fields of a job in a script's reply, in this order (jobs.py's REPLY_FIELDS; a test
-- checks they are the same).
local JOB_REPLY = {'d', 's', 'm', 't', 'st', 'er', 'r', 'f'}

-- Start the head job of the entity under lease L of owner (checked or just granted) when a
-- slot is free; `head` is the head (ZPOPMIN's reply) when the caller popped it already.
-- Returns the job's reply {jslot, <JOB_REPLY...>}, or nil.
local function start_next(E, owner, L, now, head)
  if not head then
    if L.jslot or E.a + E.r >= E.c or E.w == 0 then return nil end
    head = redis.call('ZPOPMIN', ekey(E.bb, E.e, 'wait'))
  end
  if not head[1] then return nil end
  local jslot = head[1]
  local jk = jkey(E.bb, jslot)
  local f = redis.call('HMGET', jk, unpack(JOB_REPLY))
  local made = (tonumber(f[3]) or 0) + 1
  redis.call('HSET', jk, 's', 'active', 'm', made, 't', L.token, 'st', now)
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
  if not claimable(E.w, E.a, E.r, E.h, E.c) then return nil end
  local L = grant(E, owner, ttl, now, us)
  return L, start_next(E, owner, L, now)
end

-- End the job lease L runs: 'completed' (value: the result), 'retry' (value: the error; due
-- at `due`) or 'dead' (value: the error). keep_ms and keep_n: the job's retention.
local function end_job(E, owner, L, outcome, value, due, keep_ms, keep_n, now, us)
  local jslot = L.jslot
  local jk = jkey(E.bb, jslot)
  E.a = E.a - 1
  count(E, 'active', -1)
  if outcome == 'completed' then
    count(E, 'completed', 1)
    notify_waiters(E, jslot)
    if keep_ms == 0 or keep_n == 0 then
      redis.call('DEL', jk)
    else
      redis.call('HSET', jk, 's', 'completed', 'r', value, 'f', now)
      redis.call('PEXPIRE', jk, keep_ms)
      local done = ekey(E.bb, E.e, 'done')
      redis.call('ZADD', done, us, jslot)
      -- The done list's expiry is pushed back when less than half of this job's retention is
      -- left of it (a done list that expires before its jobs only stops the count cap for
      -- them). It is trimmed on every 16th job of the entity (by FIFO sequence) and when the
      -- cap is small: it holds at most 16 more than keep_n, and its jobs expire on their own.
      if E.dx < now + keep_ms / 2 then
        redis.call('PEXPIRE', done, keep_ms)
        E.dx = now + keep_ms
      end
      if tonumber(L.score) % 16 == 0 or keep_n < 16 then
        redis.call('ZREMRANGEBYSCORE', done, '-inf', int(tonumber(us) - keep_ms * 1000))
        local extra = redis.call('ZCARD', done) - keep_n
        if extra > 0 then
          local popped = redis.call('ZPOPMIN', done, extra)
          for i = 1, #popped, 2 do redis.call('DEL', jkey(E.bb, popped[i])) end
        end
      end
    end
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
