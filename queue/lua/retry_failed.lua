-- retry_failed: put up to ARGV[2] `failed` tasks of one queue back on it, oldest first, each
-- exactly as retry.lua does. Bounded per call, so Redis is never held for long; the caller
-- calls again while tasks are left. A failed task whose payload is gone cannot run again: it
-- stays failed (until its TTL) and is passed over, so later calls start behind it.
--
-- KEYS[1] failed set, KEYS[2] ready set, KEYS[3] wake-up list, KEYS[4] sequence counter,
-- KEYS[5] events stream, KEYS[6] queued-bytes hash
-- ARGV[1] prefix, ARGV[2] at most this many tasks, ARGV[3] entries at the front of the set
-- that earlier calls passed over
-- Returns {retried, still in the set behind the passed-over ones, passed over by this call}.
local prefix, skip = ARGV[1], tonumber(ARGV[3])
local ids = redis.call('ZRANGE', KEYS[1], skip, skip + tonumber(ARGV[2]) - 1)
local now = now_ms()
local retried, gone = 0, 0
for _, id in ipairs(ids) do
  local tkey = task_key(prefix, id)
  local pkey = payload_key(prefix, id)
  local state = redis.call('HGET', tkey, 'state')
  if state == 'failed' and not input_kept(tkey, pkey) then
    gone = gone + 1
  else
    -- Entries whose hash expired (not yet reaped) are dropped as well.
    redis.call('ZREM', KEYS[1], id)
    if state == 'failed' then
      redis.call('PERSIST', tkey)
      redis.call('PERSIST', pkey)
      local idem = redis.call('HGET', tkey, 'idem')
      if idem then redis.call('PERSIST', idem) end
      redis.call('HSET', tkey, 'attempts', 0, 'progress', 0, 'progress_msg', '', 'cancel', 0)
      redis.call('HDEL', tkey, 'error_kind', 'error_msg', 'finished_at', 'result', 'retry_at')
      make_ready(tkey, id, KEYS[2], KEYS[3], next_seq(KEYS[4], 1), now, KEYS[6])
      emit(KEYS[5], id, redis.call('HGET', tkey, 'queue'), 'queued', {'retried', '1'})
      retried = retried + 1
    end
  end
end
return {retried, math.max(redis.call('ZCARD', KEYS[1]) - skip - gone, 0), gone}
