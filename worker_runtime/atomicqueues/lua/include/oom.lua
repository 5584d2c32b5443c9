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
-- This holds on Redis 6.2 and 7.x alike for scripts without flags, as ours are. (A `#!lua` line
-- would change it: on 7.x such a script is refused at its start unless flagged allow-oom, a
-- flag 6.2 cannot parse.)
local function when_full_run(base)
  redis.call('DEL', base .. 'oom')  -- a key never written: a write that never adds memory
end
