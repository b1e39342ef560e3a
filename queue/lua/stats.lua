-- stats: one queue's counts, counters and duration samples in one consistent snapshot.
-- Read-only.
--
-- KEYS[1] ready, KEYS[2] started (key :active), KEYS[3] delayed, KEYS[4] finished, KEYS[5] failed,
-- KEYS[6] canceled, KEYS[7] counters hash, KEYS[8] processing samples, KEYS[9] wait samples,
-- KEYS[10] queued-bytes hash
-- ARGV[1] prefix, ARGV[2] queue name
-- Returns {now, queued, started, delayed, finished, failed, canceled, counters (flat
-- field/value array), processing samples, wait samples, oldest queued_at or -1, payload
-- bytes of the queued tasks}.
local now = now_ms()
local oldest = -1
local head = redis.call('ZRANGE', KEYS[1], 0, 0)
if #head > 0 then
  oldest = tonumber(redis.call('HGET', task_key(ARGV[1], head[1]), 'queued_at')) or -1
end
return {
  now,
  redis.call('ZCARD', KEYS[1]),
  redis.call('ZCARD', KEYS[2]),
  redis.call('ZCARD', KEYS[3]),
  redis.call('ZCOUNT', KEYS[4], '(' .. now, '+inf'),
  redis.call('ZCOUNT', KEYS[5], '(' .. now, '+inf'),
  redis.call('ZCOUNT', KEYS[6], '(' .. now, '+inf'),
  redis.call('HGETALL', KEYS[7]),
  redis.call('LRANGE', KEYS[8], 0, -1),
  redis.call('LRANGE', KEYS[9], 0, -1),
  oldest,
  tonumber(redis.call('HGET', KEYS[10], 'queue:' .. ARGV[2])) or 0,
}
