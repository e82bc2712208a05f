-- KEYS: semaphore. ARGV: holder, ttl us.
-- Extend the holder's slot if it still holds one (never takes a new one:
-- a slot given back must not come back by a late renewal). Returns 1 when
-- renewed, 0 when the holder holds no slot.
local now = now_us()
local ttl = tonumber(ARGV[2])
local own = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not own or tonumber(own) <= now then
  return 0
end
redis.call('ZADD', KEYS[1], int(now + ttl), ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], ms_of(tonumber(last[2]) - now))
return 1
