-- KEYS: record, keys, counts, finished, created.
-- ARGV: id, idempotency key | '', store base, field, value, ...
-- Returns the id of the kept record: the existing one for a known key.
-- Indexes: `created` (every job by creation time) and `status:<status>`
-- (the jobs of one status by creation time), for listing newest first.
if ARGV[2] ~= '' then
  local existing = redis.call('HGET', KEYS[2], ARGV[2])
  if existing then return existing end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return ARGV[1] end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[2], ARGV[2], ARGV[1]) end
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
local status = redis.call('HGET', KEYS[1], 'status')
local created = redis.call('HGET', KEYS[1], 'created')
redis.call('HINCRBY', KEYS[3], status, 1)
redis.call('ZADD', KEYS[5], created, ARGV[1])
redis.call('ZADD', ARGV[3] .. 'status:' .. status, created, ARGV[1])
local finished = redis.call('HGET', KEYS[1], 'finished')
if finished then redis.call('ZADD', KEYS[4], finished, ARGV[1]) end
return ARGV[1]
