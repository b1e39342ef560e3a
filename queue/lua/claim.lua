-- claim: take up to `count` ready tasks and grant the caller a lease on each. Each task is a
-- turn: it comes from the first non-empty queue of that turn's order. The caller picks the
-- orders (strict or weighted priority), so `count` claims in one call hand out the same tasks
-- as `count` claims of one, in one round trip.
--
-- KEYS[1] events stream      {prefix}:events
-- KEYS[2] queued-bytes hash  {prefix}:queued_bytes
-- then for each queue i (n = (#KEYS - 2) / 4), at KEYS[3 + 4(i-1)] ...:
--   ready set {prefix}:q:<queue>:ready, started set {prefix}:q:<queue>:active,
--   wake-up list {prefix}:q:<queue>:signal, wait samples {prefix}:q:<queue>:wait_ms
-- ARGV[1] prefix, ARGV[2] worker id, ARGV[3] lease ms, ARGV[4] count k,
-- ARGV[5 .. 4+k] the lease tokens, one per task claimed,
-- ARGV[5+k .. 4+2k] each turn's first queue (1-based, in KEYS order); the other queues follow
--   in KEYS order.
-- Returns the claimed tasks in claim order, each {hash, payload}: its hash as a flat
-- field/value array (after the claim: state `started`, attempts counted, lease deadline set)
-- and its payload (from its own key; nil when it is gone). An empty array when every queue is
-- empty. A claim is the one transition that reads a payload.
local prefix, worker, lease_ms, k = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local n = (#KEYS - 2) / 4
local now = now_ms()
local claimed = {}
local looked = {}

-- Claims the first ready task of queue i (0-based), if it has one.
local function take(i)
  local ready, started, waits = KEYS[3 + 4 * i], KEYS[4 + 4 * i], KEYS[6 + 4 * i]
  looked[i] = true
  while true do
    local popped = redis.call('ZPOPMIN', ready)
    if #popped == 0 then return false end
    local id = popped[1]
    local tkey = task_key(prefix, id)
    -- A ready entry whose hash is gone or has moved on is stale: drop it and look further.
    if redis.call('HGET', tkey, 'state') == 'queued' then
      local token = ARGV[5 + #claimed]
      local queued_at = tonumber(redis.call('HGET', tkey, 'queued_at')) or now
      count_queued(KEYS[2], tkey, -1)
      redis.call('HSET', tkey, 'state', 'started', 'worker', worker, 'lease', token,
        'started_at', now)
      redis.call('HINCRBY', tkey, 'attempts', 1)
      redis.call('ZADD', started, now + lease_ms, id)
      sample(waits, now - queued_at)
      emit(KEYS[1], id, redis.call('HGET', tkey, 'queue'), 'started', {'worker', worker})
      -- (false: a nil reply; a task stored before payloads had their own key holds it in
      -- its hash.)
      local payload = redis.call('GET', payload_key(prefix, id)) or false
      claimed[#claimed + 1] = {redis.call('HGETALL', tkey), payload}
      return true
    end
  end
end

for turn = 1, k do
  local first = tonumber(ARGV[4 + k + turn]) - 1
  local got = take(first)
  for i = 0, n - 1 do
    if got then break end
    if i ~= first then got = take(i) end
  end
  -- Every queue is empty: later turns would find nothing either.
  if not got then break end
end

-- Keep one wake-up token per ready task (up to 1000) on every queue looked at, so that every
-- blocked consumer that could take one is woken, and none wakes for nothing.
for i = 0, n - 1 do
  if looked[i] then
    local ready, signal = KEYS[3 + 4 * i], KEYS[5 + 4 * i]
    local want = math.min(redis.call('ZCARD', ready), 1000)
    local have = redis.call('LLEN', signal)
    if want == 0 then
      redis.call('DEL', signal)
    elseif have > want then
      redis.call('LTRIM', signal, 0, want - 1)
    else
      for _ = 1, want - have do redis.call('LPUSH', signal, '1') end
    end
  end
end
return claimed
