-- KEYS: record, keys, counts, finished, created. ARGV: id, store base.
-- Removes one job's record, key and index entries; 1 if it existed.
local rec, id = KEYS[1], ARGV[1]
local status = redis.call('HGET', rec, 'status')
if not status then return 0 end
local key = redis.call('HGET', rec, 'idem')
if key and redis.call('HGET', KEYS[2], key) == id then redis.call('HDEL', KEYS[2], key) end
redis.call('HINCRBY', KEYS[3], status, -1)
redis.call('ZREM', ARGV[2] .. 'status:' .. status, id)
redis.call('ZREM', KEYS[4], id)
redis.call('ZREM', KEYS[5], id)
redis.call('DEL', rec)
return 1
