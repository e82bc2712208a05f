-- KEYS: the index to walk (`created`, or `status:<status>`).
-- ARGV: store base, cursor ms | '', cursor id | '', limit, queue | '',
-- search (lowercase) | '', scan budget.
-- Walks the index newest first (score, then id, descending) after the
-- cursor and returns {next cursor ms | '', next cursor id | '', id, fields,
-- id, fields, ...} for up to `limit` matching records. It looks at most
-- `budget` entries per call; a next cursor means there may be more.
local index, base = KEYS[1], ARGV[1]
local max = ARGV[2] == '' and '+inf' or ARGV[2]
local after_id = ARGV[3]
local limit, queue, search, budget = tonumber(ARGV[4]), ARGV[5], ARGV[6], tonumber(ARGV[7])
local out = {'', ''}
local found, scanned, offset = 0, 0, 0
local last_ms, last_id, last_match_ms, last_match_id
local function hyphenated(id)
  return id:sub(1, 8) .. '-' .. id:sub(9, 12) .. '-' .. id:sub(13, 16) .. '-' .. id:sub(17, 20) .. '-' .. id:sub(21)
end
while true do
  local chunk = redis.call('ZREVRANGEBYSCORE', index, max, '-inf', 'WITHSCORES', 'LIMIT', offset, 200)
  if #chunk == 0 then return out end
  offset = offset + #chunk / 2
  for i = 1, #chunk, 2 do
    local id, ms = chunk[i], chunk[i + 1]
    if after_id == '' or tonumber(ms) ~= tonumber(max) or id < after_id then
      if scanned >= budget then
        -- Out of budget: the next call starts after the last one looked at.
        out[1], out[2] = last_ms, last_id
        return out
      end
      scanned = scanned + 1
      last_ms, last_id = ms, id
      local rec = base .. 'job:' .. id
      local f = redis.call('HMGET', rec, 'queue', 'name', 'last_error')
      local ok = f[1] ~= false
      if ok and queue ~= '' and f[1] ~= queue then ok = false end
      if ok and search ~= '' then
        local hay = string.lower((f[2] or '') .. '\n' .. (f[3] or '') .. '\n' .. id .. '\n' .. hyphenated(id))
        ok = string.find(hay, search, 1, true) ~= nil
      end
      if ok then
        if found == limit then
          -- One more match: there is a next page, after the last returned.
          out[1], out[2] = last_match_ms, last_match_id
          return out
        end
        found = found + 1
        last_match_ms, last_match_id = ms, id
        out[#out + 1] = id
        out[#out + 1] = redis.call('HGETALL', rec)
      end
    end
  end
end
