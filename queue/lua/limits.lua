-- Shared fragments of the backend-limit scripts (backend_*.lua), prepended after common.lua.
--
-- A limit key's state is one HASH: `limit` (the adaptive concurrency limit, a float),
-- `base_ms` (the no-load latency seen so far), `cut_at` (server ms of the last decrease),
-- `tokens` and `refilled` (the requests-per-minute bucket) and `paused_until` (server ms).

-- The concurrency limit in force: `max` when fixed (`min` 0), else the stored adaptive limit
-- kept between `min` and `max`. 0 means no limit.
local function current_limit(state, max, min)
  if max <= 0 then return 0 end
  if min <= 0 then return max end
  local l = tonumber(redis.call('HGET', state, 'limit')) or max
  return math.floor(math.max(min, math.min(max, l)))
end

-- Takes one request from the requests-per-minute bucket. The bucket holds a tenth of a
-- minute's requests (at least one) and refills continuously at rpm/60 per second, so any
-- minute sees at most rpm plus that tenth. Returns 0 when taken, else the ms until a
-- request is available.
local function take_request(state, now, rpm)
  local burst = math.max(1, math.floor(rpm / 10))
  local h = redis.call('HMGET', state, 'tokens', 'refilled')
  local tokens, at = tonumber(h[1]), tonumber(h[2])
  if not tokens or not at then tokens, at = burst, now end
  tokens = math.min(burst, tokens + math.max(0, now - at) * rpm / 60000)
  if tokens < 1 then
    redis.call('HSET', state, 'tokens', tostring(tokens), 'refilled', now)
    return math.max(1, math.ceil((1 - tokens) * 60000 / rpm))
  end
  redis.call('HSET', state, 'tokens', tostring(tokens - 1), 'refilled', now)
  return 0
end
