-- lease: an owner's lease on an entity, kept in the entity's meta as
--   'l:'..owner -> "token expiry_ms" while it runs nothing, and
--                  "token expiry_ms score jslot" while it runs job jslot (score: the job's
--                  place in the wait queue, for when it goes back)
-- and in the bucket's lease index (owner..'|'..e -> expiry) that the sweep reads.
-- @include queue

-- The meta field of owner's lease; the script must have loaded it (load's `extra`).
local function lease_field(E, owner)
  local f = 'l:' .. owner
  if E[f] == nil then error('lease of ' .. owner .. ' not loaded') end
  return f
end

-- The lease of owner as a table {token, exp, score, jslot}, or nil.
local function lease_of(E, owner)
  local v = E[lease_field(E, owner)]
  if not v then return nil end
  local token, exp, score, jslot = string.match(v, '^(%d+) (%d+) ?(%d*) ?(.*)$')
  if score == '' then score, jslot = nil, nil end
  return {token = token, exp = tonumber(exp), score = score, jslot = jslot}
end

local function set_lease(E, owner, L)
  local v = L.token .. ' ' .. int(L.exp)
  if L.jslot then v = v .. ' ' .. L.score .. ' ' .. L.jslot end
  E[lease_field(E, owner)] = v
end

local function extend(E, owner, L, exp)
  L.exp = exp
  set_lease(E, owner, L)
  redis.call('ZADD', E.bb .. 'leases', int(exp), owner .. '|' .. E.e)
end

-- Give up owner's lease. Its running job, if any, goes back to the head of the queue, or ends
-- 'cancelled' when a cancellation was asked for (cancel.lua); a stalled job (stalled = true)
-- keeps the attempt it used and is dead-lettered once it has used them all. Returns true when
-- a job was running.
local function drop_lease(E, owner, stalled, now, us)
  local L = lease_of(E, owner)
  if not L then return false end
  E[lease_field(E, owner)] = false
  E.h = E.h - 1
  redis.call('ZREM', E.bb .. 'leases', owner .. '|' .. E.e)
  if not L.jslot then return false end
  E.a = E.a - 1
  count(E, 'active', -1)
  local jk = jkey(E.bb, L.jslot)
  local x = redis.call('HMGET', jk, 'x', 'd')
  if x[1] then  -- its cancellation was asked for: it ends here instead of going back
    local h = header_of(x[2])
    add_done(E, L.jslot, 'cancelled', x[1], L.score, h[7], h[8], now, us)
    return true
  end
  redis.call('HSET', jk, 'sc', L.score)
  if stalled then
    local made = tonumber(redis.call('HGET', jk, 'm')) or 1
    local err = 'stalled: the lease of worker ' .. owner .. ' expired during attempt ' .. made
    if made >= tonumber(header(jk)[5]) then
      add_dead(E, L.jslot, err, now, us)
      return true
    end
    redis.call('HSET', jk, 'er', err)
  else
    redis.call('HINCRBY', jk, 'm', -1)
  end
  to_wait(E, L.jslot, L.score)
  return true
end

-- owner's lease when it is held under token and has not expired, else nil. An expired lease
-- is recovered on the spot (its job given back), so a late caller can never act on it.
local function check_lease(E, owner, token, now, us)
  local L = lease_of(E, owner)
  if not L or L.token ~= token then return nil end
  if L.exp < now then
    drop_lease(E, owner, true, now, us)
    return nil
  end
  return L
end

-- A new lease for owner (the caller checked that a slot is free).
local function grant(E, owner, ttl, now, us)
  -- The time floor keeps tokens growing even if Redis restarts having lost its last writes.
  E.token = math.max(E.token + 1, tonumber(us))
  E.h = E.h + 1
  local L = {token = int(E.token)}
  extend(E, owner, L, now + ttl)
  return L
end
