-- entity: an entity's summary (its meta hash), read once at the start of a script and saved
-- once at its end; saving changes the bucket's index only where the entity's state crossed a
-- line (became busy or idle, claimable or not, ...), so the index is changed in the same
-- atomic step as the queues and never drifts, at the cost of a few commands on a transition
-- and none otherwise.
-- @include keys
-- @include time

-- The summary's numbers, packed in one meta field 's' (struct: 10 little-endian doubles), so
-- that a script reads, unpacks, packs and writes them in one call each: waiting, active,
-- retrying, lease holders, dead, concurrency, next due ms (0: none), FIFO sequence, last
-- fencing token granted, expiry of the done list (as last set). Python reads it with
-- summary.py.
local SUMMARY = '<dddddddddd'

-- An entity's controls, one field of its summary (so that an entity without any costs one
-- absent field): "p rl mb tmb rn rp trn trp", 0 for none: paused (1: the entity, 2: its type,
-- 3: both: pause.lua); while its rate limit lets no job start, until when (rl ms; also a due
-- time: job.lua); its own max backlog and its type's; its own rate limit (at most rn starts in
-- any rp ms) and its type's (limit.lua).
local CONTROLS = '^(%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+)$'

local function controls_of(E, ctl)
  local p, rl, mb, tmb, rn, rp, trn, trp = string.match(ctl, CONTROLS)
  E.p, E.rl, E.mb, E.tmb = tonumber(p), tonumber(rl), tonumber(mb), tonumber(tmb)
  E.rn, E.rp, E.trn, E.trp = tonumber(rn), tonumber(rp), tonumber(trn), tonumber(trp)
end

local function controls_text(E)
  if E.p + E.rl + E.mb + E.tmb + E.rn + E.trn == 0 then return false end
  return string.format('%d %d %d %d %d %d %d %d', E.p, E.rl, E.mb, E.tmb, E.rn, E.rp, E.trn,
    E.trp)
end

-- Read entity e of bucket bb, with the extra meta fields named in the list `extra` ('l:'..owner,
-- 'n:'..jslot): E[name] is then the field's value, or false when it is absent. E.raw keeps what
-- was read, and E.old the summary's numbers as read, for save() to tell what changed.
local function load(bb, e, extra)
  local meta = ekey(bb, e, 'meta')
  extra = extra or {}
  local v = redis.call('HMGET', meta, 's', 'ctl', unpack(extra))
  local w, a, r, h, x, c, due, seq, token, dx = 0, 0, 0, 0, 0, 1, 0, 0, 0, 0
  if v[1] then w, a, r, h, x, c, due, seq, token, dx = struct.unpack(SUMMARY, v[1]) end
  if due == 0 then due = nil end
  local E = {bb = bb, e = e, meta = meta, raw = v, extra = extra, counts = false,
    w = w, a = a, r = r, h = h, x = x, c = c, due = due, seq = seq, token = token, dx = dx,
    old = {w, a, r, h, x, c, due}, ctl = v[2], p = 0, rl = 0, mb = 0, tmb = 0, rn = 0, rp = 0,
    trn = 0, trp = 0}
  if v[2] then controls_of(E, v[2]) end
  for i = 1, #extra do E[extra[i]] = v[2 + i] end
  return E
end

-- Change a per-state count of the bucket by delta (written once, when the entity is saved).
local function count(E, state, delta)
  local counts = E.counts
  if not counts then
    counts = {}
    E.counts = counts
  end
  counts[state] = (counts[state] or 0) + delta
end

-- The lines an entity crosses, from its waiting, active, retrying, holders, concurrency, and
-- held: paused or rate-limited (E.p + E.rl; 0: neither).
local function busy(w, a, r) return w > 0 or a + r > 0 end
-- A job could start if a new lease holder came (the scaler's and packed workers' view).
local function claimable(w, a, r, h, c, held)
  return held == 0 and w > 0 and a + r < c and h < c
