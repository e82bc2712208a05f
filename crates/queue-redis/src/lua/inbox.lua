-- ARGV: bytes a waiting consumer's BLPOP took from the inbox. Queues them
-- as the claim's inbox drain would. Returns 1.
if missing() then return 0 end
accept(ARGV[1], now_ms())
notify()
return 1
