-- entity: an entity's summary (its meta hash), read once at the start of a script and saved
-- once at its end; saving changes the bucket's index only where the entity's state crossed a
-- line (became busy or idle, claimable or not, ...), so the index is changed in the same
-- atomic step as the queues and never drifts, at the cost of a few commands on a transition
-- and none otherwise.
-- @include keys
-- @include time

-- The summary's fields and their values when absent: waiting, active, retrying, lease holders,
-- dead, concurrency, next due, FIFO sequence, last fencing token.
local SUMMARY = {'w', 'a', 'r', 'h', 'x', 'c', 'due', 'seq', 'token'}
local DEFAULT = {w = 0, a = 0, r = 0, h = 0, x = 0, c = 1, seq = 0, token = 0}

-- Read entity e of bucket bb, with the extra meta fields `extra` ('l:'..owner, 'n:'..jslot).
local function load(bb, e, extra)
  local names = SUMMARY
  if extra then
    names = {unpack(SUMMARY)}
    for i = 1, #extra do names[#SUMMARY + i] = extra[i] end
  end
  local vals = redis.call('HMGET', ekey(bb, e, 'meta'), unpack(names))
  local E = {bb = bb, e = e, names = names, counts = {}, existed = false, has = {}}
  local old = {}
  for i = 1, #names do
    local f, v = names[i], vals[i]
    if v then
      E.existed = true
      if i <= #SUMMARY then v = tonumber(v) end
    else
      v = DEFAULT[f]  -- nil for due and the extra fields
    end
    E[f], old[f], E.has[f] = v, v, true
  end
  E.old = old
  return E
end

-- Change a per-state count of the bucket by delta (written once, when the entity is saved).
local function count(E, state, delta)
  E.counts[state] = (E.counts[state] or 0) + delta
end

local function busy(s) return s.w > 0 or s.a + s.r > 0 end
-- A job could start if a new lease holder came (the scaler's and packed workers' view).
local function claimable(s) return s.w > 0 and s.a + s.r < s.c and s.h < s.c end
-- A job could start for some worker (an entity-bound worker waits on the entity's bell).
local function startable(s) return s.w > 0 and s.a + s.r < s.c end

-- An entity's entry in an index hash: n, or none when n is 0.
local function hash_entry(key, e, n)
  if n > 0 then
    redis.call('HSET', key, e, n)
  else
    redis.call('HDEL', key, e)
  end
end

-- An entity's entry in an index sorted set: score, or none when score is false or nil.
local function zset_entry(key, e, score)
  if score then
    redis.call('ZADD', key, score, e)
  else
    redis.call('ZREM', key, e)
  end
end

-- Write what changed of E's meta, and bring the bucket's index along.
local function save(E, chan, now)
  local bb, e, o = E.bb, E.e, E.old
  local meta = ekey(bb, e, 'meta')
  local idle = not busy(E) and E.h == 0 and E.x == 0 and E.due == nil and E.c == 1
  if idle then
    for _, f in ipairs(E.names) do
      if E[f] and string.sub(f, 1, 2) == 'n:' then idle = false end  -- a result() waiter
    end
  end
  if idle then
    -- Nothing left (a concurrency other than 1 is kept): drop the bookkeeping. Tokens stay
    -- monotonic through the time floor in grant(); the FIFO sequence may restart because
    -- nothing is left to order against.
    if E.existed then redis.call('DEL', meta, ekey(bb, e, 'bell')) end
  else
    local set, del = {}, {}
    for _, f in ipairs(E.names) do
      local v = E[f]
      if v ~= o[f] then
        if v == nil or v == DEFAULT[f] then
          del[#del + 1] = f
        else
          set[#set + 1] = f
          set[#set + 1] = type(v) == 'number' and int(v) or v
        end
      end
    end
    if #set > 0 then redis.call('HSET', meta, unpack(set)) end
    if #del > 0 then redis.call('HDEL', meta, unpack(del)) end
  end
  if E.w ~= o.w then hash_entry(bb .. 'pending', e, E.w) end
  if busy(E) ~= busy(o) then zset_entry(bb .. 'work', e, busy(E) and now) end
  local can, could = claimable(E), claimable(o)
  if can ~= could then
    zset_entry(bb .. 'ready', e, can and now)
    if can then
      ring(bb .. 'bell')
      if chan ~= '' then redis.call('PUBLISH', chan, e) end
    end
  end
  if startable(E) and (not startable(o) or E.h < o.h) then
    ring(ekey(bb, e, 'bell'))
  end
  if E.due ~= o.due then zset_entry(bb .. 'delayed', e, E.due) end
  if E.x ~= o.x then hash_entry(bb .. 'dead', e, E.x) end
  for state, delta in pairs(E.counts) do
    if delta ~= 0 then redis.call('HINCRBY', bb .. 'counts', state, delta) end
  end
end
