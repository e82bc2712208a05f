-- ARGV: offset, count (at most 1000). Returns {'missing'} or {'ok', id1,
-- envelope1, info1, ...}, oldest first (on the first page, TTLs are swept
-- first, as stats do).
if missing() then return { 'missing' } end
local offset, count = tonumber(ARGV[1]), tonumber(ARGV[2])
if offset == 0 then sweep(now_ms(), 10000) end
local ids = redis.call('ZRANGE', K_DEAD, offset, offset + count - 1)
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
