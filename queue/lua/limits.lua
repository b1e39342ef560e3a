-- Shared fragments of the backend-limit scripts (backend_*.lua), prepended after common.lua.
--
-- A limit key's state is one HASH: `limit` (the adaptive concurrency limit, a float),
-- `base_ms` (the no-load latency seen so far) and `base_at` (when it was last moved), `admitted` (admissions so far), `cut_after`
-- (the last admission before the last decrease), `steady` (set when slow start ended without a
-- cut, see backend_release), `requests`/`requests_at` and `tokens`/`tokens_at` (the per-minute buckets and when they
-- were last written) and `paused_until` (server ms).

-- The concurrency limit in force: `max` when fixed (`min` 0), else the stored adaptive limit
-- kept between `min` and `max`, starting at `min` (see backend_release). 0 means no limit.
local function current_limit(state, max, min)
  if max <= 0 then return 0 end
  if min <= 0 then return max end
  local l = tonumber(redis.call('HGET', state, 'limit')) or min
  return math.floor(math.max(min, math.min(max, l)))
end

-- A per-minute bucket (`field` and `field_at` in the state hash) refilled continuously at
-- rate/60 per second up to a tenth of a minute's worth (at least one): its level now.
local function bucket_level(state, now, rate, field)
  local burst = math.max(1, math.floor(rate / 10))
  local h = redis.call('HMGET', state, field, field .. '_at')
  local level, at = tonumber(h[1]), tonumber(h[2])
  if not level or not at then return burst end
  return math.min(burst, level + math.max(0, now - at) * rate / 60000)
end

local function bucket_store(state, now, field, level)
  redis.call('HSET', state, field, tostring(level), field .. '_at', now)
end

-- The ms until a bucket at `level` reaches `need`.
local function bucket_wait(level, need, rate)
  return math.max(1, math.ceil((need - level) * 60000 / rate))
end
