-- ARGV: groups of (member, delay_ms, last error | ''). A last error is
-- written into the stored envelope for the next attempt. Returns the
-- 1-based group positions whose lease was lost.
local now = now_ms()
local lost = {}
for g = 0, #ARGV / 3 - 1 do
  local member, delay, err = ARGV[g * 3 + 1], tonumber(ARGV[g * 3 + 2]), ARGV[g * 3 + 3]
  if redis.call('ZREM', K_LEASED, member) == 1 then
    local id = string.sub(member, 1, 16)
    leases_ended({ id })
    local env = redis.call('HGET', K_MSG, id)
    if env then
      if err ~= '' then env = with_last_error(env, err) end
      retry(id, env, delay, err, now)
    end
  else
    lost[#lost + 1] = g + 1
  end
end
return lost
