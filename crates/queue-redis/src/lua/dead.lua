-- ARGV: limit. Returns {'missing'} or {'ok', id1, envelope1, info1, ...},
-- oldest first (TTLs swept first, as stats do).
if missing() then return { 'missing' } end
sweep(now_ms(), 1000000)
local ids = redis.call('ZRANGE', K_DEAD, 0, tonumber(ARGV[1]) - 1)
local out = { 'ok' }
if #ids == 0 then return out end
local envs = redis.call('HMGET', K_DMSG, unpack(ids))
local infos = redis.call('HMGET', K_DINFO, unpack(ids))
for i, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = envs[i] or ''
  out[#out + 1] = infos[i] or '{}'
end
return out
