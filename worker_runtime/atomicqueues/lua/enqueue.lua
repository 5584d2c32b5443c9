-- enqueue: add jobs to the queues of entities of one bucket (idempotent per job slot).
-- KEYS[1] bucket base
-- ARGV  channel, then 6 per job: e, jslot, prio, delay_ms, header (json, jobs.py), payload
-- Returns per job: 1 and its state when added, 0 and the state of the job already there, or 2
-- and 'full' when it was refused: its entity's max backlog is reached (limit.lua).
-- When Redis is out of memory the first job's write is refused, so nothing is added (oom.lua).
-- @include queue
local bb, chan = KEYS[1], ARGV[1]
local now = clock()
local entities, order, out = {}, {}, {}

-- The entity's summary, read once per call (with its type's settings when it is new).
local function entity(e)
  local E = entities[e]
  if not E then
    E = load(bb, e)
    take_type_defaults(E)
    entities[e] = E
  end
  return E
end

-- Whether one more job would take the entity past its max backlog (its own, else its type's):
-- its waiting and delayed jobs, counted once and then kept up to date (E.backlog).
local function full(E)
  local cap = E.mb > 0 and E.mb or E.tmb
  if cap == 0 then return false end
  if not E.backlog then E.backlog = E.w + redis.call('ZCARD', ekey(bb, E.e, 'delayed')) end
  return E.backlog >= cap
end

for i = 2, #ARGV, 6 do
  local e, jslot, prio, delay = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  local jk = jkey(bb, jslot)
  local E = entity(e)
  if full(E) and redis.call('HEXISTS', jk, 'd') == 0 then
    table.insert(out, 2)
    table.insert(out, 'full')
  elseif redis.call('HSETNX', jk, 'd', int(now) .. ' ' .. ARGV[i + 4] .. '\n' .. ARGV[i + 5]) == 0 then
    table.insert(out, 0)
    table.insert(out, redis.call('HGET', jk, 's') or 'waiting')
  else
    if not E.listed then
      E.listed = true
      table.insert(order, E)
      promote(E, now)  -- a delayed job that fell due goes ahead of this one
    end
    if E.backlog then E.backlog = E.backlog + 1 end
    if delay > 0 then
      redis.call('HSET', jk, 's', 'delayed', 'du', now + delay)
      redis.call('ZADD', ekey(bb, e, 'delayed'), now + delay, jslot)
      count(E, 'delayed', 1)
      if E.due == nil or now + delay < E.due then E.due = now + delay end
      table.insert(out, 1)
      table.insert(out, 'delayed')
    else
      redis.call('ZADD', ekey(bb, e, 'wait'), next_score(E, prio), jslot)
      E.w = E.w + 1
      table.insert(out, 1)
      table.insert(out, 'waiting')
    end
  end
end
for _, E in ipairs(order) do save(E, chan, now) end
return out
