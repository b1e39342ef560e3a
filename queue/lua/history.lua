-- history: one sample per minute of a queue's running totals and wait times, kept in Redis
-- so that every API replica draws the same chart and a restart loses nothing. The first
-- caller in a minute writes that minute's sample; later callers (other replicas) only read.
--
-- KEYS[1] history hash {prefix}:q:<queue>:history (field: minute since the epoch, value: sample)
-- ARGV[1] this minute, ARGV[2] its sample, ARGV[3] minutes to keep
-- Returns the kept samples as a flat field/value array.
local minute, keep = tonumber(ARGV[1]), tonumber(ARGV[3])
redis.call('HSETNX', KEYS[1], minute, ARGV[2])
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if tonumber(field) == nil or tonumber(field) <= minute - keep then
    redis.call('HDEL', KEYS[1], field)
  end
end
return redis.call('HGETALL', KEYS[1])
