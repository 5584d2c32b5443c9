-- schedule_remove: remove a schedule from its bucket (it fires no more).
-- KEYS[1] bucket base
-- ARGV  name
-- Returns 1 when it was there, 0 when not.
-- @flags allow-oom
-- @include oom
-- @include keys
local bb, name = KEYS[1], ARGV[1]
when_full_run(bb)
redis.call('ZREM', bb .. 'sched', name)
return redis.call('DEL', skey(bb, name))
