-- KEYS: record, keys, counts, finished. ARGV: id, change, now_ms, value, store base.
-- change: running|start (value: attempt), completed (value: result JSON),
-- failed|retry|dead (value: error), cancelled|cancel, requeued.
-- Returns -1 for an unknown id, 0 when refused, 1 when applied.
local rec, id, change, now, value = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local status = redis.call('HGET', rec, 'status')
if not status then return -1 end
if change == 'start' then
  if status == 'cancelled' then return 0 end
  -- A completed job stays completed; the (duplicate) delivery may run.
  if status == 'completed' then return 1 end
  change = 'running'
elseif change == 'cancel' then
  if status ~= 'pending' and status ~= 'scheduled' then return 0 end
  change = 'cancelled'
end
local requeued = change == 'requeued'
if requeued then change = 'pending' end
-- Completed and cancelled are final; dead is not (a redriven job runs again).
if status == 'cancelled' or status == 'completed' then return 0 end
redis.call('HSET', rec, 'status', change, 'updated', now)
-- The failures of the attempts, as JSON [[attempt, at_ms, error], ...]:
-- the last 20, a repeat of the last one (a status put back) left out.
local function remember(err)
  local attempt = tonumber(redis.call('HGET', rec, 'attempts') or '0')
  local raw = redis.call('HGET', rec, 'errors')
  local list = {}
  if raw then list = cjson.decode(raw) end
  local last = list[#list]
  if last and last[1] == attempt and last[3] == err then return end
  list[#list + 1] = {attempt, tonumber(now), err}
  while #list > 20 do table.remove(list, 1) end
  redis.call('HSET', rec, 'errors', cjson.encode(list))
end
if change == 'running' then
  if tonumber(value) > tonumber(redis.call('HGET', rec, 'attempts') or '0') then
    redis.call('HSET', rec, 'attempts', value)
  end
  redis.call('HSET', rec, 'started', now)
  redis.call('HDEL', rec, 'finished')
  redis.call('ZREM', KEYS[4], id)
elseif change == 'completed' then
  if value ~= '' then redis.call('HSET', rec, 'result', value) else redis.call('HDEL', rec, 'result') end
  redis.call('HSET', rec, 'finished', now)
  redis.call('ZADD', KEYS[4], now, id)
elseif change == 'retry' then
  remember(value)
  redis.call('HSET', rec, 'last_error', value)
elseif change == 'failed' or change == 'dead' then
  remember(value)
  redis.call('HSET', rec, 'last_error', value, 'finished', now)
  redis.call('ZADD', KEYS[4], now, id)
  if change == 'failed' then
    -- A job that was never enqueued releases its key for a new submission.
    local key = redis.call('HGET', rec, 'idem')
    if key and redis.call('HGET', KEYS[2], key) == id then redis.call('HDEL', KEYS[2], key) end
  end
elseif change == 'cancelled' then
  redis.call('HSET', rec, 'finished', now)
  redis.call('ZADD', KEYS[4], now, id)
elseif requeued then
  redis.call('HDEL', rec, 'finished')
  redis.call('ZREM', KEYS[4], id)
end
if change ~= status then
  local base = ARGV[5]
  redis.call('ZREM', base .. 'status:' .. status, id)
  redis.call('ZADD', base .. 'status:' .. change, redis.call('HGET', rec, 'created') or now, id)
end
redis.call('HINCRBY', KEYS[3], status, -1)
redis.call('HINCRBY', KEYS[3], change, 1)
return 1
