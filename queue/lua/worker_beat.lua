-- worker_beat: register an executor or refresh its entry in the worker registry.
--
-- KEYS[1] workers set {ns}:workers (member: worker id, score: last seen ms)
-- KEYS[2] worker record {ns}:worker:<id>
-- ARGV[1] worker id, ARGV[2] record JSON, ARGV[3] time to live ms
-- Returns the server time in ms.
local now = now_ms()
redis.call('SET', KEYS[2], ARGV[2], 'PX', tonumber(ARGV[3]))
redis.call('ZADD', KEYS[1], now, ARGV[1])
return now
