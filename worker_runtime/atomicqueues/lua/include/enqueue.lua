-- enqueue: adding a job to its entity's queue, the one way every script does it (enqueue.lua,
-- schedule_fire.lua).
-- @include queue
-- @include defaults

-- The entities a script changes, each loaded once and saved once at its end.
local function batch()
  return {entities = {}, order = {}}
end

-- Add job jslot of entity e of bucket bb unless a job with that slot exists (idempotent).
-- header (json, jobs.py) and payload are written once; delay_ms > 0 makes it a delayed job.
-- Returns 1 and its state when added, 0 and the state of the job already there, or 2 and
-- 'full' when its entity's max backlog is reached (limit.lua): then nothing is written.
local function add_job(B, bb, e, jslot, prio, delay, header, payload, now)
  local jk = jkey(bb, jslot)
  local E = B.entities[e]
  if not E then  -- read once (with its type's settings when it is new)
    E = load(bb, e)
    take_type_defaults(E)
    B.entities[e] = E
  end
  -- Its max backlog (its own, else its type's): its waiting and delayed jobs, counted once and
  -- then kept up to date (E.backlog).
  local cap = E.mb > 0 and E.mb or E.tmb
  if cap > 0 then
    if not E.backlog then E.backlog = E.w + redis.call('ZCARD', ekey(bb, e, 'delayed')) end
    if E.backlog >= cap and redis.call('HEXISTS', jk, 'd') == 0 then return 2, 'full' end
  end
  if redis.call('HSETNX', jk, 'd', int(now) .. ' ' .. header .. '\n' .. payload) == 0 then
    return 0, redis.call('HGET', jk, 's') or 'waiting'
  end
  if not E.listed then
    E.listed = true
    table.insert(B.order, E)
    promote(E, now)  -- a delayed job that fell due goes ahead of this one
  end
  if E.backlog then E.backlog = E.backlog + 1 end
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

-- Save every entity the batch changed (and the bucket's index and counts with them).
local function save_batch(B, chan, now)
  local tally = {}
  for _, E in ipairs(B.order) do save(E, chan, now, tally) end
  if B.order[1] then write_counts(B.order[1].bb, tally) end
end
