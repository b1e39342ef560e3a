-- backend_renew: extend the lease of a permit whose call still runs.
--
-- A permit dropped meanwhile (Redis was unreachable for longer than its lease) is added
-- back: the call it stands for still occupies the backend.
--
-- KEYS[1] permits ZSET
-- ARGV[1] permit id, ARGV[2] lease ms
-- Returns 1 if the permit was still held, 0 if it was added back.
local now = now_ms()
local held = redis.call('ZSCORE', KEYS[1], ARGV[1]) and 1 or 0
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return held
