-- Shared by every coordination script (prepended to each). Every key of a
-- store shares the hash tag {<namespace>}, so a script touches one slot.

-- Server time in microseconds: every process shares the server's clock.
-- (About 1.7e15 today: exact in Lua's doubles up to 2^53.)
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- `n` as an integer argument: Lua turns numbers over 1e14 into
-- exponent notation when passing them to redis.call.
local function int(n)
  return string.format('%.0f', n)
end

-- Whole milliseconds of `us`, rounded up, at least 1: a key's PEXPIRE
-- never ends before the time stored in it.
local function ms_of(us)
  return math.max(1, math.ceil(us / 1000))
end

-- The holder and token of the lease at `key` unless it has expired by
-- `now` (the stored expiry decides, to the microsecond; PEXPIRE only
-- removes the key of a dead holder).
local function current_lease(key, now)
  local held = redis.call('HMGET', key, 'holder', 'token', 'expires')
  if not held[1] or not held[3] or tonumber(held[3]) <= now then
    return nil
  end
  return held[1], tonumber(held[2])
end