end
-- A job could start for some worker (an entity-bound worker waits on the entity's bell).
local function startable(w, a, r, c, held) return held == 0 and w > 0 and a + r < c end


-- An entity's entry in an index hash: n, or none when n is 0.
local function hash_entry(key, e, n)
  if n > 0 then
    redis.call('HSET', key, e, int(n))
  else
    redis.call('HDEL', key, e)
  end
end

-- An entity's entry in an index sorted set: score, or none when score is false or nil.
local function zset_entry(key, e, score)
  if score then
    redis.call('ZADD', key, int(score), e)
  else
    redis.call('ZREM', key, e)
  end
end

-- Write what changed of E's meta: one HSET and one HDEL at most, or one DEL when the entity
-- has nothing left (idle: a result() waiter keeps it). Tokens stay monotonic without the meta
-- through the time floor in grant(); the FIFO sequence may restart because nothing is left to
-- order against.
local function save_meta(E, idle)
  local raw, extra = E.raw, E.extra
  if idle then
    for i = 1, #extra do
      if E[extra[i]] and string.sub(extra[i], 1, 2) == 'n:' then idle = false end
    end
  end
  if idle then
    for i = 1, #extra + 2 do
      if raw[i] then
        redis.call('DEL', E.meta, ekey(E.bb, E.e, 'bell'))
        return
      end
    end
    return
  end
  local set, del = {}, {}
  local s = struct.pack(SUMMARY, E.w, E.a, E.r, E.h, E.x, E.c, E.due or 0, E.seq, E.token, E.dx)
  if s ~= raw[1] then set[1], set[2] = 's', s end
  local fields = {'ctl', unpack(extra)}
  for i = 1, #fields do
    local f = fields[i]
    local v, old = E[f] or false, raw[i + 1]
    if v ~= old then
      if v then
        set[#set + 1] = f
        set[#set + 1] = v
      else
        del[#del + 1] = f
      end
    end
  end
  if #set > 0 then redis.call('HSET', E.meta, unpack(set)) end
  if #del > 0 then redis.call('HDEL', E.meta, unpack(del)) end
end

-- Add per-state counts of the bucket to `into` (a table state -> delta).
local function add_counts(into, counts)
  for state, delta in pairs(counts) do into[state] = (into[state] or 0) + delta end
end

-- Write per-state counts of bucket bb (one HINCRBY a state that changed).
local function write_counts(bb, counts)
  for state, delta in pairs(counts) do
    if delta ~= 0 then redis.call('HINCRBY', bb .. 'counts', state, int(delta)) end
  end
end

-- Write what changed of E, and bring the bucket's index along. Its per-state counts are
-- written too, or added to `tally` when the script saves several entities of the bucket and
-- writes them once at its end (write_counts): a job that ends on one entity and one that
-- starts on the next cancel out.
local function save(E, chan, now, tally)
  local bb, e, raw = E.bb, E.e, E.raw
  local w, a, r, h, x, c, due, p, rl = E.w, E.a, E.r, E.h, E.x, E.c, E.due, E.p, E.rl
  local w0, a0, r0, h0, x0, c0, due0 = unpack(E.old, 1, 7)
  local p0, rl0, mb0, rn0 = 0, 0, 0, 0
  if raw[2] then  -- the controls it had
    local old = {}
    controls_of(old, raw[2])
    p0, rl0, mb0, rn0 = old.p, old.rl, old.mb, old.rn
  end
  -- An idle entity keeps its summary only while it has a setting of its own (concurrency, max
  -- backlog, rate limit, paused itself): its type's settings are taken up again when it gets
  -- its next job (take_type_defaults).
  local idle = w + a + r + h + x == 0 and due == nil and c == 1 and p % 2 == 0 and E.mb == 0
    and E.rn == 0
  if idle then p = 0 end
  E.ctl = controls_text(E)
  save_meta(E, idle)
  if p ~= p0 then hash_entry(bb .. 'paused', e, p) end
  if rl ~= rl0 then zset_entry(bb .. 'limited', e, rl > 0 and rl) end
  if E.mb ~= mb0 then hash_entry(bb .. 'caps', e, E.mb) end
  if E.rn ~= rn0 then hash_entry(bb .. 'rates', e, E.rn) end
  if w ~= w0 then hash_entry(bb .. 'pending', e, w) end
  local is_busy = busy(w, a, r)
  if is_busy ~= busy(w0, a0, r0) then zset_entry(bb .. 'work', e, is_busy and now) end
  local can = claimable(w, a, r, h, c, p + rl)
  if can ~= claimable(w0, a0, r0, h0, c0, p0 + rl0) then
    zset_entry(bb .. 'ready', e, can and now)
    if can then
      ring(bb .. 'bell', true)
      if chan ~= '' then redis.call('PUBLISH', chan, e) end
    end
  end
  if startable(w, a, r, c, p + rl) and (h < h0 or not startable(w0, a0, r0, c0, p0 + rl0)) then
    ring(ekey(bb, e, 'bell'), false)
  end
  if due ~= due0 then zset_entry(bb .. 'delayed', e, due) end
  if x ~= x0 then hash_entry(bb .. 'dead', e, x) end
  if E.counts then
    if tally then add_counts(tally, E.counts) else write_counts(bb, E.counts) end
  end
end
