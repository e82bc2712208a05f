-- KEYS: records[, lease]. ARGV: key, value, most records[, holder, token].
-- With a lease key, writes only while holder and token hold that lease.
-- Returns 1 when written, 0 when the lease was not current, -1 when the
-- space is full (and the key new).
if KEYS[2] then
  local holder, token = current_lease(KEYS[2], now_us())
  if holder ~= ARGV[4] or token ~= tonumber(ARGV[5]) then return 0 end
end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3])
    and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return -1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
