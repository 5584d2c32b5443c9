-- time: the Redis server's clock, one clock for every client.
local function int(x)
  return string.format('%.0f', x)
end

-- Milliseconds and microseconds (formatted: a Lua number as a Redis argument keeps only 14
-- digits) of one TIME call.
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000),
    int(tonumber(t[1]) * 1000000 + tonumber(t[2]))
end

local function now_ms()
  local ms = clock()
  return ms
end
