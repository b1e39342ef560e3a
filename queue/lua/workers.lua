-- workers: list the live executors. Entries not refreshed within the time to live drop out
-- (their records have expired on their own). Read-mostly: it only prunes the index.
--
-- KEYS[1] workers set
-- ARGV[1] prefix, ARGV[2] time to live ms
-- Returns a flat array {id, last seen ms, record JSON, ...}.
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local out = {}
for i = 1, #members, 2 do
  local record = redis.call('GET', ARGV[1] .. 'worker:' .. members[i])
  if record then
    out[#out + 1] = members[i]
    out[#out + 1] = members[i + 1]
    out[#out + 1] = record
  end
end
return out
