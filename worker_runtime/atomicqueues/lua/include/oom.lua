-- oom: how a script behaves when Redis is out of memory (maxmemory reached, policy noeviction).
--
-- Redis refuses a script's first write command that may add memory (HSET, ZADD, ...) and lets
-- every later one through, so that no script stops half-way; a refused script has changed
-- nothing (RedisOutOfMemory). Which write comes first therefore decides whether a script runs
-- when memory is full:
--   what adds new work (enqueue) writes the job first, a write that adds memory: refused;
--   what moves work already in Redis along (claim, finish, renew, release, sweep, cancel, dead
--   letters, watch, locks) calls when_full_run() before its first write (or, on its hot path,
--   begins with a write that frees memory, as finish's ZPOPMIN does), so the rest runs even
--   over maxmemory (a few bytes a job): a running job's lease, renewal and outcome never fail
--   for memory.
-- Called with EVALSHA (Redis 6.2, scripts without a `#!lua` line) this holds as said. Called as
-- functions (Redis 7 and later, scripts.py) a function is refused before it starts unless it
-- has the `allow-oom` flag, which then lets every write through: so each script that calls
-- when_full_run() declares `-- @flags allow-oom` (a test checks both go together), and the others
-- (enqueue first of all) are refused whole. Either way a refused script has changed nothing, and
-- the client answers an enqueue of a job that is already there by reading it (client.py).
local function when_full_run(base)
  if FUNCTION then return end  -- its allow-oom flag does it
  redis.call('DEL', base .. 'oom')  -- a key never written: a write that never adds memory
end
