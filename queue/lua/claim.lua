-- claim: take the first ready task of the first non-empty queue, in the order given, and
-- grant the caller a lease on it. The caller picks the order (strict or weighted priority).
--
-- KEYS[1] events stream      {ns}:events
-- then for each queue i (n = (#KEYS - 1) / 4), at KEYS[2 + 4(i-1)] ...:
--   ready set {ns}:q:<queue>:ready, started set {ns}:q:<queue>:active,
--   wake-up list {ns}:q:<queue>:signal, wait samples {ns}:q:<queue>:wait_ms
-- ARGV[1] prefix, ARGV[2] worker id, ARGV[3] lease token, ARGV[4] lease ms
-- Returns nil when every queue is empty, else the task hash as a flat field/value array
-- (after the claim: state `started`, attempts counted, lease deadline set).
local prefix, worker, lease, lease_ms = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local n = (#KEYS - 1) / 4
local now = now_ms()

for i = 0, n - 1 do
  local ready, started, signal, waits = KEYS[2 + 4 * i], KEYS[3 + 4 * i], KEYS[4 + 4 * i], KEYS[5 + 4 * i]
  while true do
    local popped = redis.call('ZPOPMIN', ready)
    if #popped == 0 then
      redis.call('DEL', signal)
      break
    end
    local id = popped[1]
    local tkey = task_key(prefix, id)
    -- A ready entry whose hash is gone or has moved on is stale: drop it and look further.
    if redis.call('HGET', tkey, 'state') == 'queued' then
      local queued_at = tonumber(redis.call('HGET', tkey, 'queued_at')) or now
      redis.call('HSET', tkey, 'state', 'started', 'worker', worker, 'lease', lease,
        'started_at', now)
      redis.call('HINCRBY', tkey, 'attempts', 1)
      redis.call('ZADD', started, now + lease_ms, id)
      sample(waits, now - queued_at)
      -- Keep one wake-up token per ready task (up to 1000), so that every blocked consumer
      -- that could take one is woken, and none wakes for nothing.
      local want = math.min(redis.call('ZCARD', ready), 1000)
      local have = redis.call('LLEN', signal)
      if want == 0 then
        redis.call('DEL', signal)
      elseif have > want then
        redis.call('LTRIM', signal, 0, want - 1)
      else
        for _ = 1, want - have do redis.call('LPUSH', signal, '1') end
      end
      emit(KEYS[1], id, redis.call('HGET', tkey, 'queue'), 'started', {'worker', worker})
      return redis.call('HGETALL', tkey)
    end
  end
end
return nil
