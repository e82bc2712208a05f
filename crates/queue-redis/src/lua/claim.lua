-- ARGV: max, lease_ms, group limit (0: none), then lease members to ack first (a worker's
-- finished jobs: finish and fetch in one call). Returns {status,
-- next_event_ms, buried, lost, member1, env1, ...}: status is always 'ok'
-- (a missing queue is created); lost lists the 1-based positions of the
-- acks whose lease was lost; next_event_ms is the
-- time until the next delayed message is due or lease expires (-1: none),
-- sent only when nothing was claimed; buried counts messages taken off the
-- queue as expired instead of delivered. A member is the 16-byte id plus an 8-byte lease
-- token, so a stale holder can never settle a newer lease.
local lost = ack_members({ unpack(ARGV, 4) })
local now = now_ms()
-- A queue is its keys: one deleted (or lost with a restart that kept no
-- data) is created again, so bytes pushed to its inbox are still taken.
if missing() then redis.call('HSETNX', K_META, 'created', now) end
maintain(now, 1000)
local max, lease, group_limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local out = { 'ok', -1, 0, lost }
-- A paused queue hands out nothing (acks above still settle); resume
-- wakes the waiting consumers.
local ids = {}
local meta = redis.call('HMGET', K_META, 'paused', 'vnow', 'glimit')
local groups, scores = nil, nil
-- Leases are counted per group once any consumer has used a group limit
-- on this queue (the first such claim counts the leases already out).
local counting = meta[3] ~= false
if group_limit > 0 and not counting then
  redis.call('DEL', K_GACT)
  local members = redis.call('ZRANGE', K_LEASED, 0, -1)
  for i = 1, #members, 1000 do
    local held = {}
    for j = i, math.min(i + 999, #members) do held[#held + 1] = string.sub(members[j], 1, 16) end
    for _, group in ipairs(redis.call('HMGET', K_GOF, unpack(held))) do
      if group then redis.call('HINCRBY', K_GACT, group, 1) end
    end
  end
  counting = true
end
-- The limit in use, so a settle knows when a group had reached it.
if group_limit > 0 and meta[3] ~= tostring(group_limit) then
  redis.call('HSET', K_META, 'glimit', group_limit)
end
if meta[1] then
  ids = {}
elseif not meta[2] then
  ids = redis.call('ZRANGE', K_READY, 0, max - 1)
  if #ids > 0 then redis.call('ZREMRANGEBYRANK', K_READY, 0, #ids - 1) end
else
  -- A queue with groups: take in score order (the groups' turns),
  -- passing over a group with `group_limit` deliveries leased: read
  -- `max` ready ids at a time, further only while some were passed over,
  -- at most 4 x max + 32 in all (groups at their limit further on wait
  -- for the next claim).
  groups, scores = {}, {}
  local bound = max
  if group_limit > 0 then bound = max * 4 + 32 end
  local active = {}
  local skipped = false
  local offset = 0
  while #ids < max and offset < bound do
    local rows = redis.call('ZRANGE', K_READY, offset, math.min(offset + max, bound) - 1, 'WITHSCORES')
    if #rows == 0 then break end
    offset = offset + #rows / 2
    local seen = {}
    for i = 1, #rows, 2 do seen[#seen + 1] = rows[i] end
    local of = redis.call('HMGET', K_GOF, unpack(seen))
    if group_limit > 0 then
      local unknown, names = {}, {}
      for _, group in ipairs(of) do
        if group and active[group] == nil and not unknown[group] then
          unknown[group] = true
          names[#names + 1] = group
        end
      end
      if #names > 0 then
        local counts = redis.call('HMGET', K_GACT, unpack(names))
        for i, group in ipairs(names) do active[group] = tonumber(counts[i] or 0) end
      end
    end
    for i, id in ipairs(seen) do
      if #ids >= max then break end
      local group = of[i]
      if group and group_limit > 0 and active[group] >= group_limit then
        skipped = true
      else
        ids[#ids + 1] = id
        groups[#ids] = group
        scores[#ids] = tonumber(rows[i * 2])
        if group and group_limit > 0 then active[group] = active[group] + 1 end
      end
    end
  end
  if skipped then
    if #ids > 0 then redis.call('ZREM', K_READY, unpack(ids)) end
  elseif #ids > 0 then
    redis.call('ZREMRANGEBYRANK', K_READY, 0, #ids - 1)
  end
end
if #ids > 0 then
  local envs = redis.call('HMGET', K_MSG, unpack(ids))
  local exps = nil
  if redis.call('EXISTS', K_EXP) == 1 then exps = redis.call('HMGET', K_EXP, unpack(ids)) end
  local token = redis.call('HINCRBY', K_STATS, 'lease_seq', #ids) - #ids
  local deadline = now + lease
  local zargs = {}
  local groups_leased = {}
  for i, id in ipairs(ids) do
    local env = envs[i]
    if env and exps and exps[i] and tonumber(exps[i]) <= now then
      bury(id, env, 'expired', math.max(attempt_of(env) - 1, 0), nil, now)
      out[3] = out[3] + 1
    elseif env then
      if groups then groups_leased[i] = true end
      local t = token + i
      local member = id .. struct.pack('>I4I4', math.floor(t / 4294967296), t % 4294967296)
      zargs[#zargs + 1] = deadline
      zargs[#zargs + 1] = member
      out[#out + 1] = member
      out[#out + 1] = env
    end
  end
  if #zargs > 0 then redis.call('ZADD', K_LEASED, unpack(zargs)) end
  if groups then
    -- Count each group's leases, and move the clock to the position
    -- served (a message put back in front sits below its rank's band and
    -- moves nothing).
    local vnow = tonumber(meta[2])
    local leased, names = {}, {}
    for i = 1, #ids do
      local env, group = envs[i], groups[i]
      if env then
        local v = scores[i] - rank_of(env) * RANK_STEP
        if v > vnow and v < RANK_STEP then vnow = v end
      end
      if group then
        if leased[group] == nil then
          leased[group] = 0
          names[#names + 1] = group
        end
        if groups_leased[i] then leased[group] = leased[group] + 1 end
      end
    end
    redis.call('HSET', K_META, 'vnow', vnow)
    if #names > 0 then
      if counting then
        for _, group in ipairs(names) do
          if leased[group] > 0 then redis.call('HINCRBY', K_GACT, group, leased[group]) end
        end
      end
      -- A group whose last position is served is as new: forget it.
      local lasts = redis.call('HMGET', K_GVT, unpack(names))
      local served = {}
      for i, group in ipairs(names) do
        if lasts[i] and tonumber(lasts[i]) <= vnow then served[#served + 1] = group end
      end
      if #served > 0 then redis.call('HDEL', K_GVT, unpack(served)) end
    end
  end
  -- Pass the wake-up on when messages are left for another consumer.
  if redis.call('EXISTS', K_READY) == 1 then notify() end
end
if #out == 4 then
  local next_at = nil
  local d = redis.call('ZRANGE', K_DELAYED, 0, 0, 'WITHSCORES')
  if d[2] then next_at = tonumber(d[2]) end
  local l = redis.call('ZRANGE', K_LEASED, 0, 0, 'WITHSCORES')
  if l[2] and (next_at == nil or tonumber(l[2]) < next_at) then next_at = tonumber(l[2]) end
  if next_at then out[2] = math.max(next_at - now, 0) end
end
return out
