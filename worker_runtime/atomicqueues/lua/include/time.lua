-- time: the Redis server's clock, one clock for every client.
local function int(x)
  return string.format('%d', x)
end

-- Milliseconds (a number) and microseconds (a string: 16 digits are more than a Lua number
-- passed to Redis keeps) of one TIME call, put together as text: one number parsed.
local function clock()
  local t = redis.call('TIME')
  local u = t[2]
  local us = t[1] .. string.rep('0', 6 - #u) .. u
  return tonumber(string.sub(us, 1, -4)), us
end

local function now_ms()
  local ms = clock()
  return ms
end
