-- every_entity: what changes the settings of a whole entity type (pause.lua, limit.lua) does
-- to each entity of a bucket.
-- @include entity

-- Call fn(e) once for every entity of the bucket that has a summary: it has work, dead letters,
-- a lease, a delayed job, a setting of its own, or is paused itself.
local function each_entity(bb, fn)
  local seen = {}
  local function each(list)
    for _, e in ipairs(list) do
      if not seen[e] then
        seen[e] = true
        fn(e)
      end
    end
  end
  each(redis.call('ZRANGE', bb .. 'work', 0, -1))
  each(redis.call('ZRANGE', bb .. 'delayed', 0, -1))
  for _, index in ipairs({'dead', 'conc', 'paused', 'caps', 'rates'}) do
    each(redis.call('HKEYS', bb .. index))
  end
  for _, member in ipairs(redis.call('ZRANGE', bb .. 'leases', 0, -1)) do
    each({string.sub(member, string.find(member, '|', 1, true) + 1)})
  end
end
