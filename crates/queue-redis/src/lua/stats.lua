-- Exact counts: maintenance first, so due, expired and lost messages are
-- where they belong. Returns {'missing'} or {'ok', ready, delayed,
-- in_flight, dead, enqueued, acked, retried, dead_lettered, expired, deduplicated,
-- paused (1 or 0)}.
if missing() then return { 'missing' } end
maintain_all(now_ms())
local c = redis.call('HMGET', K_STATS, 'enqueued', 'acked', 'retried', 'dead_lettered', 'expired', 'deduplicated')
return { 'ok', redis.call('ZCARD', K_READY), redis.call('ZCARD', K_DELAYED), redis.call('ZCARD', K_LEASED),
  redis.call('ZCARD', K_DEAD), tonumber(c[1]) or 0, tonumber(c[2]) or 0, tonumber(c[3]) or 0,
  tonumber(c[4]) or 0, tonumber(c[5]) or 0, tonumber(c[6]) or 0,
  redis.call('HEXISTS', K_META, 'paused') }
