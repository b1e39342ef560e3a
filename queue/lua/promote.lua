-- promote: delayed tasks whose backoff has passed go to the back of their queue.
-- Atomic, so running it from many executors at once moves each task once.
--
-- KEYS[1] delayed set, KEYS[2] ready set, KEYS[3] wake-up list, KEYS[4] sequence counter,
-- KEYS[5] events stream, KEYS[6] queued-bytes hash
-- ARGV[1] prefix, ARGV[2] at most this many tasks per call
-- Returns the number of tasks promoted.
local prefix = ARGV[1]
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local promoted = 0
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  local tkey = task_key(prefix, id)
  if redis.call('HGET', tkey, 'state') == 'delayed' then
    redis.call('HDEL', tkey, 'retry_at')
    make_ready(tkey, id, KEYS[2], KEYS[3], next_seq(KEYS[4], 1), now, KEYS[6])
    emit(KEYS[5], id, redis.call('HGET', tkey, 'queue'), 'queued')
    promoted = promoted + 1
  end
end
return promoted
