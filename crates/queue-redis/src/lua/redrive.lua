-- ARGV: 'all', limit, cutoff_ms | '' | 'ids', id1, id2, ... Moves dead
-- letters back as fresh messages (attempt 1, no delay, no expiry). 'all'
-- takes those dead-lettered up to the cutoff (the dead-letter sequence at
-- the first call), so letters that die again meanwhile are not taken round
-- again. A letter whose id is live again (re-sent) is dropped, not merged.
-- Returns {'missing'} or {'ok', moved, scanned, cutoff}.
if missing() then return { 'missing' } end
local ids
local cutoff = ''
if ARGV[1] == 'all' then
  cutoff = ARGV[3]
  if cutoff == '' then cutoff = redis.call('HGET', K_STATS, 'dead_seq') or '0' end
  ids = redis.call('ZRANGEBYSCORE', K_DEAD, '-inf', cutoff, 'LIMIT', 0, tonumber(ARGV[2]))
else
  ids = {}
  for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
end
-- Clear the not-before and expires-at fields and reset the attempt.
local function reset(env)
  if not readable(env) then return env end
  local flags = string.byte(env, 4)
  local cut = 0
  if flags % 2 == 1 then cut = cut + 8 end
  if math.floor(flags / 2) % 2 == 1 then cut = cut + 8 end
  return string.sub(env, 1, 3) .. string.char(flags - flags % 4) .. string.sub(env, 5, 21)
    .. struct.pack('>I4', 1) .. string.sub(env, 26, 37) .. string.sub(env, 38 + cut)
end
local moved = 0
for _, id in ipairs(ids) do
  if redis.call('ZREM', K_DEAD, id) == 1 then
    local env = redis.call('HGET', K_DMSG, id)
    redis.call('HDEL', K_DMSG, id)
    redis.call('HDEL', K_DINFO, id)
    if env then
      env = reset(env)
      if redis.call('HSETNX', K_MSG, id, env) == 1 then
        make_ready(id, rank_of(env))
        moved = moved + 1
      end
    end
  end
end
if moved > 0 then notify() end
return { 'ok', moved, #ids, tostring(cutoff) }
