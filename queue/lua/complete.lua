-- complete: the lease holder stores the result; the task is `finished` and kept for its
-- result TTL; its payload goes now (or after its keep time), its input summary stays.
--
-- KEYS[1] task hash, KEYS[2] started set, KEYS[3] finished set, KEYS[4] counters hash,
-- KEYS[5] processing-time samples, KEYS[6] events stream, KEYS[7] payload
-- ARGV[1] id, ARGV[2] lease token, ARGV[3] result JSON
-- A repeat under the same lease answers {'repeat', <the first reply>…} (`repeated`).
-- Returns {'ok'} or {'not_found'} / {'lease_lost'}.
local tkey, id = KEYS[1], ARGV[1]
local refused = check_lease(tkey, ARGV[2])
if refused then return repeated(tkey, ARGV[2]) or {refused} end
left_started(tkey, id)

local now = now_ms()
redis.call('ZREM', KEYS[2], id)
redis.call('HSET', tkey, 'result', ARGV[3], 'progress', 100)
redis.call('HDEL', tkey, 'error_kind', 'error_msg')
local started = tonumber(redis.call('HGET', tkey, 'started_at')) or now
local queue = finish_as(tkey, KEYS[7], id, KEYS[3], 'finished', 'result_ttl_ms', now)
redis.call('HINCRBY', KEYS[4], 'finished', 1)
sample(KEYS[5], now - started)
emit(KEYS[6], id, queue, 'finished')
return reported(tkey, ARGV[2], {'ok'})
