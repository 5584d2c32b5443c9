-- set_concurrency: how many jobs of one entity may be in flight at once (default 1).
-- KEYS[1] bucket base
-- ARGV  e, n, channel
-- Returns n.
-- @include defaults
local bb, e, n = KEYS[1], ARGV[1], tonumber(ARGV[2])
if n == 1 then
  redis.call('HDEL', bb .. 'conc', e)
else
  redis.call('HSET', bb .. 'conc', e, n)
end
local E = load(bb, e)
take_type_defaults(E)
E.c = n
save(E, ARGV[3], now_ms())
return n
