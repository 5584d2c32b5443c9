-- limit: set an entity's own max backlog, or (e = '') its type's in this bucket (the client
-- calls it for each of the type's buckets); 0 removes it. An enqueue that would make the
-- entity's waiting and delayed jobs more than its max backlog (its own, else its type's) is
-- refused (enqueue.lua).
-- KEYS[1] bucket base
-- ARGV  e ('' for the type), max_backlog, channel
-- Returns how many entities' summaries changed.
-- @include oom
-- @include entity
local bb, e, n, chan = KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3]
when_full_run(bb)
local now = now_ms()
local changed = 0
local field = e == '' and 'tmb' or 'mb'

local function set(e)
  local E = load(bb, e)
  take_type_defaults(E)
  if E[field] ~= n then
    E[field] = n
    changed = changed + 1
    save(E, chan, now)
  end
end

if e ~= '' then
  set(e)
  return changed
end
if n > 0 then
  redis.call('HSET', bb .. 'defaults', 'mb', n)
else
  redis.call('HDEL', bb .. 'defaults', 'mb')
end
each_entity(bb, set)
return changed
