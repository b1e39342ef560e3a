-- purge: delete up to ARGV[3] ended tasks of one state (their idempotency keys and any kept
-- payload too) before
-- their TTL, oldest first. Bounded per call; the caller calls again while tasks are left.
--
-- KEYS[1] the ended set (finished, failed or canceled)
-- ARGV[1] prefix, ARGV[2] the state those tasks are in, ARGV[3] at most this many tasks
-- Returns {purged, still in the set}.
local prefix, state = ARGV[1], ARGV[2]
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[3]) - 1)
local purged = 0
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local tkey = task_key(prefix, id)
  -- A hash in another state has moved on (retried); only its stale index entry goes.
  if redis.call('HGET', tkey, 'state') == state then
    local idem = redis.call('HGET', tkey, 'idem')
    if idem then redis.call('DEL', idem) end
    redis.call('DEL', tkey, payload_key(prefix, id))
    purged = purged + 1
  end
end
return {purged, redis.call('ZCARD', KEYS[1])}
