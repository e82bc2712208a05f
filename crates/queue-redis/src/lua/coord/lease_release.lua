-- KEYS: lease. ARGV: holder, token.
-- Returns 1 and deletes the lease if holder and token hold it now, 0
-- otherwise (a newer holder's lease stays).
local holder, token = current_lease(KEYS[1], now_us())
if holder ~= ARGV[1] or token ~= tonumber(ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1])
return 1
