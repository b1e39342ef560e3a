-- release: a worker shutting down gives its task back without spending an attempt. The task
-- returns to its original place in the queue, so it runs next. A task whose cancel was asked
-- for ends `canceled` instead.
--
-- KEYS[1] task hash, KEYS[2] started set, KEYS[3] ready set, KEYS[4] wake-up list,
-- KEYS[5] canceled set, KEYS[6] events stream, KEYS[7] payload, KEYS[8] queued-bytes hash
-- ARGV[1] id, ARGV[2] lease token
-- A repeat under the same lease answers {'repeat', <the first reply>…} (`repeated`).
-- Returns {'queued'} / {'canceled'} or {'not_found'} / {'lease_lost'}.
local tkey, id = KEYS[1], ARGV[1]
local refused = check_lease(tkey, ARGV[2])
if refused then return repeated(tkey, ARGV[2]) or {refused} end
local h = redis.call('HMGET', tkey, 'cancel', 'seq', 'queue')

local now = now_ms()
redis.call('ZREM', KEYS[2], id)
if h[1] == '1' then
  left_started(tkey, id)
  redis.call('HSET', tkey, 'error_kind', 'canceled', 'error_msg', 'canceled while running')
  finish_as(tkey, KEYS[7], id, KEYS[5], 'canceled', 'failure_ttl_ms', now)
  emit(KEYS[6], id, h[3], 'canceled')
  return reported(tkey, ARGV[2], {'canceled'})
end
redis.call('HINCRBY', tkey, 'attempts', -1)
make_ready(tkey, id, KEYS[3], KEYS[4], h[2], now, KEYS[8], true)
emit(KEYS[6], id, h[3], 'queued', {'released', '1'})
return reported(tkey, ARGV[2], {'queued'})
