-- KEYS: window. ARGV: limit, period us, want.
-- The sliding window of queue_core's `Window`, kept in a hash of bucket
-- index -> permits: buckets of period/64 us, each counted until a period
-- and a margin (a 16th of the period, at most 100 ms: jobs start a little
-- after their permit) have passed since it ended. Returns {granted, retry after us},
-- the retry 0 when every permit asked for was granted.
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local now = now_us()
local width = math.max(1, math.floor(period / 64))
local slack = math.min(math.floor(period / 16), 100000)
local span = math.ceil((period + slack) / width)
local current = math.floor(now / width)
local first = math.max(0, current - span)
local used = 0
local oldest = nil
local buckets = redis.call('HGETALL', KEYS[1])
for i = 1, #buckets, 2 do
  local index = tonumber(buckets[i])
  if index < first then
    redis.call('HDEL', KEYS[1], buckets[i])
  else
    used = used + tonumber(buckets[i + 1])
    if not oldest or index < oldest then oldest = index end
  end
end
local granted = math.min(want, math.max(0, limit - used))
if granted > 0 then
  redis.call('HINCRBY', KEYS[1], int(current), granted)
  if not oldest then oldest = current end
  -- Idle windows vanish: nothing counts after two periods.
  redis.call('PEXPIRE', KEYS[1], ms_of(2 * period + slack))
end
local retry = 0
if granted < want then
  local free_at = ((oldest or current) + span + 1) * width
  retry = math.max(1, free_at - now)
end
return { granted, retry, math.max(0, limit - used - granted) }
