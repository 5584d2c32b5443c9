-- enqueue: add jobs to the queues of entities of one bucket (idempotent per job slot).
-- KEYS[1] bucket base
-- ARGV  channel, then 6 per job: e, jslot, prio, delay_ms, header (json, jobs.py), payload
-- Returns per job: 1 and its state when added, 0 and the state of the job already there, or 2
-- and 'full' when it was refused: its entity's max backlog is reached (limit.lua).
-- When Redis is out of memory the first job's write is refused, so nothing is added (oom.lua).
-- @include enqueue
local bb, chan = KEYS[1], ARGV[1]
local now = clock()
local B, out = batch(), {}
for i = 2, #ARGV, 6 do
  local added, state = add_job(B, bb, ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]),
    tonumber(ARGV[i + 3]), ARGV[i + 4], ARGV[i + 5], now)
  table.insert(out, added)
  table.insert(out, state)
end
save_batch(B, chan, now)
return out
