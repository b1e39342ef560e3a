-- claim: take up to `count` ready tasks and grant the caller a lease on each. Each task is a
-- turn: it comes from the first non-empty queue of that turn's order; within a queue, from
-- the owner whose turn it is (fair share, see common.lua). The caller picks the
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

-- The id of the next task of the queue whose ready set is `ready`, taken out of its ready
-- sets, or nil when no task may be claimed. Fair share (see common.lua): the oldest task of
-- the owner whose turn it is. A task queued before owners had ready sets of their own (the
-- head of the ready set, older than 'since', in no owner's set) goes first, as before.
local function next_task(ready)
  local base = queue_base(ready)
  local turns, fair = base .. 'turns', base .. 'fair'
  local marks = redis.call('HMGET', fair, 'since', 'clean')
  if not marks[2] then
    local since = marks[1]
    local head = redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES')
    if #head == 0 then return nil end
    if not since or tonumber(head[2]) < tonumber(since) then
      local owner = redis.call('HGET', task_key(prefix, head[1]), 'owner') or ''
      if not redis.call('ZSCORE', base .. 'by:' .. owner, head[1]) then
        redis.call('ZREM', ready, head[1])
        return head[1]
      end
    else
      -- Nothing queued before 'since' is left: no later claim needs to look.
      redis.call('HSET', fair, 'clean', 1)
    end
  end
  while true do
    local turn = redis.call('ZRANGE', turns, 0, 0, 'WITHSCORES')
    if #turn == 0 then return nil end
    local owner, vt = turn[1], tonumber(turn[2])
    local mine = base .. 'by:' .. owner
    -- Its weight and `maxInFlight` (0: none; unknown for settings written by an earlier
    -- release, so the owners hash is asked then).
    local set = redis.call('HMGET', fair, 'w:' .. owner, 'm:' .. owner)
    local max = tonumber(set[2])
    if owner ~= '' and (max == nil or max > 0) and at_limit(prefix, owner) then
      -- At its `maxInFlight` since its turn was given (a claim in another queue): it waits.
      leave_turns(base, owner, vt)
      redis.call('SADD', prefix .. 'held:' .. owner, base)
    else
      local popped = redis.call('ZPOPMIN', mine)
      if #popped == 0 then
        redis.call('ZREM', turns, owner)
      else
        local after = vt + 1 / (tonumber(set[1]) or 1)
        redis.call('HSET', fair, 'v', vt)
        if redis.call('ZCARD', mine) == 0 then
          leave_turns(base, owner, after)
        else
          redis.call('ZADD', turns, after, owner)
        end
        redis.call('ZREM', ready, popped[1])
        return popped[1]
      end
    end
  end
end

-- Claims the next task of queue i (0-based), if it has one.
local function take(i)
  local ready, started, waits = KEYS[3 + 4 * i], KEYS[4 + 4 * i], KEYS[6 + 4 * i]
  looked[i] = true
  while true do
    local id = next_task(ready)
    if not id then return false end
    local tkey = task_key(prefix, id)
    -- An entry whose hash is gone or has moved on is stale: drop it and look further.
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
-- blocked consumer that could take one is woken, and none wakes for nothing: none while every
-- owner with queued tasks is held at its `maxInFlight` (the end of one of its tasks gives a
-- token back, see `release_held`).
for i = 0, n - 1 do
  if looked[i] then
    local ready, signal = KEYS[3 + 4 * i], KEYS[5 + 4 * i]
    local want = math.min(redis.call('ZCARD', ready), 1000)
    if want > 0 and redis.call('ZCARD', queue_base(ready) .. 'turns') == 0 then
      -- Only tasks queued before owners had sets of their own, if any, may be claimed.
      local since = redis.call('HGET', queue_base(ready) .. 'fair', 'since')
      local head = redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES')
      if since and tonumber(head[2]) >= tonumber(since) then want = 0 end
    end
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
