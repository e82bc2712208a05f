-- One page of dead letters, oldest first. ARGV: after (the sequence of
-- the last letter of the previous page; -1 for the first page), count (at
-- most 1000), keep (bytes of each payload to return; -1 for all).
-- Returns {'missing'} or {'ok', more (1 or 0), seq1, id1, envelope1,
-- length1, info1, ...}. An envelope ends with its payload, so its header
-- and the payload's first `keep` bytes decode as a preview; `length` is
-- the whole envelope's.
-- On the first page, expired TTLs are swept first (at most 1,000, as a
-- claim does).
-- The most header bytes a preview keeps (`PREVIEW_HEADER_BYTES` in Rust).
local HEAD_ROOM = 65536

-- Where the payload starts in `env` (1-based), or 1 for bytes that are
-- not an envelope this build reads (they are all payload).
local function payload_start(env)
  if not readable(env) then return 1 end
  local flags, pos = string.byte(env, 4), 38
  local function has(bit) return math.floor(flags / bit) % 2 == 1 end
  local function skip(width, format)
    if #env < pos + width - 1 then return false end
    pos = pos + width + struct.unpack(format, env, pos)
    return true
  end
  if has(1) then pos = pos + 8 end
  if has(2) then pos = pos + 8 end
  if has(4) and not skip(2, '>I2') then return 1 end
  if has(8) and not skip(4, '>I4') then return 1 end
  if has(16) then pos = pos + 25 end
  if has(32) and not skip(2, '>I2') then return 1 end
  if #env < pos + 1 then return 1 end
  local headers = struct.unpack('>I2', env, pos)
  pos = pos + 2
  for _ = 1, headers do
    if not skip(2, '>I2') or not skip(4, '>I4') then return 1 end
  end
  return pos
end

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
  if keep >= 0 then
    local start = payload_start(env)
    if start > HEAD_ROOM + 1 then
      -- A header block over 64 KiB (headers a producer set): the preview
      -- keeps the fixed fields and drops the rest, so no page grows with
      -- them.
      env = string.sub(env, 1, 3) .. '\0' .. string.sub(env, 5, 37) .. '\0\0'
        .. string.sub(env, start, start + keep - 1)
    elseif length > start + keep - 1 then
      env = string.sub(env, 1, start + keep - 1)
    end
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
