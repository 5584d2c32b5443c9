-- enqueue: adding a job to its entity's queue, the one way every script does it (enqueue.lua,
-- schedule_fire.lua).
-- @include queue

-- The entities a script changes, each loaded once and saved once at its end.
local function batch()
  return {entities = {}, order = {}}
end

-- Add job jslot of entity e of bucket bb unless a job with that slot exists (idempotent).
-- header (json, jobs.py) and payload are written once; delay_ms > 0 makes it a delayed job.
-- Returns 1 and its state when added, 0 and the state of the job already there.
local function add_job(B, bb, e, jslot, prio, delay, header, payload, now)
  local jk = jkey(bb, jslot)
  if redis.call('HSETNX', jk, 'd', int(now) .. ' ' .. header .. '\n' .. payload) == 0 then
    return 0, redis.call('HGET', jk, 's') or 'waiting'
  end
  local E = B.entities[e]
  if not E then
    E = load(bb, e)
    B.entities[e] = E
    table.insert(B.order, E)
    promote(E, now)  -- a delayed job that fell due goes ahead of this one
  end
  if delay > 0 then
    redis.call('HSET', jk, 's', 'delayed', 'du', now + delay)
    redis.call('ZADD', ekey(bb, e, 'delayed'), now + delay, jslot)
    count(E, 'delayed', 1)
    if E.due == nil or now + delay < E.due then E.due = now + delay end
    return 1, 'delayed'
  end
  redis.call('ZADD', ekey(bb, e, 'wait'), next_score(E, prio), jslot)
  E.w = E.w + 1
  return 1, 'waiting'
end

-- Save every entity the batch changed (and the bucket's index with them).
local function save_batch(B, chan, now)
  for _, E in ipairs(B.order) do save(E, chan, now) end
end
