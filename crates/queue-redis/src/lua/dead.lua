-- One page of dead letters, oldest first. ARGV: after (the sequence of
-- the last letter of the previous page; -1 for the first page), count (at
-- most 1000), keep (bytes of each envelope to return; -1 for all).
-- Returns {'missing'} or {'ok', more (1 or 0), seq1, id1, envelope1,
-- length1, info1, ...}. An envelope ends with its payload, so its first
-- `keep` bytes decode as a preview; `length` is the whole envelope's.
-- On the first page, expired TTLs are swept first (at most 1,000, as a
-- claim does).
if missing() then return { 'missing' } end
local after, count, keep = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if after < 0 then sweep(now_ms(), 1000) end
local ids = redis.call('ZRANGEBYSCORE', K_DEAD, '(' .. string.format('%.0f', after), '+inf',
  'WITHSCORES', 'LIMIT', 0, count + 1)
local out = { 'ok', 0 }
local n = #ids / 2
if n > count then
  out[2] = 1
  n = count
end
for i = 1, n do
  local id, seq = ids[2 * i - 1], ids[2 * i]
  local env = redis.call('HGET', K_DMSG, id) or ''
  local length = #env
  if keep >= 0 and length > keep then
    env = string.sub(env, 1, keep)
  end
  out[#out + 1] = seq
  out[#out + 1] = id
  out[#out + 1] = env
  out[#out + 1] = length
  out[#out + 1] = redis.call('HGET', K_DINFO, id) or '{}'
  -- A large envelope was copied into the script: let it go now rather
  -- than hold a page of them.
  if length > 1048576 then collectgarbage('collect') end
end
return out
