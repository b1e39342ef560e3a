-- backend_acquire: take a permit for one backend call if the limit key's limits allow it.
--
-- Permits are leased: a holder renews its permit while its call runs (backend_renew), and a
-- permit whose lease ran out (its executor died) is dropped here, so no holder can leak one.
-- The checks run in order: a pause (a backend's Retry-After), the concurrency limit, then
-- the requests-per-minute bucket; a refused call takes nothing.
--
-- KEYS[1] permits ZSET (permit id -> lease deadline ms), KEYS[2] state HASH
-- ARGV[1] permit id, ARGV[2] lease ms, ARGV[3] max concurrent (0: no limit),
-- ARGV[4] adaptive floor (0: the limit is fixed at ARGV[3]), ARGV[5] requests per minute
-- (0: no limit), ARGV[6] tokens per minute (0: no limit), ARGV[7] the call's estimated
-- tokens
--
-- The requests bucket needs one whole request; the tokens bucket only needs to be above
-- zero and may go into debt by a large call's estimate, which later calls wait out (so a
-- call larger than the bucket still passes, once). backend_release corrects the estimate.
-- Returns {'ok', now, limit, in_use, admission} (in_use counts this permit; admission numbers
-- the key's admissions), {'paused', wait_ms},
-- {'full', limit, in_use} or {'rate', wait_ms}.
local permits, state, id = KEYS[1], KEYS[2], ARGV[1]
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', permits, '-inf', now)

local paused = tonumber(redis.call('HGET', state, 'paused_until')) or 0
if paused > now then return {'paused', paused - now} end

local limit = current_limit(state, tonumber(ARGV[3]), tonumber(ARGV[4]))
local in_use = redis.call('ZCARD', permits)
if limit > 0 and in_use >= limit and not redis.call('ZSCORE', permits, id) then
  return {'full', limit, in_use}
end

local rpm, tpm = tonumber(ARGV[5]), tonumber(ARGV[6])
local requests, tokens
if rpm > 0 then
  requests = bucket_level(state, now, rpm, 'requests')
  if requests < 1 then return {'rate', bucket_wait(requests, 1, rpm)} end
end
if tpm > 0 then
  tokens = bucket_level(state, now, tpm, 'tokens')
  if tokens <= 0 then return {'rate', bucket_wait(tokens, 0.001, tpm)} end
end
if rpm > 0 then bucket_store(state, now, 'requests', requests - 1) end
if tpm > 0 then bucket_store(state, now, 'tokens', tokens - tonumber(ARGV[7])) end

redis.call('ZADD', permits, now + tonumber(ARGV[2]), id)
-- Admissions are numbered, so a release can tell a call admitted before the last cut of an
-- adaptive limit from one admitted after it, however close in time.
local admission = redis.call('HINCRBY', state, 'admitted', 1)
return {'ok', now, limit, redis.call('ZCARD', permits), admission}
