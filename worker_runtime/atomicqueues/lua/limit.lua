-- limit: set an entity's own limits, or (e = '') its type's in this bucket (the client calls it
-- for each of the type's buckets): mb max backlog (enqueue.lua refuses past it: its waiting and
-- delayed jobs), rn and rp rate limit (at most rn starts in any rp ms: job.lua). 0 removes a
-- limit. An entity's own limits come before its type's.
-- KEYS[1] bucket base
-- ARGV  e ('' for the type), channel, then (field, value) pairs, fields 'mb', 'rn', 'rp'
-- Returns how many entities' summaries changed.
-- @flags allow-oom
-- @include oom
-- @include queue
-- @include defaults
-- @include every_entity
local bb, e, chan = KEYS[1], ARGV[1], ARGV[2]
when_full_run(bb)
local now = now_ms()
local changed = 0
local prefix = e == '' and 't' or ''

local function set(e)
  local E = load(bb, e)
  take_type_defaults(E)
  local differs = false
  for i = 3, #ARGV, 2 do
    local f, n = prefix .. ARGV[i], tonumber(ARGV[i + 1])
    if E[f] ~= n then
      E[f] = n
      differs = true
    end
  end
  if differs then
    changed = changed + 1
    if E.rl > 0 then  -- held by the old rate limit: the next claim looks again
      E.rl = 0
      refresh_due(E)
    end
    save(E, chan, now)
  end
end

if e ~= '' then
  set(e)
  return changed
end
for i = 3, #ARGV, 2 do
  if tonumber(ARGV[i + 1]) > 0 then
    redis.call('HSET', bb .. 'defaults', ARGV[i], ARGV[i + 1])
  else
    redis.call('HDEL', bb .. 'defaults', ARGV[i])
  end
end
each_entity(bb, set)
return changed
