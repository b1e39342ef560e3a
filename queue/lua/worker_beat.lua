-- worker_beat: register an executor or refresh its entry in the worker registry, and (for a
-- running executor) observe the outage clock: after a gap, the first to arrive may be a beat,
-- not a maintenance pass, and the gap must not go unnoticed.
--
-- KEYS[1] workers set {prefix}:workers (member: worker id, score: last seen ms)
-- KEYS[2] worker record {prefix}:worker:<id>
-- KEYS[3] outage clock {prefix}:clock
-- ARGV[1] worker id, ARGV[2] record JSON, ARGV[3] time to live ms, ARGV[4] outage gap ms and
-- ARGV[5] hold ms of the executor's lease (0: a registration only, the clock is left alone)
-- Returns the server time in ms.
local now = now_ms()
redis.call('SET', KEYS[2], ARGV[2], 'PX', tonumber(ARGV[3]))
redis.call('ZADD', KEYS[1], now, ARGV[1])
local gap_ms = tonumber(ARGV[4]) or 0
if gap_ms > 0 then
  observe_clock(KEYS[3], now, gap_ms, tonumber(ARGV[5]) or 0)
end
return now
