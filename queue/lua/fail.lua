-- fail: the lease holder reports an error. A retryable error with attempts left moves the
-- task to `delayed` for an exponential backoff with jitter; otherwise it is `failed` (kept
-- for its failure TTL). A task whose cancel was asked for ends `canceled` instead.
--
-- KEYS[1] task hash, KEYS[2] started set, KEYS[3] delayed set, KEYS[4] failed set,
-- KEYS[5] canceled set, KEYS[6] counters hash, KEYS[7] events stream, KEYS[8] payload
-- ARGV[1] id, ARGV[2] lease token, ARGV[3] error kind, ARGV[4] error message,
-- ARGV[5] retryable 0|1, ARGV[6] jitter in [0, 1), ARGV[7] minimum delay ms (a server's
-- Retry-After; 0 for none), ARGV[8] the failing attempt's span, a W3C traceparent ('' when
-- not traced): the first one retried is kept as `first_attempt` for later attempts to link to
-- A repeat under the same lease answers {'repeat', <the first reply>…} (`repeated`).
-- Returns {'delayed', due_ms} / {'failed'} / {'canceled'} or {'not_found'} / {'lease_lost'}.
local tkey, id = KEYS[1], ARGV[1]
local refused = check_lease(tkey, ARGV[2])
if refused then return repeated(tkey, ARGV[2]) or {refused} end
-- Whether it ends or waits as `delayed`, it is neither queued nor started any more.
left_started(tkey, id)

local now = now_ms()
redis.call('ZREM', KEYS[2], id)
redis.call('HSET', tkey, 'error_kind', ARGV[3], 'error_msg', ARGV[4])

local h = redis.call('HMGET', tkey, 'cancel', 'attempts', 'max_attempts', 'backoff_base_ms',
  'backoff_max_ms', 'queue')
if h[1] == '1' then
  redis.call('HSET', tkey, 'error_kind', 'canceled', 'error_msg', 'canceled while running')
  local queue = finish_as(tkey, KEYS[8], id, KEYS[5], 'canceled', 'failure_ttl_ms', now)
  emit(KEYS[7], id, queue, 'canceled')
  return reported(tkey, ARGV[2], {'canceled'})
end

local attempts, max_attempts = tonumber(h[2]), tonumber(h[3])
if ARGV[5] == '1' and attempts < max_attempts then
  -- Equal jitter: half the exponential step is fixed, half random, so retries of many tasks
  -- failing together spread out without ever retrying at once.
  local step = math.min(tonumber(h[5]), tonumber(h[4]) * 2 ^ (attempts - 1))
  local delay = math.floor(step / 2 + tonumber(ARGV[6]) * step / 2)
  delay = math.max(delay, tonumber(ARGV[7]))
  local due = now + delay
  redis.call('HSET', tkey, 'state', 'delayed', 'retry_at', due)
  if (ARGV[8] or '') ~= '' then redis.call('HSETNX', tkey, 'first_attempt', ARGV[8]) end
  redis.call('HDEL', tkey, 'lease', 'worker')
  redis.call('ZADD', KEYS[3], due, id)
  emit(KEYS[7], id, h[6], 'delayed', {'error_kind', ARGV[3]})
  return reported(tkey, ARGV[2], {'delayed', due})
end

local queue = finish_as(tkey, KEYS[8], id, KEYS[4], 'failed', 'failure_ttl_ms', now)
redis.call('HINCRBY', KEYS[6], 'failed', 1)
emit(KEYS[7], id, queue, 'failed', {'error_kind', ARGV[3]})
return reported(tkey, ARGV[2], {'failed'})
