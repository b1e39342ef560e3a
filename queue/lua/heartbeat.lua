-- heartbeat: extend the caller's lease, record progress, and report a pending cancel.
--
-- KEYS[1] task hash, KEYS[2] started set of its queue, KEYS[3] events stream
-- ARGV[1] id, ARGV[2] lease token, ARGV[3] lease ms, ARGV[4] progress 0-100 (-1: unchanged),
-- ARGV[5] progress message
-- Returns {'ok', cancel_requested 0|1} or {'not_found'} / {'lease_lost'}.
local tkey, id, lease = KEYS[1], ARGV[1], ARGV[2]
local refused = check_lease(tkey, lease)
if refused then return {refused} end

local now = now_ms()
redis.call('ZADD', KEYS[2], 'XX', now + tonumber(ARGV[3]), id)
local progress = tonumber(ARGV[4])
if progress >= 0 then
  local old = redis.call('HMGET', tkey, 'progress', 'progress_msg')
  if tonumber(old[1]) ~= progress or old[2] ~= ARGV[5] then
    redis.call('HSET', tkey, 'progress', progress, 'progress_msg', ARGV[5])
    emit(KEYS[3], id, redis.call('HGET', tkey, 'queue'), 'started',
      {'progress', progress, 'message', ARGV[5]})
  end
end
return {'ok', tonumber(redis.call('HGET', tkey, 'cancel')) or 0}
