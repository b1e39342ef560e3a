-- enqueue: create a task in state `queued`, or return the live task that already holds the
-- idempotency key.
--
-- KEYS[1] task hash          {ns}:task:<id>
-- KEYS[2] ready set          {ns}:q:<queue>:ready
-- KEYS[3] idempotency key    {ns}:idem:<key> (any key of the namespace when ARGV[10] is '')
-- KEYS[4] counters hash      {ns}:q:<queue>:counters
-- KEYS[5] wake-up list       {ns}:q:<queue>:signal
-- KEYS[6] events stream      {ns}:events
-- KEYS[7] sequence counter   {ns}:seq
-- KEYS[8] known queues set   {ns}:queues
-- ARGV[1] prefix, ARGV[2] id, ARGV[3] queue, ARGV[4] kind, ARGV[5] payload JSON,
-- ARGV[6] max attempts, ARGV[7] timeout ms, ARGV[8] result TTL ms, ARGV[9] failure TTL ms,
-- ARGV[10] idempotency key ('' for none), ARGV[11] owner ('' for none),
-- ARGV[12] backoff base ms, ARGV[13] backoff max ms
-- Returns {1, id} when created, {0, existing id} when the idempotency key names a live task.
local prefix, id, queue = ARGV[1], ARGV[2], ARGV[3]
local idem = ARGV[10]

if idem ~= '' then
  local existing = redis.call('GET', KEYS[3])
  if existing and redis.call('EXISTS', task_key(prefix, existing)) == 1 then
    return {0, existing}
  end
end

local now = now_ms()
local seq = redis.call('INCR', KEYS[7])
local fields = {
  'id', id, 'kind', ARGV[4], 'queue', queue, 'payload', ARGV[5], 'state', 'queued',
  'attempts', 0, 'max_attempts', ARGV[6], 'timeout_ms', ARGV[7],
  'result_ttl_ms', ARGV[8], 'failure_ttl_ms', ARGV[9],
  'backoff_base_ms', ARGV[12], 'backoff_max_ms', ARGV[13],
  'enqueued_at', now, 'queued_at', now, 'seq', seq, 'progress', 0, 'cancel', 0,
}
if idem ~= '' then
  fields[#fields + 1] = 'idem_key'; fields[#fields + 1] = idem
  fields[#fields + 1] = 'idem'; fields[#fields + 1] = KEYS[3]
  -- No TTL while the task lives; it gets the task's TTL when the task ends.
  redis.call('SET', KEYS[3], id)
end
if ARGV[11] ~= '' then
  fields[#fields + 1] = 'owner'; fields[#fields + 1] = ARGV[11]
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('ZADD', KEYS[2], seq, id)
redis.call('LPUSH', KEYS[5], '1')
redis.call('HINCRBY', KEYS[4], 'enqueued', 1)
redis.call('SADD', KEYS[8], queue)
emit(KEYS[6], id, queue, 'queued')
return {1, id}
