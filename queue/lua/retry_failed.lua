-- retry_failed: put up to ARGV[2] `failed` tasks of one queue back on it, oldest first, each
-- exactly as retry.lua does. Bounded per call, so Redis is never held for long; the caller
-- calls again while tasks are left.
--
-- KEYS[1] failed set, KEYS[2] ready set, KEYS[3] wake-up list, KEYS[4] sequence counter,
-- KEYS[5] events stream
-- ARGV[1] prefix, ARGV[2] at most this many tasks
-- Returns {retried, still in the failed set}.
local prefix = ARGV[1]
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
local now = now_ms()
local retried = 0
for _, id in ipairs(ids) do
  -- Entries whose hash expired (not yet reaped) are dropped as well.
  redis.call('ZREM', KEYS[1], id)
  local tkey = task_key(prefix, id)
  if redis.call('HGET', tkey, 'state') == 'failed' then
    redis.call('PERSIST', tkey)
    local idem = redis.call('HGET', tkey, 'idem')
    if idem then redis.call('PERSIST', idem) end
    redis.call('HSET', tkey, 'attempts', 0, 'progress', 0, 'progress_msg', '', 'cancel', 0)
    redis.call('HDEL', tkey, 'error_kind', 'error_msg', 'finished_at', 'result', 'retry_at')
    make_ready(tkey, id, KEYS[2], KEYS[3], next_seq(KEYS[4], 1), now)
    emit(KEYS[5], id, redis.call('HGET', tkey, 'queue'), 'queued', {'retried', '1'})
    retried = retried + 1
  end
end
return {retried, redis.call('ZCARD', KEYS[1])}
