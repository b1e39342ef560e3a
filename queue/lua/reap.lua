-- reap: leases past their deadline go back to the queue and the attempt they used stays
-- spent; a task on its last attempt ends `failed` with kind `lease_expired`. Also drops ended
-- tasks whose TTL has passed from the ended sets. Atomic, so any number of executors may run
-- it at once: each expired lease is handled exactly once.
--
-- No lease is reaped while the outage clock holds (see `observe_clock`): after a time when
-- nobody could reach Redis, every lease has run out, and reaping then would re-deliver the
-- tasks of executors that are alive and about to heartbeat.
--
-- KEYS[1] started set, KEYS[2] ready set, KEYS[3] wake-up list, KEYS[4] finished set,
-- KEYS[5] failed set, KEYS[6] canceled set, KEYS[7] counters hash, KEYS[8] events stream,
-- KEYS[9] outage clock, KEYS[10] queued-bytes hash
-- ARGV[1] prefix, ARGV[2] at most this many leases per call, ARGV[3] outage gap ms and
-- ARGV[4] hold ms of the caller's lease (0: only respect a hold, do not observe the clock)
-- Returns {requeued, failed, hold deadline ms while reaping is held else 0}.
local prefix = ARGV[1]
local now = now_ms()
local gap_ms, hold_ms = tonumber(ARGV[3]) or 0, tonumber(ARGV[4]) or 0
local hold
if gap_ms > 0 then
  hold = observe_clock(KEYS[9], now, gap_ms, hold_ms)
else
  hold = tonumber(redis.call('HGET', KEYS[9], 'hold_until')) or 0
end
local expired = {}
if now >= hold then
  expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
else
  redis.call('HINCRBY', KEYS[9], 'held_passes', 1)
end
local requeued, failed = 0, 0

for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[1], id)
  local tkey = task_key(prefix, id)
  local h = redis.call('HMGET', tkey, 'state', 'attempts', 'max_attempts', 'cancel', 'seq',
    'queue', 'worker')
  if h[1] == 'started' then
    local requeue = h[4] ~= '1' and tonumber(h[2]) < tonumber(h[3])
    if not requeue then left_started(tkey, id) end
    redis.call('HINCRBY', KEYS[7], 'lease_expired', 1)
    local message = 'lease of worker ' .. (h[7] or '?') .. ' expired'
    redis.call('HSET', tkey, 'error_kind', 'lease_expired', 'error_msg', message)
    if h[4] == '1' then
      finish_as(tkey, payload_key(prefix, id), id, KEYS[6], 'canceled', 'failure_ttl_ms', now)
      emit(KEYS[8], id, h[6], 'canceled')
    elseif requeue then
      make_ready(tkey, id, KEYS[2], KEYS[3], h[5], now, KEYS[10], true)
      emit(KEYS[8], id, h[6], 'queued', {'error_kind', 'lease_expired'})
      requeued = requeued + 1
    else
      finish_as(tkey, payload_key(prefix, id), id, KEYS[5], 'failed', 'failure_ttl_ms', now)
      redis.call('HINCRBY', KEYS[7], 'failed', 1)
      emit(KEYS[8], id, h[6], 'failed', {'error_kind', 'lease_expired'})
      failed = failed + 1
    end
  end
end

redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
if now < hold then return {requeued, failed, hold} end
return {requeued, failed, 0}
