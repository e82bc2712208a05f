-- Counts, after one bounded round of the maintenance a claim does (at
-- most 1,000 of each kind moved: one call never blocks Redis for long,
-- however many jobs are due; the workers' claims move the rest). Delayed
-- jobs already due but not yet moved, and inbox pushes not yet taken, are
-- counted as ready (expired leases beyond the bound stay in flight until
-- moved). Returns
-- {'missing'} or {'ok', ready, delayed, in_flight, dead, enqueued, acked,
-- retried, dead_lettered, expired, deduplicated, paused (1 or 0),
-- oldest_ready_ms (-1: nothing ready)}.
--
-- The oldest ready message is at the head of one priority's range of
-- `ready` (scores rank x 2^47 + sequence, released messages just below
-- rank x 2^47): sequences follow the order messages became ready. Its
-- wait runs from the later of its created and not-before times (envelope
-- offsets 29 and 37).
local function ready_since(env)
  if not env or #env < 37 then return nil end
  local hi, lo = struct.unpack('>I4I4', env, 30)
  local since = hi * 4294967296 + lo
  if #env >= 45 and struct.unpack('B', env, 4) % 2 == 1 then
    hi, lo = struct.unpack('>I4I4', env, 38)
    since = math.max(since, hi * 4294967296 + lo)
  end
  return since
end
local function oldest_ready_ms(now)
  local ids = {}
  for rank = 0, 3 do
    local low = string.format('%.0f', rank * RANK_STEP - RANK_STEP / 2)
    local high = string.format('(%.0f', rank * RANK_STEP + RANK_STEP / 2)
    local head = redis.call('ZRANGEBYSCORE', K_READY, low, high, 'LIMIT', 0, 1)
    if head[1] then ids[#ids + 1] = head[1] end
  end
  if #ids == 0 then return -1 end
  local oldest = nil
  for _, env in ipairs(redis.call('HMGET', K_MSG, unpack(ids))) do
    local since = ready_since(env)
    if since and (oldest == nil or since < oldest) then oldest = since end
  end
  if oldest == nil then return -1 end
  return math.max(now - oldest, 0)
end
if missing() then return { 'missing' } end
local now = now_ms()
maintain(now, 1000)
local due = redis.call('ZCOUNT', K_DELAYED, '-inf', now)
-- Plain clients' pushes not yet taken from the inbox are ready too.
local pushed = redis.call('LLEN', K_INBOX)
local c = redis.call('HMGET', K_STATS, 'enqueued', 'acked', 'retried', 'dead_lettered', 'expired', 'deduplicated')
return { 'ok', redis.call('ZCARD', K_READY) + due + pushed, redis.call('ZCARD', K_DELAYED) - due,
  redis.call('ZCARD', K_LEASED),
  redis.call('ZCARD', K_DEAD), tonumber(c[1]) or 0, tonumber(c[2]) or 0, tonumber(c[3]) or 0,
  tonumber(c[4]) or 0, tonumber(c[5]) or 0, tonumber(c[6]) or 0,
  redis.call('HEXISTS', K_META, 'paused'), oldest_ready_ms(now) }
