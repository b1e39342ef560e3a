-- retry: put a `failed` task back on its queue by hand, with its attempts reset. This is
-- what a dashboard's retry button calls. Its payload, kept since it failed, lives on again.
--
-- KEYS[1] task hash, KEYS[2] failed set, KEYS[3] ready set, KEYS[4] wake-up list,
-- KEYS[5] sequence counter, KEYS[6] events stream, KEYS[7] payload, KEYS[8] queued-bytes hash
-- ARGV[1] id
-- Returns {'queued'} / {'wrong_state', state} / {'input_gone'} (its payload expired or was
-- removed: nothing to run) / {'not_found'}.
local tkey, id = KEYS[1], ARGV[1]
local state = redis.call('HGET', tkey, 'state')
if not state then return {'not_found'} end
if state ~= 'failed' then return {'wrong_state', state} end
if not input_kept(tkey, KEYS[7]) then return {'input_gone'} end

redis.call('ZREM', KEYS[2], id)
redis.call('PERSIST', tkey)
redis.call('PERSIST', KEYS[7])
local idem = redis.call('HGET', tkey, 'idem')
if idem then redis.call('PERSIST', idem) end
redis.call('HSET', tkey, 'attempts', 0, 'progress', 0, 'progress_msg', '', 'cancel', 0)
redis.call('HDEL', tkey, 'error_kind', 'error_msg', 'finished_at', 'result', 'retry_at')
make_ready(tkey, id, KEYS[3], KEYS[4], next_seq(KEYS[5], 1), now_ms(), KEYS[8])
emit(KEYS[6], id, redis.call('HGET', tkey, 'queue'), 'queued', {'retried', '1'})
return {'queued'}
