-- ARGV: member, lease_ms. Returns 1 if the lease was held and now runs
-- lease_ms from now, 0 if it was lost.
if not redis.call('ZSCORE', K_LEASED, ARGV[1]) then return 0 end
redis.call('ZADD', K_LEASED, 'XX', now_ms() + tonumber(ARGV[2]), ARGV[1])
return 1
