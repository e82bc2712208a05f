-- KEYS: lease. Returns {holder, token, us left} of the current lease, or
-- nil when none is held.
local now = now_us()
local holder, token = current_lease(KEYS[1], now)
if not holder then return nil end
local expires = tonumber(redis.call('HGET', KEYS[1], 'expires'))
return { holder, token, expires - now }
