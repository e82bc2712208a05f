-- ARGV: lease members. Returns the 1-based positions of members whose lease
-- was lost (expired and taken back, settled, or purged).
local scores = redis.call('ZMSCORE', K_LEASED, unpack(ARGV))
local held, ids, lost = {}, {}, {}
for i, member in ipairs(ARGV) do
  if scores[i] then
    held[#held + 1] = member
    ids[#ids + 1] = string.sub(member, 1, 16)
  else
    lost[#lost + 1] = i
  end
end
if #held > 0 then
  redis.call('ZREM', K_LEASED, unpack(held))
  redis.call('HDEL', K_MSG, unpack(ids))
  if redis.call('EXISTS', K_EXP) == 1 then
    redis.call('HDEL', K_EXP, unpack(ids))
    redis.call('ZREM', K_TTL, unpack(ids))
  end
  redis.call('HINCRBY', K_STATS, 'acked', #held)
end
return lost
