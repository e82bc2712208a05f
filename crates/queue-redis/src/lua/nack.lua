-- ARGV: groups of (member, delay_ms, envelope | '', last error | '').
-- An envelope replaces the stored one (to carry the last error). Returns
-- the 1-based group positions whose lease was lost.
local now = now_ms()
local lost = {}
for g = 0, #ARGV / 4 - 1 do
  local member, delay, env, err = ARGV[g * 4 + 1], tonumber(ARGV[g * 4 + 2]), ARGV[g * 4 + 3], ARGV[g * 4 + 4]
  if redis.call('ZREM', K_LEASED, member) == 1 then
    local id = string.sub(member, 1, 16)
    if env == '' then env = redis.call('HGET', K_MSG, id) end
    if env then retry(id, env, delay, err, now) end
  else
    lost[#lost + 1] = g + 1
  end
end
return lost
