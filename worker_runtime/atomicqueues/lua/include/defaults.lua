-- defaults: an entity type's settings (paused, limits) that its entities' summaries carry, for
-- the scripts that give an entity its first job or setting, or change a type's settings.
-- @include entity

-- The settings of an entity type that its entities' summaries carry (bb..'defaults', HASH):
-- p 2 while the type is paused (pause.lua), mb its max backlog, rn and rp its rate limit
-- (limit.lua). An entity without
-- a summary (new, or idle since) takes them as it appears: called by the scripts that may give
-- an entity its first job or setting. A change of them is carried to every entity of the
-- bucket with a summary (each_entity).
local function take_type_defaults(E)
  if E.raw[1] or E.raw[2] then return end
  local d = redis.call('HMGET', E.bb .. 'defaults', 'p', 'mb', 'rn', 'rp')
  E.p, E.tmb = tonumber(d[1]) or 0, tonumber(d[2]) or 0
  E.trn, E.trp = tonumber(d[3]) or 0, tonumber(d[4]) or 0
end
