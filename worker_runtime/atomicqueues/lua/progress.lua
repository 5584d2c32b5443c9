-- progress: a running job's handler says how far it got.
-- KEYS[1] bucket base
-- ARGV  jslot, token (of the lease it runs under), value (JSON)
-- Returns 1, or 0 when the job no longer runs under that token (nothing written): a stale
-- holder cannot change what the job shows.
-- @include keys
local jk = jkey(KEYS[1], ARGV[1])
local f = redis.call('HMGET', jk, 's', 't')
if f[1] ~= 'active' or f[2] ~= ARGV[2] then return 0 end
redis.call('HSET', jk, 'pg', ARGV[3])
return 1
