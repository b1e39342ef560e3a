-- cancel: a queued or delayed task ends `canceled` at once; a started one is flagged and its
-- worker learns it at its next heartbeat.
--
-- KEYS[1] task hash, KEYS[2] ready set, KEYS[3] delayed set, KEYS[4] canceled set,
-- KEYS[5] events stream, KEYS[6] payload, KEYS[7] queued-bytes hash
-- ARGV[1] id
-- Returns {'canceled'} / {'cancel_requested'} / {'ended', state} / {'not_found'}.
local tkey, id = KEYS[1], ARGV[1]
local state = redis.call('HGET', tkey, 'state')
if not state then return {'not_found'} end

if state == 'queued' or state == 'delayed' then
  local owner = redis.call('HGET', tkey, 'owner')
  if state == 'queued' then
    count_queued(KEYS[7], tkey, -1)
    count_owned(prefix_of(tkey, id), owner, -1)
  end
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', queue_base(KEYS[2]) .. 'by:' .. (owner or ''), id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('HSET', tkey, 'error_kind', 'canceled', 'error_msg', 'canceled before it ran')
  local queue = finish_as(tkey, KEYS[6], id, KEYS[4], 'canceled', 'failure_ttl_ms', now_ms())
  emit(KEYS[5], id, queue, 'canceled')
  return {'canceled'}
end
if state == 'started' then
  if redis.call('HGET', tkey, 'cancel') ~= '1' then
    redis.call('HSET', tkey, 'cancel', 1)
    emit(KEYS[5], id, redis.call('HGET', tkey, 'queue'), 'started', {'cancel_requested', '1'})
  end
  return {'cancel_requested'}
end
return {'ended', state}
