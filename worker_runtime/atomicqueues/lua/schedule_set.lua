-- schedule_set: add a schedule to the bucket of its entity, or replace the one of that name.
-- KEYS[1] bucket base
-- ARGV  name, sid (new for every add), next fire ms, definition (json, schedules.py)
-- Returns 1 when the schedule is new, 0 when it replaced one (whose counts start again).
-- The first write adds memory: when Redis is out of memory nothing changes (oom.lua).
-- @include keys
local bb, name = KEYS[1], ARGV[1]
local added = redis.call('HSET', skey(bb, name), 'sid', ARGV[2], 'def', ARGV[4], 'n', 0,
  'last', '')
redis.call('ZADD', bb .. 'sched', ARGV[3], name)
return added > 0 and 1 or 0
