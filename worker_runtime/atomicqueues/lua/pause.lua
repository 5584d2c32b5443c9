-- pause: pause or resume one entity, or (e = '') the entity type in this bucket; the client
-- calls it for each of the type's buckets. A paused entity takes jobs (enqueue) but starts
-- none: it is not claimable, and its running jobs finish. Why it is paused is its summary's p
-- (entity.lua): 1 for itself, 2 for its type, 3 for both; the type's is also kept in the
-- bucket's defaults, so that an entity that appears meanwhile is paused as it does
-- (take_type_defaults).
-- KEYS[1] bucket base
-- ARGV  action ('pause'|'resume'), e ('' for the type), channel
-- Returns how many entities were paused or resumed by this call.
-- @flags allow-oom
-- @include oom
-- @include defaults
-- @include every_entity
local bb, action, e, chan = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
when_full_run(bb)
local now = now_ms()
local bit = e == '' and 2 or 1
local changed = 0

local function set(e)
  local E = load(bb, e)
  take_type_defaults(E)
  local has = E.p % (2 * bit) >= bit
  if action == 'pause' and not has then
    E.p = E.p + bit
  elseif action == 'resume' and has then
    E.p = E.p - bit
  else
    return
  end
  changed = changed + 1
  save(E, chan, now)
end

if bit == 1 then
  set(e)
  return changed
end
if action == 'pause' then
  redis.call('HSET', bb .. 'defaults', 'p', 2)
else
  redis.call('HDEL', bb .. 'defaults', 'p')
end
each_entity(bb, set)
return changed
