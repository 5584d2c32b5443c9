-- queue: an entity's wait queue, its delayed jobs and its retries.
-- @include entity

-- The wait-queue score of a job joining now: higher priority first (2001 bands of 2^42
-- sequence numbers), FIFO within a priority.
local function next_score(E, prio)
  E.seq = E.seq + 1
  return int((1000 - prio) * 4398046511104 + E.seq)
end

-- Put a job (back) into the wait queue at `score`: a job that returns keeps the score it was
-- given when it joined, so it goes ahead of every job that joined after it in its band.
local function to_wait(E, jslot, score)
  redis.call('ZADD', ekey(E.bb, E.e, 'wait'), score, jslot)
  redis.call('HSET', jkey(E.bb, jslot), 's', 'waiting')
  E.w = E.w + 1
end

-- The next due time of the entity's delayed jobs and retries, and of its rate limit (E.rl)
-- (after one of them changed).
local function refresh_due(E)
  local due = E.rl > 0 and E.rl or nil
  for _, which in ipairs({'delayed', 'retry'}) do
    local first = redis.call('ZRANGE', ekey(E.bb, E.e, which), 0, 0, 'WITHSCORES')
    if first[2] and (due == nil or tonumber(first[2]) < due) then due = tonumber(first[2]) end
  end
  E.due = due
end

-- A job's header (jobs.py: [id, eid, name, prio, max, backoff, keep_ms, keep_n,
-- keep_failed_ms, timeout, trace]) from its d field ("<enqueued ms> <header>\n<payload>").
local function header_of(d)
  local sp, nl = string.find(d, ' ', 1, true), string.find(d, '\n', 1, true)
  return cjson.decode(string.sub(d, sp + 1, nl - 1))
end

local function header(jk)
  return header_of(redis.call('HGET', jk, 'd'))
end

-- The encoded id (keys.py's encode_id) of the entity a job belongs to, from its d field.
local function entity_of(d)
  return (string.gsub(header_of(d)[2], '[%%{}:]', function(c)
    return string.format('%%%02X', string.byte(c))
  end))
end

-- Move the entity's due delayed jobs and due retries into its wait queue (only when the
-- summary says one is due). A delayed job joins behind what is waiting then; a retry keeps
-- its place (the head).
local function promote(E, now)
  if E.due == nil or E.due > now then return end
  if E.rl > 0 and E.rl <= now then E.rl = 0 end  -- the rate limit lets a job start again
  for _, which in ipairs({'delayed', 'retry'}) do
    local zk = ekey(E.bb, E.e, which)
    for _, jslot in ipairs(redis.call('ZRANGEBYSCORE', zk, '-inf', now, 'LIMIT', 0, 1000)) do
      redis.call('ZREM', zk, jslot)
      local jk = jkey(E.bb, jslot)
      if which == 'delayed' then
        count(E, 'delayed', -1)
        to_wait(E, jslot, next_score(E, header(jk)[4]))
      else
        count(E, 'retrying', -1)
        E.r = E.r - 1
        to_wait(E, jslot, redis.call('HGET', jk, 'sc'))
      end
    end
  end
  refresh_due(E)
end

-- Wake the callers blocked in result() on this job (one list element each). Their number is
-- the entity's meta field 'n:'..jslot, loaded by the script or read here.
local function notify_waiters(E, jslot)
  local f = 'n:' .. jslot
  local n
  if E[f] ~= nil then  -- loaded (false: absent)
    n = tonumber(E[f]) or 0
    E[f] = false
  else
    n = tonumber(redis.call('HGET', ekey(E.bb, E.e, 'meta'), f)) or 0
    if n > 0 then redis.call('HDEL', ekey(E.bb, E.e, 'meta'), f) end
  end
  if n > 0 then
    local wl = E.bb .. 'jw:' .. jslot
    for _ = 1, n do redis.call('RPUSH', wl, '1') end
    redis.call('PEXPIRE', wl, 60000)
  end
end

local function add_dead(E, jslot, err, now, us)
  local jk = jkey(E.bb, jslot)
  redis.call('HSET', jk, 's', 'dead', 'er', err, 'f', now)
  redis.call('ZADD', ekey(E.bb, E.e, 'dlq'), us, jslot)
  E.x = E.x + 1
  count(E, 'dead', 1)
  local keepf = tonumber(header(jk)[9]) or 0
  if keepf > 0 then redis.call('PEXPIRE', jk, keepf) end
  notify_waiters(E, jslot)
end

-- A job that ended without failing: 'completed' (value: its result) or 'cancelled' (value:
-- why). It is kept keep_ms in the entity's done list, which holds at most about keep_n of
-- them; score is the job's wait score (its FIFO sequence paces the trimming).
local function add_done(E, jslot, state, value, score, keep_ms, keep_n, now, us)
  local jk = jkey(E.bb, jslot)
  count(E, state, 1)
  notify_waiters(E, jslot)
  if keep_ms == 0 or keep_n == 0 then
    redis.call('DEL', jk)
    return
  end
  redis.call('HSET', jk, 's', state, state == 'completed' and 'r' or 'er', value, 'f', int(now))
  redis.call('PEXPIRE', jk, int(keep_ms))
  local done = ekey(E.bb, E.e, 'done')
  redis.call('ZADD', done, us, jslot)
  -- The done list's expiry is pushed back when less than half of this job's retention is
  -- left of it (a done list that expires before its jobs only stops the count cap for
  -- them). It is trimmed on every 16th job of the entity (by FIFO sequence) and when the
  -- cap is small: it holds at most 16 more than keep_n, and its jobs expire on their own.
  if E.dx < now + keep_ms / 2 then
    redis.call('PEXPIRE', done, int(keep_ms))
    E.dx = now + keep_ms
  end
  if tonumber(score) % 16 == 0 or keep_n < 16 then
    redis.call('ZREMRANGEBYSCORE', done, '-inf', int(tonumber(us) - keep_ms * 1000))
    local extra = redis.call('ZCARD', done) - keep_n
    if extra > 0 then
      local popped = redis.call('ZPOPMIN', done, extra)
      for i = 1, #popped, 2 do redis.call('DEL', jkey(E.bb, popped[i])) end
    end
  end
end
