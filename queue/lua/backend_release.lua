-- backend_release: give a permit back, report how its call went, and pause the key's calls
-- when the backend asked for it.
--
-- Under an adaptive limit (ARGV[5] > 0) the limit moves by AIMD: an overload (429, 503, a
-- timeout) halves it, a call slower than ARGV[6] times the no-load latency cuts it by a
-- tenth, and any other success adds 1/limit (one per limit's worth of calls) while at least
-- half the limit is in use. Only a call admitted after the last cut may cut again, so a burst
-- of failures from one round of calls counts once. The limit starts at the floor and, until
-- its first cut, each such success adds 1 (slow start: it about doubles per round of calls),
-- so a new key finds the server's capacity from below instead of sending it `max` calls.
-- Slow start also ends, without a cut, at the first success slower than a quarter of the way
-- to the cut (1.25 times the no-load latency with a factor of 2): the latency is rising, so
-- the capacity is near, and a round more of doubling would overshoot it (TCP's HyStart ends
-- slow start on a rising round-trip time the same way).
--
-- KEYS[1] permits ZSET, KEYS[2] state HASH
-- ARGV[1] permit id, ARGV[2] outcome: 'ok', 'overload' or 'other' (neither says anything
-- about load), ARGV[3] latency ms, ARGV[4] the permit's admission number (see backend_acquire),
-- ARGV[5] max concurrent, ARGV[6] adaptive floor (0: fixed), ARGV[7] latency factor,
-- ARGV[8] pause ms (0: none), ARGV[9] tokens per minute (0: no limit), ARGV[10] tokens the
-- call used beyond its estimate (negative: fewer; given back to the bucket)
-- Returns {limit, in_use, paused_until}.
local permits, state, id = KEYS[1], KEYS[2], ARGV[1]
local now = now_ms()
redis.call('ZREM', permits, id)
redis.call('ZREMRANGEBYSCORE', permits, '-inf', now)
local in_use = redis.call('ZCARD', permits)

local pause = tonumber(ARGV[8])
local paused = tonumber(redis.call('HGET', state, 'paused_until')) or 0
if pause > 0 and now + pause > paused then
  paused = now + pause
  redis.call('HSET', state, 'paused_until', paused)
end

local tpm, extra = tonumber(ARGV[9]), tonumber(ARGV[10])
if tpm > 0 and extra ~= 0 then
  bucket_store(state, now, 'tokens', bucket_level(state, now, tpm, 'tokens') - extra)
end

local max, min = tonumber(ARGV[5]), tonumber(ARGV[6])
if max > 0 and min > 0 then
  local l = tonumber(redis.call('HGET', state, 'limit')) or min
  l = math.max(min, math.min(max, l))
  local outcome, latency, granted = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
  local base = tonumber(redis.call('HGET', state, 'base_ms'))
  local cut = 0
  local factor = tonumber(ARGV[7])
  local slow_start = not redis.call('HGET', state, 'cut_after')
    and not redis.call('HGET', state, 'steady')
  if outcome == 'overload' then
    cut = 0.5
  elseif outcome == 'ok' then
    if base and latency > factor * base then
      cut = 0.9
    else
      if slow_start and base and latency > (1 + (factor - 1) / 4) * base then
        redis.call('HSET', state, 'steady', 1)
        slow_start = false
      end
      -- The no-load latency: the lowest seen, drifting up towards calls that were not slow
      -- with a time constant of a minute (by time, not per call, so a pool making hundreds of
      -- calls a second does not drag it up to the latency of a loaded server in a second), so
      -- a model that became slower for good does not pin the limit at its floor.
      local at = tonumber(redis.call('HGET', state, 'base_at'))
      if not base or latency < base then
        base = latency
      elseif at then
        base = base + (latency - base) * math.min(1, math.max(0, now - at) / 60000)
      end
      redis.call('HSET', state, 'base_ms', tostring(base), 'base_at', now)
      if in_use + 1 >= l / 2 then l = math.min(max, l + (slow_start and 1 or 1 / l)) end
    end
  end
  if cut > 0 then
    -- 'cut_after': the last admission number before the last cut.
    local last = tonumber(redis.call('HGET', state, 'cut_after')) or 0
    if granted > last then
      l = math.max(min, l * cut)
      redis.call('HSET', state, 'cut_after', redis.call('HGET', state, 'admitted') or 0)
    end
  end
  redis.call('HSET', state, 'limit', tostring(l))
end
return {current_limit(state, max, min), in_use, paused}
