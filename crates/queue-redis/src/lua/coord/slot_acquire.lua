-- KEYS: semaphore. ARGV: holder, limit, ttl us.
-- The semaphore is a sorted set of holder -> expiry (us). Expired slots
-- go first; then the holder renews its own slot or takes a free one.
-- Returns {1, 0} when held, {0, us until the earliest slot expires} when
-- every slot is held.
local now = now_us()
local limit = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now))
local own = redis.call('ZSCORE', KEYS[1], ARGV[1])
if own or redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], int(now + ttl), ARGV[1])
  -- The key lives as long as its longest slot.
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', KEYS[1], ms_of(tonumber(last[2]) - now))
  return { 1, 0 }
end
local earliest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return { 0, math.max(0, tonumber(earliest[2]) - now) }
