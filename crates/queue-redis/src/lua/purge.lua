-- Removes every ready, delayed, in-flight and inbox message; dead letters
-- stay. Returns {'missing'} or {'ok', removed}.
if missing() then return { 'missing' } end
local n = redis.call('ZCARD', K_READY) + redis.call('ZCARD', K_DELAYED) + redis.call('ZCARD', K_LEASED) + redis.call('LLEN', K_INBOX)
redis.call('UNLINK', K_READY, K_DELAYED, K_LEASED, K_MSG, K_TTL, K_EXP, K_INBOX, K_NOTIFY, K_GOF, K_GVT, K_GACT)
return { 'ok', n }
